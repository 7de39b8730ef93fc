/* The worker's HTTP/2 (h2c, prior knowledge) protocol module on nghttp2.
 *
 * nghttp2 callbacks are thin: each finds its stream and makes one call on
 * the ASGI bridge. Sending happens only in produce(), from the server's
 * flush pass, never inside a callback (nghttp2 forbids re-entry).
 *
 * Flow control: the connection window is returned as soon as bytes arrive
 * (one slow stream must not starve the others); a stream's window only as
 * the app consumes its body, so a fast uploader is held back by the window.
 *
 * Table of contents:
 *   per-stream flags
 *   nghttp2 callbacks (begin headers, header, frame recv, data, close, send)
 *   response: head submission and the data source
 *   proto ops
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <nghttp2/nghttp2.h>

#include "asgi.h"
#include "conn.h"
#include "h2_guard.h"
#include "http_date.h"
#include "http_status.h"
#include "log.h"
#include "server.h"
#include "ws_frame.h"

struct h2_conn {
  nghttp2_session *session;
  struct h2_abuse abuse;
  struct asgi_stream_list streams; /* open streams we hold a reference to */
  bool notice_sent;       /* the graceful stop's first GOAWAY (2^31-1) and its PING */
  bool goaway_sent;       /* the final one, naming goaway_last_id */
  int32_t goaway_last_id; /* the last stream our final GOAWAY lets through */
};

/* The opaque data of the PING sent with the shutdown notice: its ACK says
 * the peer has read the notice (h2_shutdown). */
static const uint8_t NOTICE_PING[8] = {'h', '3', 'g', '-', 's', 't', 'o', 'p'};
static void final_goaway(struct conn *c);

/* Per-stream protocol state kept in the stream's proto_data word. */
enum {
  H2S_HEADERS_TOO_LARGE = 1 << 0,
  H2S_BAD_REQUEST = 1 << 1,
  H2S_DATA_DEFERRED = 1 << 2, /* the data source said DEFERRED: resume on new data */
  H2S_CONNECT = 1 << 3,       /* :method CONNECT */
  H2S_WEBSOCKET = 1 << 4,     /* :protocol websocket (RFC 8441) */
  H2S_WS_VERSION = 1 << 5,    /* a sec-websocket-version field came */
  H2S_WS_VERSION_13 = 1 << 6, /* ... and it was the only one and said 13 */
  H2S_HEAD_DONE = 1 << 7,     /* its header block ended (request_headers_done) */
};

static unsigned stream_flags(struct asgi_stream *s) {
  return (unsigned)(uintptr_t)asgi_stream_proto_data(s);
}
static void stream_set_flag(struct asgi_stream *s, unsigned f) {
  asgi_stream_set_proto_data(s, (void *)(uintptr_t)(stream_flags(s) | f));
}
static void stream_clear_flag(struct asgi_stream *s, unsigned f) {
  asgi_stream_set_proto_data(s, (void *)(uintptr_t)(stream_flags(s) & ~f));
}

static int h2_submit_trailers(nghttp2_session *session, int32_t id, PyObject *trailers);

static struct h2_conn *h2(struct conn *c) { return c->proto_data; }

static struct asgi_stream *find_stream(nghttp2_session *session, int32_t id) {
  return nghttp2_session_get_stream_user_data(session, id);
}

/* ---------------------------------------------------------------------------
 * Callbacks.
 */
/* RFC 8441 5 keeps RFC 6455's version check: one Sec-WebSocket-Version,
 * 13 (h1_server checks HTTP/1.1 handshakes with ws_handshake_status). */
static void note_ws_version(struct asgi_stream *s, const char *v, size_t vlen) {
  if (stream_flags(s) & H2S_WS_VERSION) {
    stream_clear_flag(s, H2S_WS_VERSION_13);
    return;
  }
  stream_set_flag(s, H2S_WS_VERSION);
  if (ws_version_is_ours(v, vlen)) stream_set_flag(s, H2S_WS_VERSION_13);
}

