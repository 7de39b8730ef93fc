/* An HTTP/2 client session to one backend server (nghttp2 over a libevent
 * bufferevent, TCP or unix socket). All nghttp2 client calls live here.
 *
 * Credit: the connection window is returned as bytes arrive; a stream's only
 * as the front passes its bytes on (up_conn_consume), so a slow client
 * slows the backend instead of filling the gateway.
 *
 * Table of contents:
 *   open, connect, close
 *   reading and the flush (the only place that sends)
 *   nghttp2 callbacks
 *   streams: submit, body source, reset, credit
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "addr.h"
#include "h2_out.h"
#include "h2_guard.h"
#include "log.h"
#include "mem_cache.h"
#include "sock.h"
#include "up_internal.h"
#include "upstream.h"

enum {
  OUT_HIGH_WATER = 256 * 1024,
  OUT_LOW_WATER = 64 * 1024,
};

struct conn_streams {
  TAILQ_HEAD(, xchg) head;
};

/* Per-connection stream list lives beside the conn; kept out of the
 * shared header so only this file touches it. */
struct up_conn_impl {
  struct up_conn pub;
  struct conn_streams streams;
  int connect_errno; /* connect failed at once with this (0: it did not) */
};

static struct up_conn_impl *impl(struct up_conn *c) { return (struct up_conn_impl *)c; }

static void conn_flush(struct flushable *f);
static void conn_broken(struct up_conn *c, const char *why, bool failed);

/* A closed connection waits only for its deferred free: never queue it. */
static void want_flush(struct up_conn *c) {
  if (c->state != UC_CLOSED) gw_want_flush(&c->flush);
}

/* ---------------------------------------------------------------------------
 * Callbacks.
 */
static struct xchg *stream_xchg(nghttp2_session *s, int32_t id) {
  return nghttp2_session_get_stream_user_data(s, id);
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *user) {
  (void)flags;
  (void)user;
  struct xchg *x = stream_xchg(session, frame->hd.stream_id);
  if (x == NULL || frame->hd.type != NGHTTP2_HEADERS) return 0;
  if (nlen == 7 && memcmp(name, ":status", 7) == 0) {
    int status = 0;
    for (size_t i = 0; i < vlen && i < 3; i++) status = status * 10 + (value[i] - '0');
    x->status = status;
    return 0;
  }
  bool trailers = x->state == XS_RESPONDING || x->state == XS_DONE;
  struct hdr_list *fields = trailers ? &x->resp_trailers : &x->resp;
  /* A backend's head is held to the clients' limit, counted as HTTP/2
   * does; nginx (proxy_buffer_size) and HAProxy (bufsize) bound it too. */
  if (fields->bytes + (size_t)fields->n * 32 + nlen + vlen + 32 > x->rt->conf->max_header_bytes) {
    x->up.head_too_large = true;
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets the stream */
  }
  if (hdr_add(fields, (const char *)name, nlen, (const char *)value, vlen) < 0)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  return 0;
}

static void read_worker_settings(struct up_conn *c, const nghttp2_settings *settings) {
  for (size_t i = 0; i < settings->niv; i++) {
    if (settings->iv[i].settings_id == H3G_SETTINGS_WORKER_ID) c->worker_id = settings->iv[i].value;
    if (settings->iv[i].settings_id == H3G_SETTINGS_WORKER_COUNT)
      c->worker_count = settings->iv[i].value;
  }
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
  struct up_conn *c = user;
  switch (frame->hd.type) {
  case NGHTTP2_SETTINGS:
    if (frame->hd.flags & NGHTTP2_FLAG_ACK) break;
    c->max_streams = nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    read_worker_settings(c, &frame->settings);
    if (c->handshake_timer) { /* the first SETTINGS: the handshake is done */
      event_free(c->handshake_timer);
      c->handshake_timer = NULL;
    }
    if (!c->settings_seen && c->server) {
      c->settings_seen = true;
      up_server_answered(c->server, c);
    }
    if (c->server) up_server_conn_ready(c->server, c); /* the limit may have grown */
    break;
  case NGHTTP2_GOAWAY:
    /* Streams past last_stream_id come back as REFUSED_STREAM and are retried. */
    if (c->state == UC_READY) c->state = UC_DRAINING;
    log_debug("upstream %s: GOAWAY (last stream %d, %s)", c->server ? c->server->name : "?",
              frame->goaway.last_stream_id, nghttp2_http2_strerror(frame->goaway.error_code));
    break;
  case NGHTTP2_HEADERS: {
    struct xchg *x = stream_xchg(session, frame->hd.stream_id);
    if (x == NULL) break;
    if (x->state == XS_SENT) {
      if (x->status >= 100 && x->status < 200) {
        hdr_list_clear(&x->resp); /* 1xx: an interim response is not forwarded */
        x->status = 0;
        break;
      }
      if (x->status < 200 || x->status > 999) {
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_PROTOCOL_ERROR);
        break;
      }
      xchg_up_resp_head(x);
    }
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) xchg_up_resp_end(x);
    break;
  }
  case NGHTTP2_DATA: {
    struct xchg *x = stream_xchg(session, frame->hd.stream_id);
    if (x && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) xchg_up_resp_end(x);
    break;
  }
  default:
    break;
  }
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user) {
  (void)flags;
  (void)user;
  nghttp2_session_consume_connection(session, len);
  struct xchg *x = stream_xchg(session, id);
  if (x == NULL || x->state != XS_RESPONDING) {
    nghttp2_session_consume_stream(session, id, len); /* nobody will read it */
    return 0;
  }
  xchg_up_resp_data(x, data, len);
  return 0;
}

