/* WebSocket framing: RFC 6455's examples, limits, UTF-8, the accept key. */
#include "check.h"
#include "ws_frame.h"

int main(void) {
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
