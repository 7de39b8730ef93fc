#include "ws_frame.h"

#include <string.h>
#include <strings.h>
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
  /* Eight bytes at a time (a 16 MB message byte by byte took tens of ms):
   * the key repeats every 4 bytes, so a word of it lines up at every step. */
  uint8_t key8[8];
  for (int k = 0; k < 8; k++) key8[k] = mask[(offset + (uint64_t)k) & 3];
  uint64_t key;
  memcpy(&key, key8, sizeof key);
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t w;
    memcpy(&w, data + i, sizeof w);
    w ^= key;
    memcpy(data + i, &w, sizeof w);
  }
  for (; i < len; i++) data[i] ^= mask[(offset + i) & 3];
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
  /* Fetched once: OpenSSL 3 looks the algorithm up in its providers on
   * every EVP_sha1() init, most of a handshake's cost. Kept for the life of
   * the process (single-threaded callers). */
  static EVP_MD *sha1;
  if (sha1 == NULL) sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
  unsigned char digest[SHA_DIGEST_LENGTH];
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, sha1 ? sha1 : EVP_sha1(), NULL);
  EVP_DigestUpdate(ctx, key, key_len);
  EVP_DigestUpdate(ctx, guid, sizeof guid - 1);
  EVP_DigestFinal_ex(ctx, digest, NULL);
  EVP_MD_CTX_free(ctx);
  EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH); /* 28 chars + NUL */
}

static bool has_token_ci(const char *v, size_t vlen, const char *token) {
  size_t n = strlen(token);
  for (size_t i = 0; i + n <= vlen; i++)
    if (strncasecmp(v + i, token, n) == 0) return true;
  return false;
}

void ws_handshake_field(struct ws_handshake *hs, const char *name, size_t nlen, const char *value,
                        size_t vlen) {
  if (nlen == 7 && memcmp(name, "upgrade", 7) == 0) {
    if (has_token_ci(value, vlen, "websocket")) hs->upgrade = true;
  } else if (nlen == 17 && memcmp(name, "sec-websocket-key", 17) == 0) {
    if (hs->key_count++ == 0 && vlen < sizeof hs->key) {
      memcpy(hs->key, value, vlen);
      hs->key[vlen] = '\0';
    }
  } else if (nlen == 21 && memcmp(name, "sec-websocket-version", 21) == 0) {
    hs->version_ok = !hs->version_seen && ws_version_is_ours(value, vlen);
    hs->version_seen = true;
  }
}

/* 16 bytes in base64: 22 characters of the alphabet and "==". */
static bool key_valid(const char *key) {
  static const char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  return strlen(key) == 24 && strspn(key, alphabet) == 22 && strcmp(key + 22, "==") == 0;
}

int ws_handshake_status(const struct ws_handshake *hs) {
  if (!hs->version_seen || hs->key_count != 1 || !key_valid(hs->key)) return 400;
  return hs->version_ok ? 0 : 426;
}

bool ws_version_is_ours(const char *value, size_t len) {
  return len == sizeof WS_VERSION - 1 && memcmp(value, WS_VERSION, len) == 0;
}

const char *ws_refusal_field(int status) { return status == 426 ? "sec-websocket-version" : NULL; }

const char *ws_refusal_field_line(int status) {
  return status == 426 ? "sec-websocket-version: " WS_VERSION "\r\n" : "";
}

const char *ws_refusal_reason(int status) {
  return status == 426 ? "WebSocket version 13 only"
                       : "malformed WebSocket handshake (one Sec-WebSocket-Key of 16 bytes in "
                         "base64, and Sec-WebSocket-Version)";
}

void ws_boundary_feed(struct ws_boundary *b, const uint8_t *data, size_t len, bool from_client) {
  while (len > 0) {
    if (b->payload_left > 0) {
      size_t n = b->payload_left < len ? (size_t)b->payload_left : len;
      b->payload_left -= n;
      data += n;
      len -= n;
      continue;
    }
    size_t take = WS_MAX_HDR - b->hdr_have < len ? WS_MAX_HDR - b->hdr_have : len;
    memcpy(b->hdr + b->hdr_have, data, take);
    struct ws_frame_hdr h;
    int rc = ws_parse_header(b->hdr, b->hdr_have + take, from_client, &h);
    if (rc == 0) { /* the header continues in the next bytes */
      b->hdr_have += take;
      return;
    }
    if (rc < 0) { /* not a WebSocket we understand: never "between frames" again */
      b->payload_left = UINT64_MAX;
      return;
    }
    size_t used = (size_t)rc - b->hdr_have;
    b->hdr_have = 0;
    b->payload_left = h.len;
    data += used;
    len -= used;
  }
}

bool ws_boundary_between_frames(const struct ws_boundary *b) {
  return b->hdr_have == 0 && b->payload_left == 0;
}

/* ---------------------------------------------------------------------------
 * The reader.
 */
void ws_reader_init(struct ws_reader *r, bool from_client, uint64_t max_message) {
  memset(r, 0, sizeof *r);
  r->from_client = from_client;
  r->max_message = max_message;
}

