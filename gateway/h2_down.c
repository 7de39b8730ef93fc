/* HTTP/2 from clients (TLS with ALPN h2, or h2c prior knowledge) into
 * exchanges, on nghttp2. Callbacks are thin; mem_send happens only in the
 * flush pass.
 *
 * Credit: the connection window is returned as bytes arrive, a stream's as
 * the upstream takes its body (on_req_credit): a fast uploader waits for
 * the backend, not the gateway's memory.
 *
 * Table of contents:
 *   streams
 *   nghttp2 callbacks
 *   exchange callbacks (response head, body, abort, credit)
 *   proto ops
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <nghttp2/nghttp2.h>

#include "addr.h"
#include "down.h"
#include "h2_guard.h"
#include "h2_out.h"
#include "http_status.h"
#include "log.h"
#include "mem_cache.h"
#include "xchg.h"

enum {
  OUT_HIGH_WATER = 256 * 1024,
};

struct h2d;

struct h2d_strm {
  struct h2d *h;
  struct xchg *x;
  int32_t id;
  int error;          /* status to answer with once the head is in (431, 400...) */
  bool deferred;      /* the data source waits for response bytes */
  bool head_sent;
  bool head_in;       /* its header block ended (END_HEADERS) */
  bool answered_mid_block; /* answered (a 408) while its header block was still coming */
  LIST_ENTRY(h2d_strm) link;
};

struct h2d {
  struct down_conn *c;
  nghttp2_session *session;
  struct h2_abuse abuse;
  LIST_HEAD(, h2d_strm) streams;
  uint32_t n_streams;
  bool goaway;
};

static const struct xchg_down_ops xchg_ops;

static struct h2d *h2d(struct down_conn *c) { return c->pd; }

static void idle_timeout(struct down_conn *c);

static void strm_free(struct h2d_strm *s) {
  struct h2d *h = s->h;
  LIST_REMOVE(s, link);
  h->n_streams--;
  if (s->x) xchg_down_detach(s->x);
  free(s);
  if (h->n_streams == 0 && !h->goaway)
    down_set_timer(h->c, h->c->rt->conf->keepalive_timeout_ms, idle_timeout);
}

/* ---------------------------------------------------------------------------
 * nghttp2 callbacks.
 */
static struct h2d_strm *find(nghttp2_session *session, int32_t id) {
  return nghttp2_session_get_stream_user_data(session, id);
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
  struct h2d *h = user;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  struct h2d_strm *s = calloc(1, sizeof *s);
  if (s == NULL) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  struct down_conn *c = h->c;
  s->h = h;
  s->id = frame->hd.stream_id;
  s->x = xchg_new(c->rt, XCHG_HTTP_2, &xchg_ops, s);
  if (s->x == NULL) {
    free(s);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  down_introduce_xchg(c, s->x);
  xchg_arm_head_timer(s->x);
  LIST_INSERT_HEAD(&h->streams, s, link);
  h->n_streams++;
  if (!h->goaway) down_set_timer(c, 0, NULL); /* not the final GOAWAY's timer */
  nghttp2_session_set_stream_user_data(session, s->id, s);
  return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *user) {
  (void)flags;
  (void)user;
  struct h2d_strm *s = find(session, frame->hd.stream_id);
  if (s == NULL || s->x == NULL || s->error) return 0;
  if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
    s->error = xchg_req_field(s->x, (const char *)name, nlen, (const char *)value, vlen);
  /* Request trailers are not forwarded (ASGI has no place for them). */
  return 0;
}

static void request_head_done(struct h2d_strm *s, bool end_stream) {
  struct xchg *x = s->x;
  s->head_in = true;
  if (s->error) {
    xchg_respond_local(x, s->error, xchg_field_refusal(x, s->error));
    return;
  }
  if (end_stream) x->req_end = true;
  xchg_req_head_done(x);
}

static uint64_t abuse_clock_ms(void) { return gw_now_us() / 1000; }

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
  struct h2d *h = user;
  if (h2_abuse_charge(&h->abuse, frame, abuse_clock_ms)) {
    log_warn("conn %llu %s: too many control frames: GOAWAY ENHANCE_YOUR_CALM",
             (unsigned long long)h->c->id, h->c->peer_ip);
    nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM);
    return 0;
  }
  struct h2d_strm *s = frame->hd.stream_id ? find(session, frame->hd.stream_id) : NULL;
  if (s == NULL || s->x == NULL) return 0;
  bool end_stream = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST)
    request_head_done(s, end_stream);
  else if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) && end_stream)
    xchg_req_end(s->x);
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user) {
  (void)flags;
  (void)user;
  nghttp2_session_consume_connection(session, len);
  struct h2d_strm *s = find(session, id);
  if (s == NULL || s->x == NULL || s->x->state == XS_DONE) {
    nghttp2_session_consume_stream(session, id, len); /* nobody will read it */
    return 0;
  }
  if (xchg_req_body(s->x, data, len) != 0) nghttp2_session_consume_stream(session, id, len);
  return 0;
}