/* 0, or how a WebSocket's extended CONNECT is refused for its version. */
static int ws_version_refusal(unsigned flags) {
  return !(flags & H2S_WS_VERSION) ? 400 : !(flags & H2S_WS_VERSION_13) ? 426 : 0;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
  struct conn *c = user;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  struct h2_conn *h = h2(c);
  if (h->goaway_sent && frame->hd.stream_id > h->goaway_last_id) {
    /* Read after our GOAWAY was queued and before it left: the GOAWAY
     * tells the gateway this stream was never processed, and it runs it
     * on another worker. The app must not see it (a POST would run twice).
     * nghttp2 ignores such streams only once the GOAWAY is out. */
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_REFUSED_STREAM);
    conn_want_flush(c);
    return 0;
  }
  struct asgi_stream *s = asgi_stream_new(c, frame->hd.stream_id, "2");
  if (s == NULL) {
    PyErr_Clear();
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s);
  asgi_stream_list_add(&h2(c)->streams, s);
  c->active_streams++;
  c->head_since_ms = server_now_ms(); /* one header block at a time (RFC 9113 6.10) */
  return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *user) {
  (void)flags;
  (void)user;
  struct asgi_stream *s = find_stream(session, frame->hd.stream_id);
  if (s == NULL || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0; /* trailers: ignored */
  if (stream_flags(s) & (H2S_HEADERS_TOO_LARGE | H2S_BAD_REQUEST)) return 0;
  if (asgi_stream_header_bytes(s) + nlen + vlen > server_config()->max_header_bytes) {
    stream_set_flag(s, H2S_HEADERS_TOO_LARGE);
    return 0;
  }
  const char *n = (const char *)name, *v = (const char *)value;
  int rc;
  if (nlen > 0 && n[0] == ':') {
    if (nlen == 7 && memcmp(n, ":method", 7) == 0) {
      if (vlen == 7 && memcmp(v, "CONNECT", 7) == 0) stream_set_flag(s, H2S_CONNECT);
      rc = asgi_stream_set_method(s, v, vlen);
    } else if (nlen == 9 && memcmp(n, ":protocol", 9) == 0) {
      /* nghttp2 lets :protocol through only with CONNECT, as RFC 8441 says */
      if (vlen == 9 && memcmp(v, "websocket", 9) == 0) stream_set_flag(s, H2S_WEBSOCKET);
      rc = 0;
    }
    else if (nlen == 5 && memcmp(n, ":path", 5) == 0)
      rc = asgi_stream_set_target(s, v, vlen);
    else if (nlen == 7 && memcmp(n, ":scheme", 7) == 0)
      rc = asgi_stream_set_scheme(s, v, vlen);
    else if (nlen == 10 && memcmp(n, ":authority", 10) == 0)
      rc = asgi_stream_set_authority(s, v, vlen);
    else
      rc = 0;
  } else {
    if (nlen == 21 && memcmp(n, "sec-websocket-version", 21) == 0) note_ws_version(s, v, vlen);
    rc = asgi_stream_add_header(s, n, nlen, v, vlen);
  }
  if (rc != 0) {
    PyErr_Clear();
    stream_set_flag(s, H2S_BAD_REQUEST);
  }
  return 0;
}

static void request_headers_done(struct conn *c, struct asgi_stream *s, bool end_stream) {
  c->head_since_ms = 0;
  stream_set_flag(s, H2S_HEAD_DONE);
  unsigned f = stream_flags(s);
  if (f & H2S_HEADERS_TOO_LARGE) {
    asgi_stream_respond_error(s, 431, "Request Header Fields Too Large\n");
    return;
  }
  if (f & H2S_BAD_REQUEST) {
    asgi_stream_respond_error(s, 400, "Bad Request\n");
    return;
  }
  (void)c;
  if (f & H2S_CONNECT) {
    /* Extended CONNECT for WebSockets; plain CONNECT tunnels are not ours. */
    if (!(f & H2S_WEBSOCKET)) {
      asgi_stream_respond_error(s, 501, "Not Implemented: only WebSocket CONNECT\n");
      return;
    }
    int refused = ws_version_refusal(f);
    if (refused) {
      asgi_stream_respond_refusal(s, refused, ws_refusal_reason(refused), ws_refusal_field(refused), WS_VERSION);
      return;
    }
    if (asgi_stream_set_websocket(s) != 0) {
      PyErr_Clear();
      asgi_stream_respond_error(s, 503, "Service Unavailable\n");
      return;
    }
  }
  if (end_stream) asgi_stream_on_body_end(s);
  asgi_stream_start_app(s);
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
  struct conn *c = user;
  if (h2_abuse_charge(&h2(c)->abuse, frame, server_now_ms)) {
    log_warn("conn %llu: too many control frames: GOAWAY ENHANCE_YOUR_CALM",
             (unsigned long long)c->id);
    nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM);
    return 0;
  }
  if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK) &&
      memcmp(frame->ping.opaque_data, NOTICE_PING, sizeof NOTICE_PING) == 0) {
    final_goaway(c);
    return 0;
  }
  struct asgi_stream *s = frame->hd.stream_id ? find_stream(session, frame->hd.stream_id) : NULL;
  if (s == NULL) return 0;
  bool end_stream = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
  switch (frame->hd.type) {
  case NGHTTP2_HEADERS:
    if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
      request_headers_done(c, s, end_stream);
    else if (end_stream)
      asgi_stream_on_body_end(s); /* request trailers end the body */
    break;
  case NGHTTP2_DATA:
    if (end_stream) asgi_stream_on_body_end(s);
    break;
  default:
    break;
  }
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user) {
  (void)flags;
  (void)user;
  /* The connection's credit comes back at once; the stream's when the app reads. */
  nghttp2_session_consume_connection(session, len);
  struct asgi_stream *s = find_stream(session, id);
  if (s == NULL) return 0;
  if (asgi_stream_app_finished(s) || (asgi_stream_head_sent(s) && asgi_stream_body_eof(s))) {
    nghttp2_session_consume_stream(session, id, len); /* nobody will read it */
    return 0;
  }
  if (asgi_stream_on_body(s, data, len) != 0) {
    PyErr_Clear();
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t id, uint32_t error_code,
                           void *user) {
  (void)error_code;
  struct conn *c = user;
  struct asgi_stream *s = find_stream(session, id);
  if (s == NULL) return 0;
  /* Reset in its header block (a malformed field): that block is over, and
   * its clock must not end the connection and every stream on it later. */
  if (!(stream_flags(s) & H2S_HEAD_DONE)) c->head_since_ms = 0;
  nghttp2_session_set_stream_user_data(session, id, NULL);
  asgi_stream_list_remove(&h2(c)->streams, s);
  c->active_streams--;
  asgi_stream_release(s);
  return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user) {
  struct conn *c = user;
  if (frame->hd.type == NGHTTP2_DATA) h2_abuse_refund(&h2(c)->abuse, frame);
  if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  struct asgi_stream *s = find_stream(session, frame->hd.stream_id);
  if (s == NULL) return 0;
  asgi_stream_response_done(s);
  /* Answered before the request body ended: tell the client to stop
   * sending (RFC 9113 8.1). */
  if (nghttp2_session_get_stream_remote_close(session, frame->hd.stream_id) == 0 &&
      !asgi_stream_ws_accepted(s)) /* a WebSocket client's close frame may be on its way */
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
  return 0;
}

/* ---------------------------------------------------------------------------
 * Response.
 */
static bool response_has_no_body(struct asgi_stream *s) {
  int status = asgi_stream_status(s);
  return asgi_stream_is_head(s) || status == 204 || status == 304 || status < 200;
}

static ssize_t read_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user) {
  (void)user;
  struct asgi_stream *s = source->ptr;
  size_t n = asgi_stream_read_body(s, buf, length);
  if (asgi_stream_body_eof(s)) {
    if (!asgi_stream_wants_trailers(s)) {
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
      return (ssize_t)n;
    }
    PyObject *trailers = asgi_stream_trailers(s);
    if (trailers == NULL) {
      if (n > 0) return (ssize_t)n;
      stream_set_flag(s, H2S_DATA_DEFERRED);
      return NGHTTP2_ERR_DEFERRED;
    }
    *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    if (h2_submit_trailers(session, id, trailers) != 0)
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return (ssize_t)n;
  }
  if (n == 0) {
    stream_set_flag(s, H2S_DATA_DEFERRED);
    return NGHTTP2_ERR_DEFERRED;
  }
  return (ssize_t)n;
}