static size_t reader_fail(struct ws_reader *r, struct ws_event *ev, unsigned code, size_t used) {
  r->failed = true;
  ev->type = WS_EV_ERROR;
  ev->code = code;
  return used;
}

/* A data frame's header arrived: check it against the open message. */
static unsigned reader_begin_frame(struct ws_reader *r) {
  const struct ws_frame_hdr *h = &r->frame;
  if (h->opcode >= WS_CLOSE) return 0; /* control frames interleave freely */
  if (h->opcode == WS_CONT) {
    if (r->msg_opcode == 0) return WS_PROTOCOL_ERROR; /* nothing to continue */
  } else {
    if (r->msg_opcode != 0) return WS_PROTOCOL_ERROR; /* previous message unfinished */
    r->msg_opcode = h->opcode;
    r->msg_len = 0;
    r->utf8 = 0;
  }
  if (h->len > r->max_message - r->msg_len) return WS_TOO_BIG;
  r->msg_len += h->len;
  return 0;
}

static size_t reader_control_done(struct ws_reader *r, struct ws_event *ev, size_t used) {
  ev->data = r->ctrl;
  ev->len = r->ctrl_len;
  switch (r->frame.opcode) {
  case WS_PING:
    ev->type = WS_EV_PING;
    return used;
  case WS_PONG:
    ev->type = WS_EV_PONG;
    return used;
  default:
    break;
  }
  ev->type = WS_EV_CLOSE;
  ev->code = WS_NO_STATUS;
  if (r->ctrl_len == 0) return used;
  if (r->ctrl_len == 1) return reader_fail(r, ev, WS_PROTOCOL_ERROR, used);
  ev->code = (unsigned)r->ctrl[0] << 8 | r->ctrl[1];
  if (!ws_close_code_valid(ev->code)) return reader_fail(r, ev, WS_PROTOCOL_ERROR, used);
  uint32_t st = 0;
  if (!ws_utf8_step(&st, r->ctrl + 2, r->ctrl_len - 2) || st != 0)
    return reader_fail(r, ev, WS_INVALID_DATA, used);
  ev->data = r->ctrl + 2;
  ev->len = r->ctrl_len - 2;
  return used;
}

/* Header bytes: collected in r->hdr until ws_parse_header has them all. */
static size_t reader_header(struct ws_reader *r, const uint8_t *data, size_t len,
                            struct ws_event *ev) {
  size_t take = WS_MAX_HDR - r->hdr_have;
  if (take > len) take = len;
  memcpy(r->hdr + r->hdr_have, data, take);
  int rc = ws_parse_header(r->hdr, r->hdr_have + take, r->from_client, &r->frame);
  if (rc == 0) {
    r->hdr_have += take;
    return take;
  }
  if (rc < 0) return reader_fail(r, ev, (unsigned)-rc, take);
  size_t used = (size_t)rc - r->hdr_have;
  r->hdr_have = 0;
  unsigned code = reader_begin_frame(r);
  if (code) return reader_fail(r, ev, code, used);
  r->in_payload = true;
  r->payload_off = 0;
  r->ctrl_len = 0;
  return used;
}

static void reader_message_end(struct ws_reader *r, struct ws_event *ev) {
  ev->type = WS_EV_MESSAGE_END;
  ev->opcode = r->msg_opcode;
  r->msg_opcode = 0;
}

size_t ws_reader_next(struct ws_reader *r, uint8_t *data, size_t len, struct ws_event *ev) {
  ev->type = WS_EV_NONE;
  if (r->failed) return 0;
  if (r->end_pending) {
    r->end_pending = false;
    reader_message_end(r, ev);
    return 0;
  }
  size_t used = 0;
  if (!r->in_payload) {
    if (len == 0) return 0;
    used = reader_header(r, data, len, ev);
    if (!r->in_payload) return used; /* more header bytes needed, or an error */
  }
  uint64_t left = r->frame.len - r->payload_off;
  size_t n = left < len - used ? (size_t)left : len - used;
  uint8_t *p = data + used;
  if (r->frame.masked) ws_mask(p, n, r->frame.mask, r->payload_off);
  r->payload_off += n;
  used += n;
  bool frame_done = r->payload_off == r->frame.len;
  if (r->frame.opcode >= WS_CLOSE) {
    memcpy(r->ctrl + r->ctrl_len, p, n);
    r->ctrl_len += n;
    if (!frame_done) return used;
    r->in_payload = false;
    return reader_control_done(r, ev, used);
  }
  if (r->msg_opcode == WS_TEXT && !ws_utf8_step(&r->utf8, p, n))
    return reader_fail(r, ev, WS_INVALID_DATA, used);
  if (frame_done) r->in_payload = false;
  bool message_done = frame_done && r->frame.fin;
  if (message_done && r->msg_opcode == WS_TEXT && r->utf8 != 0)
    return reader_fail(r, ev, WS_INVALID_DATA, used);
  if (n > 0) {
    ev->type = WS_EV_DATA;
    ev->data = p;
    ev->len = n;
    /* The end is reported by the next call, from this state: */
    if (message_done) r->end_pending = true;
    return used;
  }
  if (message_done) reader_message_end(r, ev);
  return used;
}