static void stream_gone(struct up_conn *c, struct xchg *x) {
  TAILQ_REMOVE(&impl(c)->streams.head, x, up_link);
  c->n_streams--;
  if (c->n_streams == 0) c->idle_since_us = gw_now_us();
}

static int on_stream_close(nghttp2_session *session, int32_t id, uint32_t error_code, void *user) {
  struct up_conn *c = user;
  struct xchg *x = stream_xchg(session, id);
  if (x == NULL) return 0;
  nghttp2_session_set_stream_user_data(session, id, NULL);
  stream_gone(c, x);
  struct up_server *srv = c->server;
  if (srv) up_server_stream_done(srv, x->resp_end);
  if (x->resp_end) {
    xchg_up_detach(x);
  } else {
    bool refused = error_code == NGHTTP2_REFUSED_STREAM;
    char why[160];
    if (x->up.head_too_large) { /* the backend's answer, and not one to ask for again */
      snprintf(why, sizeof why, "upstream %s sent response header fields over limits.max_header_bytes",
               x->upstream_addr);
      xchg_up_give_up(x, 502, why);
    } else {
      snprintf(why, sizeof why, "upstream %s %s the stream (%s)", x->upstream_addr,
               refused ? "refused" : "reset", nghttp2_http2_strerror(error_code));
      /* REFUSED_STREAM (and GOAWAY's unprocessed streams) promise the
       * backend did nothing with it. */
      xchg_up_failed(x, !x->up.headers_sent || refused ? UP_UNSEEN : UP_ANSWERED, 502, why);
    }
  }
  if (srv) up_server_settle(srv);
  want_flush(c);
  return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
  (void)user;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  struct xchg *x = stream_xchg(session, frame->hd.stream_id);
  if (x) x->up.headers_sent = true;
  return 0;
}

static ssize_t read_req_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                             uint32_t *data_flags, nghttp2_data_source *source, void *user) {
  (void)session;
  (void)id;
  (void)user;
  struct xchg *x = source->ptr;
  size_t n = xchg_up_take_req_body(x, buf, length);
  if (xchg_up_req_body_eof(x)) {
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
  }
  if (n == 0) {
    x->up.body_deferred = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  return (ssize_t)n;
}

/* ---------------------------------------------------------------------------
 * Flush and I/O.
 */

/* The flush pass: nghttp2's frames into the output (h2_send_into packs
 * them), then straight to the socket. */
static void conn_flush(struct flushable *f) {
  struct up_conn *c = (struct up_conn *)f;
  if (c->state == UC_CLOSED || c->state == UC_CONNECTING) return;
  struct evbuffer *out = bufferevent_get_output(c->bev);
  if (h2_send_into(c->session, out, OUT_HIGH_WATER) != 0) {
    conn_broken(c, "HTTP/2 session error", true);
    return;
  }
  gw_bev_send(c->bev);
  bool done = !nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session);
  if (done || (c->state == UC_DRAINING && c->n_streams == 0 && evbuffer_get_length(out) == 0))
    conn_broken(c, "closed", false);
}