/* Connection-specific fields have no place in HTTP/2 (RFC 9113 8.2.2). */
static bool hop_by_hop(const char *name, size_t len) {
  switch (len) {
  case 2:
    return memcmp(name, "te", 2) == 0;
  case 7:
    return memcmp(name, "upgrade", 7) == 0;
  case 10:
    return memcmp(name, "connection", 10) == 0 || memcmp(name, "keep-alive", 10) == 0;
  case 16:
    return memcmp(name, "proxy-connection", 16) == 0;
  case 17:
    return memcmp(name, "transfer-encoding", 17) == 0;
  }
  return false;
}

/* Room for any field list send() let through (ASGI_HEAD_MAX, at least 32
 * bytes a field), and :status. Single-threaded, and nghttp2 copies what
 * it is given, so one set serves every submit. */
enum { MAX_RESPONSE_FIELDS = ASGI_HEAD_MAX / 32 + 1 };
static nghttp2_nv out_nva[MAX_RESPONSE_FIELDS + 2]; /* and a Date of ours */
static char out_names[ASGI_HEAD_MAX]; /* the names, lower-cased */

/* Turns an ASGI header list into nghttp2 name/value pairs from nva on,
 * with lower-case names (Django, for one, sends "Content-Type"). Returns
 * the count, or -1 for a list that does not fit (send() refuses those). */
