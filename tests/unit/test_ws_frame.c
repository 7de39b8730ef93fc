/* WebSocket framing: RFC 6455's examples, limits, UTF-8, the accept key. */
#include <string.h>

#include "check.h"
#include "ws_frame.h"

/* Feeds a byte stream through a reader in pieces of `step` bytes and
 * writes what came out as text: "T:hello|" for a text message, "P:..|" for
 * a ping, "C1000:bye|" for a close, "E1002|" for an error. */
static void read_all(const uint8_t *input, size_t len, size_t step, uint64_t max, char *out) {
  uint8_t data[1024]; /* the reader unmasks in place */
  memcpy(data, input, len);
  struct ws_reader r;
  ws_reader_init(&r, true, max);
  char msg[256];
  size_t mlen = 0;
  out[0] = '\0';
  for (size_t off = 0; off < len;) {
    size_t piece = len - off < step ? len - off : step;
    uint8_t *p = data + off;
    size_t left = piece;
    for (;;) {
      struct ws_event ev;
      size_t used = ws_reader_next(&r, p, left, &ev);
      p += used;
      left -= used;
      char *o = out + strlen(out);
      if (ev.type == WS_EV_NONE && used == 0) break;
      switch (ev.type) {
      case WS_EV_DATA:
        memcpy(msg + mlen, ev.data, ev.len);
        mlen += ev.len;
        break;
      case WS_EV_MESSAGE_END:
        sprintf(o, "%c:%.*s|", ev.opcode == WS_TEXT ? 'T' : 'B', (int)mlen, msg);
        mlen = 0;
        break;
      case WS_EV_PING:
        sprintf(o, "P:%.*s|", (int)ev.len, ev.data);
        break;
      case WS_EV_PONG:
        sprintf(o, "O:%.*s|", (int)ev.len, ev.data);
        break;
      case WS_EV_CLOSE:
        sprintf(o, "C%u:%.*s|", ev.code, (int)ev.len, ev.data);
        break;
      case WS_EV_ERROR:
        sprintf(o, "E%u|", ev.code);
        return;
      case WS_EV_NONE:
        break;
      }
    }
    off += piece;
  }
}

/* Appends one masked frame to buf. */
static size_t put_frame(uint8_t *buf, bool fin, uint8_t op, const char *payload, size_t n) {
  static const uint8_t mask[4] = {0xa1, 0x02, 0x7c, 0x55};
  size_t h = ws_write_header(buf, fin, op, n, mask);
  memcpy(buf + h, payload, n);
  ws_mask(buf + h, n, mask, 0);
  return h + n;
}

static void test_reader(void) {
  uint8_t s[1024];
  size_t n = 0;
  n += put_frame(s + n, false, WS_TEXT, "h\xc3", 2); /* a character split across fragments */
  n += put_frame(s + n, true, WS_PING, "hb", 2);     /* a ping between fragments */
  n += put_frame(s + n, false, WS_CONT, "", 0);
  n += put_frame(s + n, true, WS_CONT, "\xa9llo", 4);
  n += put_frame(s + n, true, WS_BINARY, "", 0);
  n += put_frame(s + n, true, WS_CLOSE, "\x03\xe8" "bye", 5);
  char out[512];
  for (size_t step = 1; step <= n; step++) {
    read_all(s, n, step, 1 << 20, out);
    CHECK_STR(out, "P:hb|T:h\xc3\xa9llo|B:|C1000:bye|");
  }
  /* an empty close has no status; a 1-byte close is an error */
  n = put_frame(s, true, WS_CLOSE, "", 0);
  read_all(s, n, n, 100, out);
  CHECK_STR(out, "C1005:|");
  n = put_frame(s, true, WS_CLOSE, "x", 1);
  read_all(s, n, n, 100, out);
  CHECK_STR(out, "E1002|");
  n = put_frame(s, true, WS_CLOSE, "\x03\xed", 2); /* 1005 may not be sent */
  read_all(s, n, n, 100, out);
  CHECK_STR(out, "E1002|");
  /* a continuation with nothing to continue; a new message inside another */
  n = put_frame(s, true, WS_CONT, "x", 1);
  read_all(s, n, n, 100, out);
  CHECK_STR(out, "E1002|");
  n = put_frame(s, false, WS_TEXT, "a", 1);
  n += put_frame(s + n, true, WS_TEXT, "b", 1);
  read_all(s, n, n, 100, out);
  CHECK_STR(out, "E1002|");
  /* the size limit counts all fragments; invalid UTF-8 is 1007 */
  n = put_frame(s, false, WS_BINARY, "12345", 5);
  n += put_frame(s + n, true, WS_CONT, "67890", 5);
  read_all(s, n, n, 9, out);
  CHECK_STR(out, "E1009|");
  read_all(s, n, 3, 10, out);
  CHECK_STR(out, "B:1234567890|");
  n = put_frame(s, true, WS_TEXT, "ok\xff", 3);
  read_all(s, n, n, 100, out);
  CHECK_STR(out, "E1007|");
  n = put_frame(s, true, WS_TEXT, "\xe2\x82", 2); /* truncated at the end */
  read_all(s, n, n, 100, out);
  CHECK_STR(out, "E1007|");
}