/* A backend that answers our preface with an HTTP/1.x status line speaks
 * only HTTP/1 (uvicorn, gunicorn, a plain web server). nghttp2 only saw a
 * frame too large, and the client got "refused the stream". */
static bool answers_http1(struct up_conn *c, struct evbuffer *in) {
  char head[5];
  return !c->settings_seen && evbuffer_copyout(in, head, sizeof head) == (ev_ssize_t)sizeof head &&
         memcmp(head, "HTTP/", 5) == 0;
}

static void on_read(struct bufferevent *bev, void *arg) {
  struct up_conn *c = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  struct evbuffer_iovec v[16];
  if (answers_http1(c, in)) {
    conn_broken(c, "the backend speaks HTTP/1.x, not HTTP/2 (h2c): use an HTTP/2 backend such as h3gate-worker",
                true);
    return;
  }
  while (evbuffer_get_length(in) > 0 && c->state != UC_CLOSED) {
    int n = evbuffer_peek(in, -1, NULL, v, 16);
    size_t used = 0;
    for (int i = 0; i < n && i < 16; i++) {
      ssize_t rc = nghttp2_session_mem_recv(c->session, v[i].iov_base, v[i].iov_len);
      if (rc < 0) {
        conn_broken(c, nghttp2_strerror((int)rc), true);
        return;
      }
      used += v[i].iov_len;
    }
    evbuffer_drain(in, used);
  }
  want_flush(c);
}

static void on_write(struct bufferevent *bev, void *arg) {
  struct up_conn *c = arg;
  if (c->state != UC_CONNECTING) gw_bev_written(bev);
  want_flush(c);
}

/* connect_timeout from now: for the connection, then for the SETTINGS. */
static void arm_handshake_timer(struct up_conn *c) {
  uint64_t ms = gw.rt->conf->connect_timeout_ms;
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
  evtimer_add(c->handshake_timer, &tv);
}

static void connected(struct up_conn *c) {
  if (c->handshake_timer) arm_handshake_timer(c); /* now for the backend's SETTINGS */
  c->state = UC_READY;
  c->idle_since_us = gw_now_us();
  evutil_socket_t fd = bufferevent_getfd(c->bev);
  if (c->server && c->server->addr.ss_family != AF_UNIX) h3g_set_nodelay(fd);
  gw_bev_direct(c->bev); /* connected: from now on we write at the flush point */
  want_flush(c);
  if (c->server) up_server_conn_ready(c->server, c);
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  struct up_conn *c = arg;
  if (what & BEV_EVENT_CONNECTED) {
    connected(c);
    return;
  }
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
    char why[160];
    int err = EVUTIL_SOCKET_ERROR();
    if (c->state == UC_CONNECTING)
      snprintf(why, sizeof why, "connect failed: %s", evutil_socket_error_to_string(err));
    else if (what & BEV_EVENT_EOF)
      snprintf(why, sizeof why, "connection closed by the backend");
    else
      snprintf(why, sizeof why, "connection error: %s", evutil_socket_error_to_string(err));
    /* A clean EOF after GOAWAY with nothing in flight is no failure. */
    bool failed = c->state == UC_CONNECTING || c->n_streams > 0 || !(what & BEV_EVENT_EOF);
    conn_broken(c, why, failed);
  }
}

static void on_handshake_timeout(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct up_conn *c = arg;
  int err = impl(c)->connect_errno;
  char why[160];
  if (c->state != UC_CONNECTING) {
    /* Connected, and silent: a backend that accepts and never answers
     * (another service, a TLS port) held every request on it until the
     * response timeout (60 s), and was never counted as failing. */
    conn_broken(c, "no HTTP/2 SETTINGS from the backend within connect_timeout: is it an h2c server?", true);
  } else if (err == 0) {
    conn_broken(c, "connect timed out", true);
  } else if (h3g_out_of_files(err)) { /* the gateway's trouble, not the backend's */
    /* It used to wait out connect_timeout and count as the server's
     * failure: a gateway short of files ejected every healthy backend. */
    snprintf(why, sizeof why, "cannot open a connection: %s (the gateway's own limit)", strerror(err));
    log_warn("upstream %s: %s", c->server ? c->server->name : "?", why);
    up_note_files_short();
    conn_broken(c, why, false);
  } else {
    snprintf(why, sizeof why, "connect failed: %s", strerror(err));
    conn_broken(c, why, true);
  }
}