static ssize_t build_nv(PyObject *list, nghttp2_nv *nva) {
  PyObject *seq = PySequence_Fast(list, "headers must be a sequence");
  if (seq == NULL) return -1;
  Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
  size_t n = 0, used = 0, max = MAX_RESPONSE_FIELDS + 1 - (size_t)(nva - out_nva);
  for (Py_ssize_t i = 0; i < count; i++) {
    const char *name, *value;
    Py_ssize_t nl, vl;
    if (asgi_header_item(PySequence_Fast_GET_ITEM(seq, i), &name, &nl, &value, &vl) != 0 ||
        n == max || used + (size_t)nl > sizeof out_names) {
      Py_DECREF(seq);
      return -1;
    }
    char *lname = out_names + used;
    for (Py_ssize_t j = 0; j < nl; j++) {
      char ch = name[j];
      lname[j] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    used += (size_t)nl;
    if (hop_by_hop(lname, (size_t)nl)) continue;
    nva[n++] = (nghttp2_nv){(uint8_t *)lname, (uint8_t *)value, (size_t)nl, (size_t)vl,
                            NGHTTP2_NV_FLAG_NONE};
  }
  /* seq (and the bytes it holds) stays alive in the stream until submit copies */
  Py_DECREF(seq);
  return (ssize_t)n;
}

static int h2_submit_trailers(nghttp2_session *session, int32_t id, PyObject *trailers) {
  ssize_t n = build_nv(trailers, out_nva);
  if (n < 0) {
    PyErr_Clear();
    return -1;
  }
  return nghttp2_submit_trailer(session, id, out_nva, (size_t)n);
}

static void submit_head(struct conn *c, struct asgi_stream *s) {
  nghttp2_session *session = h2(c)->session;
  nghttp2_nv *nva = out_nva;
  char status[4];
  http_status_digits(asgi_stream_status(s), status); /* send_start checked 200..999 */
  nva[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE};
  ssize_t n = build_nv(asgi_stream_headers(s), nva + 1);
  if (n < 0) {
    PyErr_Clear();
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, asgi_stream_id(s),
                              NGHTTP2_INTERNAL_ERROR);
    return;
  }
  if (!asgi_stream_has_date(s))
    nva[++n] = (nghttp2_nv){(uint8_t *)"date", (uint8_t *)h3g_http_date(), 4, HTTP_DATE_LEN,
                            NGHTTP2_NV_FLAG_NONE};
  asgi_stream_mark_head_sent(s);
  bool no_body = response_has_no_body(s);
  bool ends_now = no_body || (asgi_stream_body_eof(s) && !asgi_stream_wants_trailers(s));
  nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_body};
  int rc = nghttp2_submit_response(session, asgi_stream_id(s), nva, (size_t)n + 1,
                                   ends_now ? NULL : &prd);
  if (rc != 0) {
    log_warn("conn %llu stream %d: submit response: %s", (unsigned long long)c->id,
             asgi_stream_id(s), nghttp2_strerror(rc));
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, asgi_stream_id(s), NGHTTP2_INTERNAL_ERROR);
    return;
  }
  if (no_body) {
    /* Drop whatever the app sends for a HEAD, 204 or 304. */
    uint8_t sink[4096];
    while (asgi_stream_read_body(s, sink, sizeof sink) > 0) {
    }
  }
}