static void test_boundary(void) {
  uint8_t s[512];
  size_t n = ws_write_header(s, true, WS_TEXT, 3, NULL);
  memcpy(s + n, "abc", 3);
  n += 3;
  size_t second = n;
  n += ws_write_header(s + n, true, WS_BINARY, 300, NULL);
  memset(s + n, 'x', 300);
  n += 300;
  struct ws_boundary b = {0};
  CHECK(ws_boundary_between_frames(&b));
  /* byte by byte: between frames exactly after each frame's last byte */
  for (size_t i = 0; i < n; i++) {
    ws_boundary_feed(&b, s + i, 1, false);
    bool expect = i + 1 == second || i + 1 == n;
    CHECK(ws_boundary_between_frames(&b) == expect);
  }
  /* garbage (reserved bits) means never between frames again */
  uint8_t bad[2] = {0xF1, 0x00};
  ws_boundary_feed(&b, bad, 2, false);
  CHECK(!ws_boundary_between_frames(&b));
}

/* ws_mask works a word at a time: against the byte-by-byte definition
 * (RFC 6455 5.3), for every length up to 40, every starting offset, and
 * split in two calls anywhere. */
static void test_mask_words(void) {
  static const uint8_t key[4] = {0xa1, 0x5b, 0x07, 0xe3};
  uint8_t data[40], want[40];
  int bad = 0;
  for (size_t len = 0; len <= sizeof data; len++) {
    for (uint64_t off = 0; off < 8; off++) {
      for (size_t split = 0; split <= len; split++) {
        for (size_t i = 0; i < len; i++) data[i] = want[i] = (uint8_t)(i * 37 + 11);
        for (size_t i = 0; i < len; i++) want[i] ^= key[(off + i) % 4];
        ws_mask(data, split, key, off);
        ws_mask(data + split, len - split, key, off + split);
        bad += memcmp(data, want, len) != 0;
      }
    }
  }
  CHECK(bad == 0);
}

/* Handshake fields as a request sends them, "name: value" per entry. */
static int handshake(const char *const *fields, size_t n) {
  struct ws_handshake hs = {0};
  for (size_t i = 0; i < n; i++) {
    const char *colon = strchr(fields[i], ':');
    ws_handshake_field(&hs, fields[i], (size_t)(colon - fields[i]), colon + 2, strlen(colon + 2));
  }
  return ws_handshake_status(&hs);
}
#define HANDSHAKE(...) handshake((const char *const[]){__VA_ARGS__}, \
                                 sizeof((const char *const[]){__VA_ARGS__}) / sizeof(char *))

/* RFC 6455 4.2.1 and 4.4: a key of 16 bytes in base64, once; version 13. */
static void test_handshake(void) {
  const char *key = "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==", *v13 = "sec-websocket-version: 13";
  CHECK(HANDSHAKE(key, v13) == 0);
  CHECK(HANDSHAKE("sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==", v13) == 0);
  CHECK(HANDSHAKE("sec-websocket-key: abc", v13) == 400);
  CHECK(HANDSHAKE("sec-websocket-key: AAAAAAAAAAAAAAAAAAAA", v13) == 400);      /* 15 bytes */
  CHECK(HANDSHAKE("sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAAA=", v13) == 400);  /* 17 */
  CHECK(HANDSHAKE("sec-websocket-key: AAAAAAAAAAAAAAAAAAAA*A==", v13) == 400);  /* not base64 */
  CHECK(HANDSHAKE(key, key, v13) == 400);
  CHECK(HANDSHAKE(v13) == 400);
  CHECK(HANDSHAKE(key) == 400);
  CHECK(HANDSHAKE(key, "sec-websocket-version: 8") == 426);
  CHECK(HANDSHAKE(key, v13, "sec-websocket-version: 13") == 426); /* not one version */
  CHECK(strcmp(ws_refusal_field_line(426), "sec-websocket-version: 13\r\n") == 0);
  CHECK(strcmp(ws_refusal_field_line(400), "") == 0);
  CHECK(strcmp(ws_refusal_field(426), "sec-websocket-version") == 0 && ws_refusal_field(400) == NULL);
}