static void conn_free(void *p) {
  struct up_conn *c = p;
  if (c->handshake_timer) event_free(c->handshake_timer);
  if (c->session) nghttp2_session_del(c->session);
  free(impl(c));
}

/* The socket is gone (or going): every stream fails over or errors out. */
static void conn_broken(struct up_conn *c, const char *why, bool failed) {
  if (c->state == UC_CLOSED) return;
  enum up_conn_state was = c->state;
  c->state = UC_CLOSED;
  struct up_server *srv = c->server;
  if (failed)
    log_warn("upstream %s: %s", srv ? srv->name : "?", why);
  else
    log_debug("upstream %s: %s", srv ? srv->name : "?", why);
  if (c->bev) {
    bufferevent_free(c->bev);
    c->bev = NULL;
  }
  (void)was;
  if (srv) up_server_conn_closed(srv, c, failed, why);
  c->server = NULL;
  struct xchg *x;
  while ((x = TAILQ_FIRST(&impl(c)->streams.head)) != NULL) {
    nghttp2_session_set_stream_user_data(c->session, x->up.stream_id, NULL);
    stream_gone(c, x);
    if (srv) up_server_stream_done(srv, false);
    char msg[192];
    snprintf(msg, sizeof msg, "upstream %s: %s", x->upstream_addr, why);
    xchg_up_failed(x, x->up.headers_sent ? UP_BROKEN : UP_UNSEEN, 502, msg);
  }
  if (srv) up_server_settle(srv);
  gw_flush_cancel(&c->flush);
  gw_defer_free(conn_free, c);
}

/* ---------------------------------------------------------------------------
 * Open.
 */
static nghttp2_session_callbacks *callbacks(void) {
  static nghttp2_session_callbacks *cbs;
  if (cbs) return cbs;
  if (nghttp2_session_callbacks_new(&cbs) != 0) return NULL;
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  return cbs;
}

struct up_conn *up_conn_open(struct up_server *srv) {
  const struct gw_conf *conf = gw.rt->conf;
  struct up_conn_impl *ci = calloc(1, sizeof *ci);
  if (ci == NULL) return NULL;
  struct up_conn *c = &ci->pub;
  TAILQ_INIT(&ci->streams.head);
  c->flush.flush = conn_flush;
  c->server = srv;
  c->state = UC_CONNECTING;
  c->max_streams = 100; /* RFC 9113's suggested floor until SETTINGS say */
  nghttp2_option *opt;
  nghttp2_option_new(&opt);
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_peer_max_concurrent_streams(opt, 100);
  nghttp2_option_set_max_send_header_block_length(opt, gw_send_block_limit(conf));
  int rc = nghttp2_session_client_new3(&c->session, callbacks(), c, opt, mem_cache_nghttp2());
  nghttp2_option_del(opt);
  if (rc != 0) goto err_free;
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, conf->h2_stream_window},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, 65536},
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1}, /* no dependency tree to keep */
  };
  nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
  nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0,
                                        (int32_t)conf->h2_connection_window);
  c->bev = bufferevent_socket_new(gw.base, -1, BEV_OPT_CLOSE_ON_FREE);
  if (c->bev == NULL) goto err_free;
  bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
  bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW_WATER, 0);
  bufferevent_enable(c->bev, EV_READ | EV_WRITE);
  TAILQ_INSERT_TAIL(&srv->conns, c, link);
  srv->n_conns++;
  c->handshake_timer = evtimer_new(gw.base, on_handshake_timeout, c);
  arm_handshake_timer(c);
  errno = 0;
  if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&srv->addr, (int)srv->addr_len) != 0) {
    /* Failed at once (out of files, unix socket missing): report from the
     * loop, not here. */
    ci->connect_errno = errno ? errno : ECONNREFUSED;
    event_active(c->handshake_timer, EV_TIMEOUT, 0);
  }
  return c;

err_free:
  if (c->session) nghttp2_session_del(c->session);
  free(ci);
  return NULL;
}

bool up_conn_has_room(const struct up_conn *c) {
  return c->state == UC_READY && c->n_streams < c->max_streams;
}

void up_conn_drain(struct up_conn *c) {
  if (c->state == UC_CLOSED) return;
  if (c->state == UC_CONNECTING) {
    conn_broken(c, "drained before it connected", false);
    return;
  }
  if (c->state == UC_READY) {
    c->state = UC_DRAINING;
    nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
  }
  want_flush(c);
}