/* A stream answered while its header block was still coming (the head
 * timer's 408) leaves the connection able to take nothing but that
 * block's CONTINUATION frames (RFC 9113 6.2), which nobody will read now:
 * the connection ends once the answer is out, as nginx ends one whose
 * frame stays unfinished past its timeout. */
static void end_after_unfinished_block(struct h2d *h) {
  h->goaway = true;
  nghttp2_session_terminate_session(h->session, NGHTTP2_NO_ERROR);
  down_want_flush(h->c);
}

static int on_stream_close(nghttp2_session *session, int32_t id, uint32_t error_code, void *user) {
  (void)error_code;
  struct h2d_strm *s = find(session, id);
  if (s == NULL) return 0;
  bool unfinished_block = s->answered_mid_block;
  nghttp2_session_set_stream_user_data(session, id, NULL);
  strm_free(s); /* detaches the exchange: a reset cancels the upstream stream */
  if (unfinished_block) end_after_unfinished_block(user);
  return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
  struct h2d *h = user;
  if (frame->hd.type == NGHTTP2_DATA) h2_abuse_refund(&h->abuse, frame);
  if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  /* Answered before the request body ended: the client may stop (RFC 9113
   * 8.1). Not a WebSocket that ended: the client's close frame may follow. */
  struct h2d_strm *s = find(session, frame->hd.stream_id);
  bool tunnel = s && s->x && s->x->websocket && !s->x->resp_local && s->x->status / 100 == 2;
  if (!tunnel && nghttp2_session_get_stream_remote_close(session, frame->hd.stream_id) == 0)
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
  return 0;
}

/* ---------------------------------------------------------------------------
 * Exchange callbacks.
 */
static int submit_trailers(struct h2d_strm *s) {
  struct xchg *x = s->x;
  nghttp2_nv *nva = gw_nv_scratch(x->resp_trailers.n, sizeof *nva);
  if (nva == NULL) return -1;
  size_t n = 0;
  for (uint32_t i = 0; i < x->resp_trailers.n; i++) {
    const struct hdr *f = &x->resp_trailers.v[i];
    nva[n++] = (nghttp2_nv){(uint8_t *)x->resp_trailers.arena + f->name_off,
                            (uint8_t *)x->resp_trailers.arena + f->value_off, f->name_len,
                            f->value_len, NGHTTP2_NV_FLAG_NONE};
  }
  return nghttp2_submit_trailer(s->h->session, s->id, nva, n);
}