int main(void) {
  test_handshake();
  test_reader();
  test_boundary();
  test_mask_words();
  struct ws_frame_hdr h;
  /* RFC 6455 5.7: a single-frame masked text message "Hello" */
  uint8_t masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
  CHECK(ws_parse_header(masked, sizeof masked, true, &h) == 6);
  CHECK(h.fin && h.opcode == WS_TEXT && h.masked && h.len == 5);
  ws_mask(masked + 6, 5, h.mask, 0);
  CHECK(memcmp(masked + 6, "Hello", 5) == 0);
  /* ...and split across calls at odd offsets */
  uint8_t again[] = {0x7f, 0x9f, 0x4d, 0x51, 0x58};
  ws_mask(again, 2, h.mask, 0);
  ws_mask(again + 2, 3, h.mask, 2);
  CHECK(memcmp(again, "Hello", 5) == 0);
  /* an unmasked frame from a client is a protocol error */
  uint8_t plain[] = {0x81, 0x05, 'H', 'e', 'l', 'l', 'o'};
  CHECK(ws_parse_header(plain, sizeof plain, true, &h) == -WS_PROTOCOL_ERROR);
  CHECK(ws_parse_header(plain, sizeof plain, false, &h) == 2);
  /* incomplete headers ask for more */
  CHECK(ws_parse_header(masked, 1, true, &h) == 0);
  CHECK(ws_parse_header(masked, 5, true, &h) == 0);
  /* 16-bit and 64-bit lengths round-trip */
  uint8_t out[WS_MAX_HDR];
  uint8_t mask[4] = {1, 2, 3, 4};
  size_t n = ws_write_header(out, true, WS_BINARY, 256, mask);
  CHECK(n == 8 && ws_parse_header(out, n, true, &h) == 8 && h.len == 256);
  n = ws_write_header(out, false, WS_BINARY, 16777216, NULL);
  CHECK(n == 10 && ws_parse_header(out, n, false, &h) == 10 && h.len == 16777216 && !h.fin);
  /* control frames: at most 125 bytes, never fragmented; RSV bits; opcodes */
  n = ws_write_header(out, true, WS_PING, 126, mask);
  CHECK(ws_parse_header(out, n, true, &h) == -WS_PROTOCOL_ERROR);
  n = ws_write_header(out, false, WS_CLOSE, 2, mask);
  CHECK(ws_parse_header(out, n, true, &h) == -WS_PROTOCOL_ERROR);
  uint8_t rsv[] = {0xc1, 0x80, 0, 0, 0, 0};
  CHECK(ws_parse_header(rsv, sizeof rsv, true, &h) == -WS_PROTOCOL_ERROR);
  uint8_t op3[] = {0x83, 0x80, 0, 0, 0, 0};
  CHECK(ws_parse_header(op3, sizeof op3, true, &h) == -WS_PROTOCOL_ERROR);
  /* UTF-8, whole and split */
  uint32_t st = 0;
  const char *good = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80";
  CHECK(ws_utf8_step(&st, (const uint8_t *)good, strlen(good)) && st == 0);
  st = 0;
  CHECK(ws_utf8_step(&st, (const uint8_t *)"\xe2\x82", 2) && st != 0);
  CHECK(ws_utf8_step(&st, (const uint8_t *)"\xac", 1) && st == 0);
  st = 0;
  CHECK(!ws_utf8_step(&st, (const uint8_t *)"\xc0\xaf", 2));         /* overlong */
  st = 0;
  CHECK(!ws_utf8_step(&st, (const uint8_t *)"\xed\xa0\x80", 3));     /* surrogate */
  st = 0;
  CHECK(!ws_utf8_step(&st, (const uint8_t *)"\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
  /* close codes */
  CHECK(ws_close_code_valid(1000) && ws_close_code_valid(4000) && !ws_close_code_valid(1005) &&
        !ws_close_code_valid(999) && !ws_close_code_valid(1004));
  /* RFC 6455 1.3 */
  char accept[29];
  ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, accept);
  CHECK_STR(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  CHECK_DONE();
}