/* ---------------------------------------------------------------------------
 * Streams.
 */
/* A WebSocket needs a backend that accepts extended CONNECT (RFC 8441 3);
 * we know once its SETTINGS arrived. 1: go on, 0: wait, -1: refused. */
static int websocket_allowed(struct up_conn *c) {
  if (!c->settings_seen) return 0;
  return nghttp2_session_get_remote_settings(c->session, NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL)
             ? 1
             : -1;
}

int up_conn_submit(struct up_conn *c, struct xchg *x) {
  if (!up_conn_has_room(c)) return -1;
  if (x->websocket) {
    int ok = websocket_allowed(c);
    if (ok == 0) return -1;
    if (ok < 0) {
      xchg_up_give_up(x, 502, "the backend does not accept WebSockets over HTTP/2 "
                              "(no SETTINGS_ENABLE_CONNECT_PROTOCOL)");
      return 0;
    }
  }
  nghttp2_nv *nva = gw_nv_scratch(x->req.n + 5, sizeof *nva);
  if (nva == NULL) return -1;
  size_t n = 0;
  int path = x->i_upstream_path >= 0 ? x->i_upstream_path : x->i_path;
  int pseudo[] = {x->i_method, x->i_scheme, x->i_authority, path, x->i_protocol};
  size_t n_pseudo = x->i_protocol >= 0 ? 5 : 4;
  for (size_t i = 0; i < n_pseudo; i++) {
    const struct hdr *h = &x->req.v[pseudo[i]];
    nva[n++] = (nghttp2_nv){(uint8_t *)x->req.arena + h->name_off,
                            (uint8_t *)x->req.arena + h->value_off, h->name_len, h->value_len,
                            NGHTTP2_NV_FLAG_NONE};
  }
  for (uint32_t i = 0; i < x->req.n; i++) {
    const struct hdr *h = &x->req.v[i];
    if ((h->flags & HDR_DROPPED) || x->req.arena[h->name_off] == ':') continue;
    nva[n++] = (nghttp2_nv){(uint8_t *)x->req.arena + h->name_off,
                            (uint8_t *)x->req.arena + h->value_off, h->name_len, h->value_len,
                            (h->flags & HDR_UNIQUE) ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE};
  }
  nghttp2_data_provider prd = {.source.ptr = x, .read_callback = read_req_body};
  bool no_body = xchg_up_req_body_eof(x);
  x->up = (struct xchg_up){0};
  int32_t id = nghttp2_submit_request(c->session, NULL, nva, n, no_body ? NULL : &prd, x);
  if (id < 0) {
    log_warn("upstream %s: cannot start a stream: %s", c->server->name, nghttp2_strerror(id));
    if (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) up_conn_drain(c);
    return -1;
  }
  x->up.conn = c;
  x->up.stream_id = id;
  x->server = c->server;
  h3g_copy_str(x->upstream_addr, sizeof x->upstream_addr, c->server->addr_text);
  TAILQ_INSERT_TAIL(&impl(c)->streams.head, x, up_link);
  c->n_streams++;
  c->server->outstanding++;
  x->state = XS_SENT;
  xchg_arm_response_timer(x);
  want_flush(c);
  return 0;
}

void up_conn_reset_stream(struct xchg *x) {
  struct up_conn *c = x->up.conn;
  if (c == NULL) return;
  nghttp2_session_set_stream_user_data(c->session, x->up.stream_id, NULL);
  if (c->state != UC_CLOSED)
    nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, x->up.stream_id, NGHTTP2_CANCEL);
  stream_gone(c, x);
  x->up = (struct xchg_up){0};
  if (c->server) {
    up_server_stream_done(c->server, true);
    up_server_settle(c->server);
  }
  want_flush(c);
}

void up_conn_resume_stream(struct xchg *x) {
  struct up_conn *c = x->up.conn;
  if (c == NULL || !x->up.body_deferred) return;
  x->up.body_deferred = false;
  nghttp2_session_resume_data(c->session, x->up.stream_id);
  want_flush(c);
}

void up_conn_consume(struct xchg *x, size_t n) {
  struct up_conn *c = x->up.conn;
  if (c == NULL || c->state == UC_CLOSED) return;
  nghttp2_session_consume_stream(c->session, x->up.stream_id, n);
  want_flush(c);
}