static void h2_resume_send(struct conn *c, struct asgi_stream *s) {
  if (!asgi_stream_head_sent(s)) {
    if (!asgi_stream_head_ready(s)) return;
    submit_head(c, s);
  } else if (response_has_no_body(s)) {
    uint8_t sink[4096];
    while (asgi_stream_read_body(s, sink, sizeof sink) > 0) {
    }
  } else if (stream_flags(s) & H2S_DATA_DEFERRED) {
    stream_clear_flag(s, H2S_DATA_DEFERRED);
    nghttp2_session_resume_data(h2(c)->session, asgi_stream_id(s));
  }
  conn_want_flush(c);
}

/* ---------------------------------------------------------------------------
 * Proto ops.
 */
static void h2_on_read(struct conn *c, const uint8_t *data, size_t len) {
  nghttp2_session *session = h2(c)->session;
  ssize_t rc = nghttp2_session_mem_recv(session, data, len);
  if (rc < 0) {
    log_debug("conn %llu: HTTP/2 error: %s", (unsigned long long)c->id, nghttp2_strerror((int)rc));
    /* A flood (nghttp2's own outbound-ACK limit) is abuse like any other. */
    if (rc != NGHTTP2_ERR_BAD_CLIENT_MAGIC)
      nghttp2_session_terminate_session(session, rc == NGHTTP2_ERR_FLOODED ? NGHTTP2_ENHANCE_YOUR_CALM
                                                                           : NGHTTP2_PROTOCOL_ERROR);
    c->proto->produce(c); /* the GOAWAY, if nghttp2 queued one */
    conn_close(c, false);
  }
}

static void h2_produce(struct conn *c) {
  nghttp2_session *session = h2(c)->session;
  while (bytebuf_size(&c->out) < 256 * 1024) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(session, &data);
    if (n < 0) {
      log_debug("conn %llu: nghttp2 send: %s", (unsigned long long)c->id,
                nghttp2_strerror((int)n));
      conn_close(c, true);
      return;
    }
    if (n == 0) break;
    if (bytebuf_append(&c->out, data, (size_t)n) != 0) {
      conn_close(c, true);
      return;
    }
  }
  if (!nghttp2_session_want_read(session) && !nghttp2_session_want_write(session))
    conn_close(c, false);
}

static void h2_consumed(struct conn *c, struct asgi_stream *s, size_t n) {
  nghttp2_session_consume_stream(h2(c)->session, asgi_stream_id(s), n);
  conn_want_flush(c);
}

static void h2_send_continue(struct conn *c, struct asgi_stream *s) {
  nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)"100", 7, 3, NGHTTP2_NV_FLAG_NONE};
  nghttp2_submit_headers(h2(c)->session, NGHTTP2_FLAG_NONE, asgi_stream_id(s), NULL, &nv, 1,
                         NULL);
  conn_want_flush(c);
}

static void h2_abort_stream(struct conn *c, struct asgi_stream *s) {
  nghttp2_submit_rst_stream(h2(c)->session, NGHTTP2_FLAG_NONE, asgi_stream_id(s),
                            NGHTTP2_INTERNAL_ERROR);
  conn_want_flush(c);
}

static void h2_app_finished(struct conn *c, struct asgi_stream *s) {
  (void)s;
  conn_want_flush(c);
}

/* The GOAWAY that names the last stream the app saw. Later streams are
 * refused (on_begin_headers, then nghttp2) and the gateway retries them
 * elsewhere; but one whose upload went past what the gateway keeps for a
 * retry cannot be, and got a 502 (9 of 600 5 MB uploads over three
 * rolling restarts). So it comes only once the peer has read the notice
 * and opens no more streams here. */
