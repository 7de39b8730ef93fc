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

/* The HTTP/1.1 handshake's fields (RFC 6455 4.2.1), noted as they arrive. */
struct ws_handshake {
  bool upgrade;       /* Upgrade: websocket */
  bool version_seen;  /* Sec-WebSocket-Version */
  bool version_ok;    /* ... and it says 13 (in its only field) */
  unsigned key_count; /* Sec-WebSocket-Key fields */
  char key[64];       /* the first one */
};
/* name is lower-case. */
void ws_handshake_field(struct ws_handshake *hs, const char *name, size_t nlen, const char *value,
                        size_t vlen);
/* 0 when the request can be answered with 101; else the status to refuse
 * it with: 400 for a malformed handshake (no version, no key, several, or
 * one that is not 16 bytes in base64), 426 for another version, whose
 * answer names ours (RFC 6455 4.2.1, 4.4). */
int ws_handshake_status(const struct ws_handshake *hs);
/* The version we speak, as Sec-WebSocket-Version says it. */
#define WS_VERSION "13"
bool ws_version_is_ours(const char *value, size_t len);
/* The field a refusal with this status carries besides the usual (a 426
 * names our version: Sec-WebSocket-Version, WS_VERSION), or NULL. */
const char *ws_refusal_field(int status);
/* The same as an HTTP/1.1 header line ("" for none). */
const char *ws_refusal_field_line(int status);
/* Why a handshake was refused with this status, for the answer and the log. */
const char *ws_refusal_reason(int status);

/* Where frame boundaries fall in a byte stream one only forwards (the
 * gateway's tunnels): enough to know when a frame of one's own, such as a
 * close frame at shutdown, may be put in between. */
struct ws_boundary {
  uint8_t hdr[WS_MAX_HDR];
  size_t hdr_have;
  uint64_t payload_left;
};
void ws_boundary_feed(struct ws_boundary *b, const uint8_t *data, size_t len, bool from_client);
bool ws_boundary_between_frames(const struct ws_boundary *b);

/* An incremental reader of a WebSocket byte stream: it unmasks payloads in
 * place and reports one event per call, keeping only a frame header (14
 * bytes) and a control payload (125) of its own. The caller assembles
 * message payloads from WS_EV_DATA events; the reader enforces the message
 * size limit, fragmentation rules and UTF-8 of text messages and close
 * reasons. */
enum ws_event_type {
  WS_EV_NONE,        /* all input used: feed more */
  WS_EV_DATA,        /* payload bytes of the current message (data, len) */
  WS_EV_MESSAGE_END, /* the current message is complete (opcode: TEXT or BINARY) */
  WS_EV_PING,        /* control payload in data, len */
  WS_EV_PONG,
  WS_EV_CLOSE,       /* code (WS_NO_STATUS when none), reason in data, len */
  WS_EV_ERROR,       /* code: the close code to fail the connection with */
};

struct ws_event {
  enum ws_event_type type;
  uint8_t opcode;
  unsigned code;
  const uint8_t *data;
  size_t len;
};

struct ws_reader {
  bool from_client;     /* frames must be masked */
  uint64_t max_message; /* bytes per message, all fragments together */
  uint8_t hdr[WS_MAX_HDR];
  size_t hdr_have;
  bool in_payload;
  struct ws_frame_hdr frame;
  uint64_t payload_off;
  uint8_t msg_opcode; /* TEXT or BINARY while a message is open, else 0 */
  uint64_t msg_len;
  uint32_t utf8;
  uint8_t ctrl[125];
  size_t ctrl_len;
  bool end_pending; /* the last DATA event finished its message */
  bool failed;
};

void ws_reader_init(struct ws_reader *r, bool from_client, uint64_t max_message);
/* Reads from data (which it may unmask in place) and fills ev. Returns the
 * bytes used. Call again with the rest until it returns 0 with WS_EV_NONE;
 * after WS_EV_ERROR it uses nothing more. */
size_t ws_reader_next(struct ws_reader *r, uint8_t *data, size_t len, struct ws_event *ev);

#endif
