/* libFuzzer target: the WebSocket reader and the gateway's frame-boundary
 * tracker over arbitrary bytes, fed in arbitrary pieces.
 *
 * The first input byte chooses the side (client frames must be masked),
 * the piece size and a small message limit; the rest is the stream. Beyond
 * what the sanitizers catch it checks the reader's promises: it never uses
 * more than it was given, payload events stay inside the input, a message
 * never exceeds the limit, text messages are valid UTF-8 as a whole, and
 * after an error it takes nothing more. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws_frame.h"
#include "require.h"

int LLVMFuzzerTestOneInput(const uint8_t *input, size_t size) {
  if (size < 1) return 0;
  bool from_client = input[0] & 1;
  size_t step = 1 + ((input[0] >> 1) & 31);
  uint64_t max = 64u << ((input[0] >> 6) & 3);
  size_t len = size - 1;
  uint8_t *data = malloc(len ? len : 1);
  memcpy(data, input + 1, len);

  struct ws_boundary b = {0};
  ws_boundary_feed(&b, input + 1, len, from_client);
  (void)ws_boundary_between_frames(&b);

  struct ws_reader r;
  ws_reader_init(&r, from_client, max);
  uint64_t msg_len = 0;
  uint32_t utf8 = 0;
  bool text = false, failed = false;
  for (size_t off = 0; off < len;) {
    size_t piece = len - off < step ? len - off : step;
    uint8_t *p = data + off;
    size_t left = piece;
    for (int calls = 0;; calls++) {
      REQUIRE(calls <= (int)piece + 4); /* each call moves on or reports */
      struct ws_event ev;
      size_t used = ws_reader_next(&r, p, left, &ev);
      REQUIRE(used <= left);
      if (failed) REQUIRE(used == 0 && (ev.type == WS_EV_NONE || ev.type == WS_EV_ERROR));
      if (ev.type == WS_EV_DATA) {
        REQUIRE(ev.data >= data && ev.data + ev.len <= data + len);
        if (msg_len == 0) text = r.msg_opcode == WS_TEXT; /* DATA events carry no opcode */
        msg_len += ev.len;
        REQUIRE(msg_len <= max);
        if (text) REQUIRE(ws_utf8_step(&utf8, ev.data, ev.len)); /* the reader checked it */
      } else if (ev.type == WS_EV_MESSAGE_END) {
        if (ev.opcode == WS_TEXT) REQUIRE(utf8 == 0); /* no character left open */
        msg_len = 0;
        utf8 = 0;
      } else if (ev.type == WS_EV_PING || ev.type == WS_EV_PONG || ev.type == WS_EV_CLOSE) {
        REQUIRE(ev.len <= 125);
      } else if (ev.type == WS_EV_ERROR) {
        REQUIRE(ev.code >= 1000 && ev.code < 5000);
        failed = true;
      }
      p += used;
      left -= used;
      if (used == 0 && (ev.type == WS_EV_NONE || ev.type == WS_EV_ERROR)) break;
    }
    off += piece;
  }
  free(data);
  return 0;
}