static ssize_t read_resp_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                              uint32_t *data_flags, nghttp2_data_source *source, void *user) {
  (void)session;
  (void)id;
  (void)user;
  struct h2d_strm *s = source->ptr;
  struct xchg *x = s->x;
  int n = evbuffer_remove(x->resp_body, buf, length);
  if (n < 0) n = 0;
  if (n > 0) xchg_resp_consumed(x, (size_t)n);
  if (x->resp_end && evbuffer_get_length(x->resp_body) == 0) {
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    xchg_resp_out(x);
    if (x->resp_trailers.n > 0) {
      *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      if (submit_trailers(s) != 0) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return n;
  }
  if (n == 0) {
    s->deferred = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  return n;
}

static void on_resp_head(struct xchg *x) {
  struct h2d_strm *s = x->down_ctx;
  struct h2d *h = s->h;
  if (!s->head_in) s->answered_mid_block = true;
  nghttp2_nv *nva = gw_nv_scratch(x->resp.n + 2, sizeof *nva); /* + :status and alt-svc */
  if (nva == NULL) {
    nghttp2_submit_rst_stream(h->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    down_want_flush(h->c);
    return;
  }
  char status[4];
  http_status_digits(x->status, status); /* the upstream module checked 200..999 */
  size_t n = 0;
  nva[n++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE};
  bool has_alt_svc = false;
  for (uint32_t i = 0; i < x->resp.n; i++) {
    const struct hdr *f = &x->resp.v[i];
    const char *name = x->resp.arena + f->name_off;
    if ((f->flags & HDR_DROPPED) || name[0] == ':') continue;
    if (f->name_len == 7 && memcmp(name, "alt-svc", 7) == 0) has_alt_svc = true;
    nva[n++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)x->resp.arena + f->value_off, f->name_len,
                            f->value_len, NGHTTP2_NV_FLAG_NONE};
  }
  const char *alt = down_alt_svc(h->c);
  if (alt && !has_alt_svc)
    nva[n++] = (nghttp2_nv){(uint8_t *)"alt-svc", (uint8_t *)alt, 7, strlen(alt),
                            NGHTTP2_NV_FLAG_NONE};
  bool ends = x->resp_end && evbuffer_get_length(x->resp_body) == 0 && x->resp_trailers.n == 0;
  nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_resp_body};
  if (ends) xchg_resp_out(x);
  if (nghttp2_submit_response(h->session, s->id, nva, n, ends ? NULL : &prd) != 0) {
    nghttp2_submit_rst_stream(h->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
  }
  s->head_sent = true;
  down_want_flush(h->c);
}

static void on_resp_body(struct xchg *x) {
  struct h2d_strm *s = x->down_ctx;
  if (s->deferred) {
    s->deferred = false;
    nghttp2_session_resume_data(s->h->session, s->id);
  }
  down_want_flush(s->h->c);
}

static void on_req_credit(struct xchg *x, size_t n) {
  struct h2d_strm *s = x->down_ctx;
  nghttp2_session_consume_stream(s->h->session, s->id, n);
  down_want_flush(s->h->c);
}

static void on_abort(struct xchg *x) {
  struct h2d_strm *s = x->down_ctx;
  nghttp2_submit_rst_stream(s->h->session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
  down_want_flush(s->h->c);
}

static const struct xchg_down_ops xchg_ops = {on_resp_head, on_resp_body, on_req_credit, on_abort};

/* ---------------------------------------------------------------------------
 * Proto ops.
 */
static nghttp2_session_callbacks *callbacks(void) {
  static nghttp2_session_callbacks *cbs;
  if (cbs) return cbs;
  if (nghttp2_session_callbacks_new(&cbs) != 0) return NULL;
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, h2_guard_reset_unsent_headers);
  return cbs;
}

static void idle_timeout(struct down_conn *c) {
  struct h2d *h = h2d(c);
  if (h->n_streams > 0) return;
  h->goaway = true;
  nghttp2_session_terminate_session(h->session, NGHTTP2_NO_ERROR);
  down_want_flush(c);
}

static int h2_start(struct down_conn *c) {
  const struct gw_conf *conf = c->rt->conf;
  struct h2d *h = calloc(1, sizeof *h);
  if (h == NULL) return -1;
  h->c = c;
  LIST_INIT(&h->streams);
  nghttp2_option *opt;
  if (h2_guard_option_new(&opt, false) != 0) goto err_free;
  nghttp2_option_set_max_send_header_block_length(opt, gw_send_block_limit(conf));
  int rc = nghttp2_session_server_new3(&h->session, callbacks(), h, opt, mem_cache_nghttp2());
  nghttp2_option_del(opt);
  if (rc != 0) goto err_free;
  struct h2_server_settings settings = {
      .max_concurrent_streams = conf->h2_max_concurrent_streams,
      .stream_window = conf->h2_stream_window,
      .conn_window = conf->h2_connection_window,
      .max_frame_size = 16384,
      .max_header_list = (uint32_t)conf->max_header_bytes,
      .enable_connect_protocol = true, /* WebSockets over HTTP/2 (RFC 8441) */
  };
  if (h2_guard_submit_settings(h->session, &settings) != 0) goto err_session;
  h2_abuse_init(&h->abuse);
  c->pd = h;
  down_set_timer(c, conf->keepalive_timeout_ms, idle_timeout);
  return 0;

err_session:
  nghttp2_session_del(h->session);
err_free:
  free(h);
  return -1;
}

static void h2_on_read(struct down_conn *c) {
  struct h2d *h = h2d(c);
  struct evbuffer *in = bufferevent_get_input(c->bev);
  struct evbuffer_iovec v[16];
  while (evbuffer_get_length(in) > 0 && c->state == DC_OPEN) {
    int n = evbuffer_peek(in, -1, NULL, v, 16);
    size_t used = 0;
    for (int i = 0; i < n && i < 16; i++) {
      ssize_t rc = nghttp2_session_mem_recv(h->session, v[i].iov_base, v[i].iov_len);
      if (rc < 0) {
        log_debug("conn %llu %s: HTTP/2 error: %s", (unsigned long long)c->id, c->peer_ip,
                  nghttp2_strerror((int)rc));
        evbuffer_drain(in, evbuffer_get_length(in));
        /* A flood (nghttp2's own outbound-ACK limit) is abuse like any other. */
        if (rc != NGHTTP2_ERR_BAD_CLIENT_MAGIC)
          nghttp2_session_terminate_session(h->session, rc == NGHTTP2_ERR_FLOODED
                                                            ? NGHTTP2_ENHANCE_YOUR_CALM
                                                            : NGHTTP2_PROTOCOL_ERROR);
        h->goaway = true;
        c->proto->flush(c); /* the GOAWAY */
        down_close(c, false);
        return;
      }
      used += v[i].iov_len;
    }
    evbuffer_drain(in, used);
  }
}

static void h2_flush(struct down_conn *c) {
  struct h2d *h = h2d(c);
  struct evbuffer *out = bufferevent_get_output(c->bev);
  if (h2_send_into(h->session, out, OUT_HIGH_WATER) != 0) {
    down_close(c, true);
    return;
  }
  if (!nghttp2_session_want_read(h->session) && !nghttp2_session_want_write(h->session))
    down_close(c, false);
}

/* Graceful shutdown in two steps (RFC 9113 6.8): a GOAWAY that refuses
 * nothing yet (2^31-1) tells the client to open no more streams; a round
 * trip later the real one names the last stream taken. A request the
 * client sent meanwhile is served, not refused. */
enum { GOAWAY_GRACE_MS = 1000 };

static void final_goaway(struct down_conn *c) {
  struct h2d *h = h2d(c);
  nghttp2_submit_goaway(h->session, NGHTTP2_FLAG_NONE,
                        nghttp2_session_get_last_proc_stream_id(h->session), NGHTTP2_NO_ERROR, NULL, 0);
  down_want_flush(c);
}

static void h2_shutdown(struct down_conn *c) {
  struct h2d *h = h2d(c);
  if (h->goaway) return;
  h->goaway = true;
  nghttp2_submit_shutdown_notice(h->session);
  down_set_timer(c, GOAWAY_GRACE_MS, final_goaway);
  down_want_flush(c);
}

static void h2_destroy(struct down_conn *c) {
  struct h2d *h = h2d(c);
  if (h == NULL) return;
  struct h2d_strm *s;
  while ((s = LIST_FIRST(&h->streams)) != NULL) strm_free(s);
  nghttp2_session_del(h->session);
  free(h);
  c->pd = NULL;
}

static bool h2_idle(const struct down_conn *c) { return h2d((struct down_conn *)c)->n_streams == 0; }

const struct down_proto h2_down_proto = {
    .name = "h2",
    .start = h2_start,
    .on_read = h2_on_read,
    .flush = h2_flush,
    .shutdown = h2_shutdown,
    .destroy = h2_destroy,
    .idle = h2_idle,
};