static void final_goaway(struct conn *c) {
  struct h2_conn *h = h2(c);
  if (h->goaway_sent) return;
  h->goaway_sent = true;
  h->goaway_last_id = nghttp2_session_get_last_proc_stream_id(h->session);
  nghttp2_submit_goaway(h->session, NGHTTP2_FLAG_NONE, h->goaway_last_id, NGHTTP2_NO_ERROR, NULL, 0);
  conn_want_flush(c);
}

/* Graceful stop in two steps (RFC 9113 6.8), as the gateway's front does:
 * a GOAWAY that refuses nothing (2^31-1) and a PING; the PING's ACK comes
 * after the peer has read the GOAWAY, and then the final one goes out. A
 * peer that never answers is closed by the idle sweep or the graceful
 * timeout. */
static void h2_shutdown(struct conn *c) {
  struct h2_conn *h = h2(c);
  if (h->notice_sent || h->goaway_sent) return;
  h->notice_sent = true;
  if (nghttp2_submit_shutdown_notice(h->session) != 0 ||
      nghttp2_submit_ping(h->session, NGHTTP2_FLAG_NONE, NOTICE_PING) != 0)
    final_goaway(c);
  conn_want_flush(c);
}

/* nginx closes an HTTP/2 connection whose header block does not end in
 * time; a response cannot go out in the middle of the client's block. */
static void h2_head_timed_out(struct conn *c) {
  nghttp2_session_terminate_session(h2(c)->session, NGHTTP2_NO_ERROR);
  conn_want_flush(c);
}

static void h2_destroy(struct conn *c) {
  struct h2_conn *h = h2(c);
  if (h == NULL) return;
  /* nghttp2_session_del reports nothing: release the open streams ourselves
   * so their apps see http.disconnect. */
  nghttp2_session_del(h->session);
  asgi_stream_list_release_all(&h->streams);
  free(h);
  c->proto_data = NULL;
}

const struct proto_ops h2_proto_ops = {
    .name = "h2",
    .on_read = h2_on_read,
    .produce = h2_produce,
    .resume_send = h2_resume_send,
    .consumed = h2_consumed,
    .send_continue = h2_send_continue,
    .abort_stream = h2_abort_stream,
    .app_finished = h2_app_finished,
    .head_timed_out = h2_head_timed_out,
    .shutdown = h2_shutdown,
    .destroy = h2_destroy,
};

int h2_conn_start(struct conn *c) {
  const struct worker_config *cfg = server_config();
  c->head_since_ms = 0; /* counted per header block from here */
  struct h2_conn *h = calloc(1, sizeof *h);
  if (h == NULL) return -ENOMEM;
  nghttp2_session_callbacks *cbs;
  nghttp2_option *opt;
  if (nghttp2_session_callbacks_new(&cbs) != 0) goto err_free;
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, h2_guard_reset_unsent_headers);
  if (h2_guard_option_new(&opt, c->peer_trusted) != 0) {
    nghttp2_session_callbacks_del(cbs);
    goto err_free;
  }
  int rc = nghttp2_session_server_new2(&h->session, cbs, c, opt);
  nghttp2_session_callbacks_del(cbs);
  nghttp2_option_del(opt);
  if (rc != 0) goto err_free;
  struct h2_server_settings settings = {
      .max_concurrent_streams = cfg->h2_max_concurrent_streams,
      .stream_window = cfg->h2_stream_window,
      .conn_window = cfg->h2_conn_window,
      .max_frame_size = cfg->h2_max_frame_size,
      .max_header_list = (uint32_t)cfg->max_header_bytes,
      .worker_id = cfg->worker_index + 1,
      .worker_count = cfg->worker_count,
      .enable_connect_protocol = true, /* WebSockets over HTTP/2 (RFC 8441) */
  };
  if (h2_guard_submit_settings(h->session, &settings) != 0) {
    nghttp2_session_del(h->session);
    goto err_free;
  }
  h2_abuse_init(&h->abuse);
  c->proto = &h2_proto_ops;
  c->proto_data = h;
  return 0;

err_free:
  free(h);
  return -ENOMEM;
}
