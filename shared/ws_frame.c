#include "ws_frame.h"

#include <string.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

int ws_parse_header(const uint8_t *d, size_t len, bool from_client, struct ws_frame_hdr *h) {
  if (len < 2) return 0;
  h->fin = d[0] & 0x80;
  if (d[0] & 0x70) return -WS_PROTOCOL_ERROR; /* RSV bits: no extension was negotiated */
  h->opcode = d[0] & 0x0f;
  h->masked = d[1] & 0x80;
  uint64_t l = d[1] & 0x7f;
  size_t need = 2;
  if (l == 126) need += 2;
  else if (l == 127) need += 8;
  if (h->masked) need += 4;
  if (len < need) return 0;
  size_t p = 2;
  if (l == 126) {
    l = (uint64_t)d[2] << 8 | d[3];
    p = 4;
  } else if (l == 127) {
    l = 0;
    for (int i = 0; i < 8; i++) l = l << 8 | d[2 + i];
    p = 10;
    if (l >> 63) return -WS_PROTOCOL_ERROR;
  }
  if (h->masked) {
    memcpy(h->mask, d + p, 4);
    p += 4;
  }
  h->len = l;
  h->hdr_len = p;
  switch (h->opcode) {
  case WS_CONT:
  case WS_TEXT:
  case WS_BINARY:
    break;
  case WS_CLOSE:
  case WS_PING:
  case WS_PONG:
    if (!h->fin || l > 125) return -WS_PROTOCOL_ERROR;
    break;
  default:
    return -WS_PROTOCOL_ERROR;
  }
  if (from_client && !h->masked) return -WS_PROTOCOL_ERROR;
  return (int)p;
}

void ws_mask(uint8_t *data, size_t len, const uint8_t mask[4], uint64_t offset) {
  for (size_t i = 0; i < len; i++) data[i] ^= mask[(offset + i) & 3];
}

size_t ws_write_header(uint8_t *out, bool fin, uint8_t opcode, uint64_t len, const uint8_t *mask) {
  size_t p = 0;
  out[p++] = (uint8_t)((fin ? 0x80 : 0) | opcode);
  uint8_t m = mask ? 0x80 : 0;
  if (len < 126) {
    out[p++] = (uint8_t)(m | len);
  } else if (len <= 0xffff) {
    out[p++] = m | 126;
    out[p++] = (uint8_t)(len >> 8);
    out[p++] = (uint8_t)len;
  } else {
    out[p++] = m | 127;
    for (int i = 7; i >= 0; i--) out[p++] = (uint8_t)(len >> (8 * i));
  }
  if (mask) {
    memcpy(out + p, mask, 4);
    p += 4;
  }
  return p;
}

/* UTF-8 as a small state machine: state holds the bytes still expected in
 * the low bits and, for 3- and 4-byte sequences, the first byte's
 * constraint on the second (overlongs, surrogates, > U+10FFFF). */
bool ws_utf8_step(uint32_t *state, const uint8_t *s, size_t n) {
  uint32_t need = *state & 0xff, lo = (*state >> 8) & 0xff, hi = (*state >> 16) & 0xff;
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    if (need == 0) {
      if (c < 0x80) continue;
      if (c >= 0xc2 && c <= 0xdf) need = 1, lo = 0x80, hi = 0xbf;
      else if (c == 0xe0) need = 2, lo = 0xa0, hi = 0xbf;
      else if (c == 0xed) need = 2, lo = 0x80, hi = 0x9f;
      else if (c >= 0xe1 && c <= 0xef) need = 2, lo = 0x80, hi = 0xbf;
      else if (c == 0xf0) need = 3, lo = 0x90, hi = 0xbf;
      else if (c >= 0xf1 && c <= 0xf3) need = 3, lo = 0x80, hi = 0xbf;
      else if (c == 0xf4) need = 3, lo = 0x80, hi = 0x8f;
      else return false;
    } else {
      if (c < lo || c > hi) return false;
      need--;
      lo = 0x80;
      hi = 0xbf;
    }
  }
  *state = need ? (need | lo << 8 | hi << 16) : 0;
  return true;
}

bool ws_close_code_valid(unsigned code) {
  if (code >= 3000 && code <= 4999) return true;
  switch (code) {
  case 1000: case 1001: case 1002: case 1003: case 1007: case 1008: case 1009: case 1010:
  case 1011: case 1012: case 1013: case 1014:
    return true;
  default:
    return false;
  }
}

void ws_accept_key(const char *key, size_t key_len, char out[29]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char digest[SHA_DIGEST_LENGTH];
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha1(), NULL);
  EVP_DigestUpdate(ctx, key, key_len);
  EVP_DigestUpdate(ctx, guid, sizeof guid - 1);
  EVP_DigestFinal_ex(ctx, digest, NULL);
  EVP_MD_CTX_free(ctx);
  EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH); /* 28 chars + NUL */
}
