/* HTTP/2 server hardening shared by the gateway's front and the worker:
 * nghttp2 options (rapid reset, CONTINUATION and SETTINGS floods), our
 * SETTINGS, and a budget for frames that cost us work but carry no request
 * (SETTINGS, PING, WINDOW_UPDATE, PRIORITY, empty DATA), spent down by a
 * flooding peer and answered with GOAWAY ENHANCE_YOUR_CALM. */
#ifndef H3G_H2_GUARD_H
#define H3G_H2_GUARD_H

#include <stdbool.h>
#include <stdint.h>
#include <nghttp2/nghttp2.h>

#include "token_bucket.h"

struct h2_server_settings {
  uint32_t max_concurrent_streams;
  uint32_t stream_window;
  uint32_t conn_window;
  uint32_t max_frame_size;
  uint32_t max_header_list;
  bool enable_connect_protocol;
  /* Private SETTINGS a worker sends so our gateway can tell its processes
   * apart behind one address (unknown ids are ignored by other peers). */
  uint32_t worker_id;     /* 0: not sent */
  uint32_t worker_count;  /* 0: not sent */
};

/* Identifiers from the experimental range RFC 9113 leaves to private use. */
enum {
  H3G_SETTINGS_WORKER_ID = 0xf3a1,
  H3G_SETTINGS_WORKER_COUNT = 0xf3a2,
};

/* trusted_peer: our own gateway, whose client cancellations legitimately
 * arrive as bursts of RST_STREAM (nghttp2 issues 1984 and 2597): its reset
 * budget is effectively unlimited. Returns 0 or an nghttp2 error. */
int h2_guard_option_new(nghttp2_option **out, bool trusted_peer);
/* Sends our SETTINGS and opens the connection window. */
int h2_guard_submit_settings(nghttp2_session *session, const struct h2_server_settings *s);
/* An on_frame_not_send callback. nghttp2 leaves a stream open when its
 * response HEADERS (or trailers) could not go out, a block over the send
 * limit say, and the client would wait for it forever: this resets it.
 * The servers keep their heads under the limit; this is the backstop. */
int h2_guard_reset_unsent_headers(nghttp2_session *session, const nghttp2_frame *frame, int error,
                                  void *user);

struct h2_abuse {
  struct token_bucket budget;
};

void h2_abuse_init(struct h2_abuse *a);
/* A DATA frame we sent earns the WINDOW_UPDATEs it will prompt (a client
 * with a tiny window answers every small frame): they are not abuse. */
void h2_abuse_refund(struct h2_abuse *a, const nghttp2_frame *sent);
/* Charges a received frame. True when the peer is over budget. The clock
 * is read only for frames that count: most frames are DATA, and a clock read
 * per frame is a TSC read per WebSocket message on a VM. */
bool h2_abuse_charge(struct h2_abuse *a, const nghttp2_frame *frame, uint64_t (*clock_ms)(void));

#endif
