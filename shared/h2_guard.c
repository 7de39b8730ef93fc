#include "h2_guard.h"

#include "log.h"

enum {
  ABUSE_BURST = 1000,  /* frames that do no request work, at once */
  ABUSE_RATE = 100,    /* and per second after that */
  RESET_BURST = 1000,  /* nghttp2's own defaults for an untrusted peer */
  RESET_RATE = 33,
  MAX_CONTINUATIONS = 16, /* 16 x 16 KiB covers a 256 KiB header block */
  MAX_SETTINGS = 32,
};

int h2_guard_option_new(nghttp2_option **out, bool trusted_peer) {
  nghttp2_option *opt;
  int rc = nghttp2_option_new(&opt);
  if (rc != 0) return rc;
  /* We return credit ourselves, as the app consumes the body. */
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_max_settings(opt, MAX_SETTINGS);
  nghttp2_option_set_max_continuations(opt, MAX_CONTINUATIONS);
  nghttp2_option_set_max_outbound_ack(opt, 1000);
  if (trusted_peer)
    nghttp2_option_set_stream_reset_rate_limit(opt, UINT64_MAX / 2, UINT64_MAX / 2);
  else
    nghttp2_option_set_stream_reset_rate_limit(opt, RESET_BURST, RESET_RATE);
  *out = opt;
  return 0;
}

int h2_guard_submit_settings(nghttp2_session *session, const struct h2_server_settings *s) {
  nghttp2_settings_entry iv[10];
  size_t n = 0;
  iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->max_concurrent_streams};
  iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, s->stream_window};
  iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_FRAME_SIZE, s->max_frame_size};
  iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, s->max_header_list};
  /* RFC 9218 instead of the RFC 7540 dependency tree: nghttp2 then keeps
   * no tree (and no closed streams in it), which costs work per stream. */
  iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1};
  if (s->enable_connect_protocol)
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1};
  if (s->worker_id) iv[n++] = (nghttp2_settings_entry){H3G_SETTINGS_WORKER_ID, s->worker_id};
  if (s->worker_count)
    iv[n++] = (nghttp2_settings_entry){H3G_SETTINGS_WORKER_COUNT, s->worker_count};
  int rc = nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, iv, n);
  if (rc != 0) return rc;
  return nghttp2_session_set_local_window_size(session, NGHTTP2_FLAG_NONE, 0,
                                               (int32_t)s->conn_window);
}

void h2_abuse_init(struct h2_abuse *a) { token_bucket_init(&a->budget, ABUSE_BURST); }

void h2_abuse_refund(struct h2_abuse *a, const nghttp2_frame *sent) {
  if (sent->hd.type != NGHTTP2_DATA || sent->hd.length == 0) return;
  /* one WINDOW_UPDATE for the stream, one for the connection */
  token_bucket_give(&a->budget, 2, ABUSE_BURST);
}

bool h2_abuse_charge(struct h2_abuse *a, const nghttp2_frame *frame, uint64_t (*clock_ms)(void)) {
  switch (frame->hd.type) {
  case NGHTTP2_SETTINGS:
  case NGHTTP2_PING:
    if (frame->hd.flags & NGHTTP2_FLAG_ACK) return false;
    break;
  case NGHTTP2_WINDOW_UPDATE:
  case NGHTTP2_PRIORITY:
    break;
  case NGHTTP2_DATA:
    /* An empty DATA frame that does not even end the stream does nothing. */
    if (frame->hd.length > 0 || (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return false;
    break;
  default:
    return false;
  }
  return !token_bucket_take(&a->budget, clock_ms(), ABUSE_RATE, ABUSE_BURST);
}

int h2_guard_reset_unsent_headers(nghttp2_session *session, const nghttp2_frame *frame, int error,
                                  void *user) {
  (void)user;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  log_warn("HTTP/2 stream %d: response header fields not sent (%s): resetting the stream",
           frame->hd.stream_id, nghttp2_strerror(error));
  nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_INTERNAL_ERROR);
  return 0;
}
