/* WebSocket framing (RFC 6455): frame headers, masking, UTF-8 checks and
 * the handshake's accept key. Plain C over bytes, shared by the worker
 * (which speaks WebSocket to apps) and h3load (a WebSocket test client);
 * the gateway tunnels frames without parsing them. */
#ifndef H3G_WS_FRAME_H
#define H3G_WS_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum ws_opcode {
  WS_CONT = 0x0,
  WS_TEXT = 0x1,
  WS_BINARY = 0x2,
  WS_CLOSE = 0x8,
  WS_PING = 0x9,
  WS_PONG = 0xA,
};

enum ws_close_code {
  WS_NORMAL = 1000,
  WS_GOING_AWAY = 1001,
  WS_PROTOCOL_ERROR = 1002,
  WS_UNSUPPORTED = 1003,
  WS_NO_STATUS = 1005,
  WS_ABNORMAL = 1006,
  WS_INVALID_DATA = 1007,
  WS_POLICY = 1008,
  WS_TOO_BIG = 1009,
  WS_INTERNAL = 1011,
};

struct ws_frame_hdr {
  bool fin;
  uint8_t opcode;
  bool masked;
  uint8_t mask[4];
  uint64_t len;
  size_t hdr_len;
};

enum { WS_MAX_HDR = 14 };

/* Parses the header at data. Returns its length, 0 when more bytes are
 * needed, or -code (a close code) when the header breaks RFC 6455:
 * reserved bits (no extensions negotiated), unknown opcodes, control frames
 * longer than 125 bytes or fragmented, a 64-bit length with the top bit set,
 * or (from a client) a missing mask. */
int ws_parse_header(const uint8_t *data, size_t len, bool from_client, struct ws_frame_hdr *h);
/* XORs payload bytes with the mask; offset is the position in the payload. */
void ws_mask(uint8_t *data, size_t len, const uint8_t mask[4], uint64_t offset);
/* Writes a header (mask NULL: unmasked, as servers send). Returns its length. */
size_t ws_write_header(uint8_t *out, bool fin, uint8_t opcode, uint64_t len, const uint8_t *mask);
/* Incremental UTF-8 validation across fragments: state 0 is "between
 * characters"; returns false at the first invalid byte. */
bool ws_utf8_step(uint32_t *state, const uint8_t *s, size_t n);
/* Close codes a peer may send (RFC 6455 7.4). */
bool ws_close_code_valid(unsigned code);
/* Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID)). */
void ws_accept_key(const char *key, size_t key_len, char out[29]);

#endif
