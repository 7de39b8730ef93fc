/* The worker's HTTP/1.1 protocol module, for health checks, curl and plain
 * clients on the same port as h2c. One request at a time: a pipelined
 * request waits (its bytes kept, reading paused when they pile up) until
 * the previous response is complete, so answers go out in order.
 *
 * Table of contents:
 *   parser callbacks (shared/h1_parser: llhttp + guard + limits)
 *   input: parsing and pipelining
 *   response: head, framing, body, trailers
 *   proto ops
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "asgi.h"
#include "conn.h"
#include "h1_parser.h"
#include "http_date.h"
#include "http_status.h"
#include "log.h"
#include "server.h"
#include "ws_frame.h"

enum {
  PENDING_LIMIT = 64 * 1024, /* pipelined bytes kept before reading pauses */
  BODY_CHUNK = 64 * 1024,
  OUT_HIGH_WATER = 256 * 1024,
};

struct h1_conn {
  struct conn *conn;
  struct h1_parser parser;
  struct asgi_stream *cur; /* the request being read or answered */
  struct bytebuf pending;  /* later pipelined requests */
  uint8_t version_minor;
  bool keep_alive;
  bool request_done;
  bool head_written;
  bool chunked;
  bool close_delimited;
  bool no_body;
  bool trailers_out; /* chunked and the client accepts trailers */
  bool te_trailers;
  bool app_length;        /* the app's response has its own Content-Length */
  struct ws_handshake ws; /* the request's WebSocket fields */
  bool websocket;         /* the request is a handshake: bytes after the head are frames */
  bool head_in;           /* the current request's head is complete */
  uint32_t seq;
};

static struct h1_conn *h1(struct conn *c) { return c->proto_data; }


/* ---------------------------------------------------------------------------
 * Parser callbacks.
 */
static int ensure_stream(struct h1_conn *h) {
  if (h->cur) return 0;
  h->cur = asgi_stream_new(h->conn, (int32_t)++h->seq, "1.1");
  if (h->cur == NULL) {
    PyErr_Clear();
    return 503;
  }
  h->request_done = h->head_written = h->chunked = h->close_delimited = false;
  h->no_body = h->trailers_out = h->te_trailers = false;
  h->websocket = false;
  memset(&h->ws, 0, sizeof h->ws);
  h->conn->active_streams++;
  return 0;
}

static int on_header(void *ctx, const char *name, size_t nlen, const char *value, size_t vlen) {
  struct h1_conn *h = ctx;
  int rc = ensure_stream(h);
  if (rc) return rc;
  if (nlen >= 7 && (name[0] == 'u' || name[0] == 's')) ws_handshake_field(&h->ws, name, nlen, value, vlen);
  if (asgi_stream_add_header(h->cur, name, nlen, value, vlen) != 0) {
    PyErr_Clear();
    return 503;
  }
  return 0;
}

/* RFC 9112 3.2: a path, or "*" for OPTIONS only (what HTTP/2 and HTTP/3
 * clients are held to by nghttp2). */
static int check_target(const struct h1_request_head *head, const char *target, size_t len) {
  if (len == 1 && target[0] == '*')
    return head->method_len == 7 && memcmp(head->method, "OPTIONS", 7) == 0 ? 0 : 400;
  return len > 0 && target[0] == '/' ? 0 : 400;
}

/* A WebSocket handshake: the app decides (accept, close or an HTTP
 * response); the connection ends with the WebSocket either way. */
static int begin_websocket(struct h1_conn *h, const struct h1_request_head *head) {
  if (head->method_len != 3 || memcmp(head->method, "GET", 3) != 0) {
    h1_parser_refuse(&h->parser, "a WebSocket handshake must be a GET");
    return 400;
  }
  int refused = ws_handshake_status(&h->ws); /* RFC 6455 4.2.1 */
  if (refused) {
    h1_parser_refuse(&h->parser, ws_refusal_reason(refused));
    return refused;
  }
  if (asgi_stream_set_websocket(h->cur) != 0) {
    PyErr_Clear();
    return 503;
  }
  h->websocket = true;
  h->keep_alive = false;
  return 0;
}

static int on_head(void *ctx, const struct h1_request_head *head) {
  struct h1_conn *h = ctx;
  int rc = ensure_stream(h);
  if (rc) return rc;
  h->head_in = true;
  h->conn->head_since_ms = 0;
  struct asgi_stream *s = h->cur;
  h->version_minor = head->version_minor;
  h->keep_alive = head->keep_alive && !h->conn->draining;
  if (head->method_len == 7 && memcmp(head->method, "CONNECT", 7) == 0) {
    h1_parser_refuse(&h->parser, "CONNECT tunnels are not served here");
    return 405;
  }
  const char *target = head->target, *authority = NULL;
  size_t tlen = head->target_len, alen = 0;
  /* absolute-form: the rest is the target ("" or "?q" stand for "/") */
  bool absolute = h1_absolute_form(target, tlen, &authority, &alen, &target, &tlen);
  int status = absolute && (tlen == 0 || target[0] == '?') ? 0 : check_target(head, target, tlen);
  if (status) return status;
  /* RFC 9112 3.2: one Host, and an HTTP/1.1 request must have it (an
   * absolute-form target's authority stands in for it) */
  unsigned hosts = asgi_stream_host_fields(s);
  if (hosts > 1 || (hosts == 0 && head->version_minor >= 1 && authority == NULL)) {
    h1_parser_refuse(&h->parser,
                     hosts > 1 ? "more than one Host field" : "an HTTP/1.1 request needs a Host field");
    return 400;
  }
  if (asgi_stream_set_method(s, head->method, head->method_len) != 0 ||
      asgi_stream_set_target(s, target, tlen) != 0 ||
      (authority && alen > 0 && asgi_stream_override_host(s, authority, alen) != 0)) {
    PyErr_Clear();
    return 503;
  }
  if (asgi_stream_header_bytes(s) > server_config()->max_header_bytes) return 431;
  if (head->upgrade && h->ws.upgrade) {
    status = begin_websocket(h, head);
    if (status) return status;
    asgi_stream_start_app(s);
    return 0;
  }
  if (!head->chunked && (!head->has_content_length || head->content_length == 0))
    h->request_done = true; /* no body: llhttp ends the message right away */
  if (h->request_done) asgi_stream_on_body_end(s);
  asgi_stream_start_app(s);
  return 0;
}

static int on_body(void *ctx, const char *data, size_t len) {
  struct h1_conn *h = ctx;
  if (h->cur == NULL) return 0;
  if (asgi_stream_on_body(h->cur, (const uint8_t *)data, len) != 0) {
    PyErr_Clear();
    return 503;
  }
  /* No window in HTTP/1.1: backpressure is not reading the socket. */
  if (asgi_stream_buffered_body(h->cur) > asgi_env.body_buffer_limit) conn_pause_read(h->conn);
  return 0;
}

static int on_end(void *ctx) {
  struct h1_conn *h = ctx;
  if (h->websocket) return 0; /* the frames follow the head */
  if (h->cur && !h->request_done) {
    h->request_done = true;
    asgi_stream_on_body_end(h->cur);
  }
  return 0;
}

static const struct h1_parser_ops parser_ops = {
    .on_header = on_header,
    .on_head = on_head,
    .on_body = on_body,
    .on_end = on_end,
};

/* ---------------------------------------------------------------------------
 * Input.
 */
static void write_error_and_close(struct conn *c, int status, const char *reason) {
  struct h1_conn *h = h1(c);
  if (h->cur && asgi_stream_head_sent(h->cur)) {
    conn_close(c, false);
    return;
  }
  char body[256], head[256];
  int blen = snprintf(body, sizeof body, "%s: %s\n", http_reason(status), reason);
  if (blen < 0 || blen >= (int)sizeof body) blen = (int)sizeof body - 1;
  int hlen = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n%s"
                      "content-length: %d\r\ndate: %s\r\nconnection: close\r\n\r\n",
                      status, http_reason(status), ws_refusal_field_line(status), blen, h3g_http_date());
  bytebuf_append(&c->out, head, (size_t)hlen);
  bytebuf_append(&c->out, body, (size_t)blen);
  if (h->cur) {
    struct asgi_stream *s = h->cur;
    h->cur = NULL;
    c->active_streams--;
    asgi_stream_release(s);
  }
  conn_close(c, false);
}

/* After a WebSocket handshake the socket's bytes are frames for the bridge. */
static void tunnel_input(struct conn *c, const uint8_t *data, size_t len) {
  struct h1_conn *h = h1(c);
  if (len == 0 || h->cur == NULL) return;
  if (asgi_stream_on_body(h->cur, data, len) != 0) {
    PyErr_Clear();
    conn_close(c, true);
    return;
  }
  if (asgi_stream_buffered_body(h->cur) > asgi_env.body_buffer_limit) conn_pause_read(c);
}

static void parse_input(struct conn *c, const uint8_t *data, size_t len) {
  struct h1_conn *h = h1(c);
  if (len > 0 && !h->head_in && c->head_since_ms == 0) c->head_since_ms = server_now_ms();
  while (len > 0 && c->state == CONN_OPEN) {
    /* A pipelined request waits (below) until this response is complete. */
    if (h1_parser_message_done(&h->parser)) break;
    ssize_t n = h1_parser_feed(&h->parser, (const char *)data, len);
    if (n < 0) {
      log_debug("conn %llu: bad HTTP/1.1 request: %s", (unsigned long long)c->id,
                h->parser.error_reason);
      write_error_and_close(c, h->parser.error_status, h->parser.error_reason);
      break;
    }
    data += n;
    len -= (size_t)n;
  }
  if (h->websocket && h1_parser_message_done(&h->parser)) {
    tunnel_input(c, data, len);
    return;
  }
  if (len > 0 && c->state == CONN_OPEN) {
    bytebuf_append(&h->pending, data, len);
    if (bytebuf_size(&h->pending) > PENDING_LIMIT) conn_pause_read(c);
  }
}

static void h1_on_read(struct conn *c, const uint8_t *data, size_t len) {
  struct h1_conn *h = h1(c);
  if (h->websocket && h1_parser_message_done(&h->parser)) {
    tunnel_input(c, data, len);
    return;
  }
  if (bytebuf_size(&h->pending) > 0 || h1_parser_message_done(&h->parser)) {
    bytebuf_append(&h->pending, data, len);
    if (bytebuf_size(&h->pending) > PENDING_LIMIT) conn_pause_read(c);
    return;
  }
  parse_input(c, data, len);
}

/* The response is out: release the request and start on the next one. */
static void finish_exchange(struct conn *c) {
  struct h1_conn *h = h1(c);
  struct asgi_stream *s = h->cur;
  asgi_stream_response_done(s);
  if (!h->keep_alive || !h->request_done) {
    /* A body the app did not read would have to be drained first; closing
     * is what uvicorn and nginx do too. */
    conn_close(c, false);
    return;
  }
  h->cur = NULL;
  c->active_streams--;
  asgi_stream_release(s);
  h1_parser_next(&h->parser);
  h->head_in = false;
  if (bytebuf_size(&h->pending) > 0) {
    struct bytebuf rest = h->pending;
    memset(&h->pending, 0, sizeof h->pending);
    parse_input(c, bytebuf_head(&rest), bytebuf_size(&rest));
    bytebuf_free(&rest);
  }
  if (c->read_paused && bytebuf_size(&h->pending) <= PENDING_LIMIT) conn_resume_read(c);
}

/* ---------------------------------------------------------------------------
 * Response.
 */
/* A header name or value equals lit, case aside. */
static bool text_is_ci(const char *v, Py_ssize_t vl, const char *lit) {
  size_t n = strlen(lit);
  return (size_t)vl == n && strncasecmp(v, lit, n) == 0;
}

/* What write_fields does with one field of the app's list: write it, or
 * leave it out (a filter may also take note of it). */
typedef bool (*field_filter)(struct h1_conn *h, const char *name, Py_ssize_t nl, const char *value,
                             Py_ssize_t vl);

/* Appends "name: value" lines for an ASGI header list. 0, or -1 with a
 * Python error when the list is malformed. */
static int write_fields(struct h1_conn *h, struct bytebuf *out, PyObject *list, field_filter keep) {
  PyObject *seq = PySequence_Fast(list, "headers must be a sequence");
  if (seq == NULL) return -1;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
    const char *name, *value;
    Py_ssize_t nl, vl;
    if (asgi_header_item(PySequence_Fast_GET_ITEM(seq, i), &name, &nl, &value, &vl) != 0) {
      Py_DECREF(seq);
      return -1;
    }
    if (keep && !keep(h, name, nl, value, vl)) continue;
    bytebuf_append(out, name, (size_t)nl);
    bytebuf_append(out, ": ", 2);
    bytebuf_append(out, value, (size_t)vl);
    bytebuf_append(out, "\r\n", 2);
  }
  Py_DECREF(seq);
  return 0;
}

/* After 101 the framing fields are ours alone. */
static bool keep_for_websocket(struct h1_conn *h, const char *name, Py_ssize_t nl,
                               const char *value, Py_ssize_t vl) {
  (void)h, (void)value, (void)vl;
  return !text_is_ci(name, nl, "upgrade") && !text_is_ci(name, nl, "connection") &&
         !text_is_ci(name, nl, "content-length") && !text_is_ci(name, nl, "transfer-encoding");
}

/* Transfer-Encoding is ours; Connection: close is noted, not copied. */
static bool keep_for_response(struct h1_conn *h, const char *name, Py_ssize_t nl,
                              const char *value, Py_ssize_t vl) {
  if (text_is_ci(name, nl, "transfer-encoding")) return false;
  if (text_is_ci(name, nl, "connection")) {
    if (text_is_ci(value, vl, "close")) h->keep_alive = false;
    return false;
  }
  if (text_is_ci(name, nl, "content-length")) h->app_length = true;
  return true;
}

/* 101 Switching Protocols; the app's fields follow ours. */
static int write_websocket_head(struct conn *c) {
  struct h1_conn *h = h1(c);
  struct asgi_stream *s = h->cur;
  struct bytebuf *out = &c->out;
  char accept[29];
  ws_accept_key(h->ws.key, strlen(h->ws.key), accept);
  char line[160];
  int n = snprintf(line, sizeof line,
                   "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                   "connection: Upgrade\r\nsec-websocket-accept: %s\r\n",
                   accept);
  bytebuf_append(out, line, (size_t)n);
  if (write_fields(h, out, asgi_stream_headers(s), keep_for_websocket) != 0) return -1;
  bytebuf_append(out, "\r\n", 2);
  h->close_delimited = true; /* frames, raw, until the connection ends */
  h->keep_alive = false;
  asgi_stream_mark_head_sent(s);
  h->head_written = true;
  return 0;
}

static void write_date(struct bytebuf *out) {
  bytebuf_append(out, "date: ", 6);
  bytebuf_append(out, h3g_http_date(), HTTP_DATE_LEN);
  bytebuf_append(out, "\r\n", 2);
}

static int write_head(struct conn *c) {
  struct h1_conn *h = h1(c);
  struct asgi_stream *s = h->cur;
  if (asgi_stream_ws_accepted(s)) return write_websocket_head(c);
  int status = asgi_stream_status(s);
  struct bytebuf *out = &c->out;
  char line[64];
  int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, http_reason(status));
  bytebuf_append(out, line, (size_t)n);

  h->app_length = false;
  if (write_fields(h, out, asgi_stream_headers(s), keep_for_response) != 0) return -1;
  if (!asgi_stream_has_date(s)) write_date(out);

  h->no_body = asgi_stream_is_head(s) || status == 204 || status == 304 || status < 200;
  if (!h->no_body && !h->app_length) {
    if (asgi_stream_body_eof(s) && !asgi_stream_wants_trailers(s)) {
      n = snprintf(line, sizeof line, "content-length: %zu\r\n", asgi_stream_queued_body(s));
      bytebuf_append(out, line, (size_t)n);
    } else if (h->version_minor >= 1) {
      h->chunked = true;
      bytebuf_append(out, "transfer-encoding: chunked\r\n", 28);
    } else {
      h->close_delimited = true;
      h->keep_alive = false;
    }
  }
  h->trailers_out = h->chunked && asgi_stream_wants_trailers(s);
  if (!h->keep_alive)
    bytebuf_append(out, "connection: close\r\n", 19);
  else if (h->version_minor == 0)
    bytebuf_append(out, "connection: keep-alive\r\n", 24);
  bytebuf_append(out, "\r\n", 2);
  asgi_stream_mark_head_sent(s);
  h->head_written = true;
  return 0;
}

static void write_body(struct conn *c) {
  struct h1_conn *h = h1(c);
  struct asgi_stream *s = h->cur;
  while (bytebuf_size(&c->out) < OUT_HIGH_WATER && asgi_stream_queued_body(s) > 0) {
    size_t want = asgi_stream_queued_body(s);
    if (want > BODY_CHUNK) want = BODY_CHUNK;
    if (h->no_body) {
      uint8_t sink[4096];
      asgi_stream_read_body(s, sink, want < sizeof sink ? want : sizeof sink);
      continue;
    }
    uint8_t *p = bytebuf_reserve(&c->out, want + 16);
    if (p == NULL) {
      conn_close(c, true);
      return;
    }
    size_t prefix = 0;
    if (h->chunked) prefix = (size_t)sprintf((char *)p, "%zx\r\n", want);
    size_t got = asgi_stream_read_body(s, p + prefix, want);
    c->out.len += prefix + got;
    if (h->chunked) bytebuf_append(&c->out, "\r\n", 2);
  }
}

static int write_trailers(struct conn *c) {
  struct h1_conn *h = h1(c);
  return write_fields(h, &c->out, asgi_stream_trailers(h->cur), NULL);
}

static void h1_produce(struct conn *c) {
  struct h1_conn *h = h1(c);
  struct asgi_stream *s = h->cur;
  if (s == NULL) return;
  if (!h->head_written) {
    if (!asgi_stream_head_ready(s)) return;
    if (write_head(c) != 0) {
      PyErr_Clear();
      write_error_and_close(c, 500, "invalid response headers");
      return;
    }
  }
  write_body(c);
  if (!asgi_stream_body_eof(s)) return;
  if (asgi_stream_wants_trailers(s) && asgi_stream_trailers(s) == NULL) return;
  if (h->chunked) {
    bytebuf_append(&c->out, "0\r\n", 3);
    if (h->trailers_out && write_trailers(c) != 0) PyErr_Clear();
    bytebuf_append(&c->out, "\r\n", 2);
  }
  if (h->close_delimited) h->keep_alive = false;
  finish_exchange(c);
}

/* ---------------------------------------------------------------------------
 * Proto ops.
 */
static void h1_resume_send(struct conn *c, struct asgi_stream *s) {
  (void)s;
  conn_want_flush(c);
}

static void h1_consumed(struct conn *c, struct asgi_stream *s, size_t n) {
  (void)n;
  if (c->read_paused && asgi_stream_buffered_body(s) < asgi_env.body_buffer_limit / 2 &&
      bytebuf_size(&h1(c)->pending) <= PENDING_LIMIT)
    conn_resume_read(c);
}

static void h1_send_continue(struct conn *c, struct asgi_stream *s) {
  (void)s;
  if (h1(c)->head_written) return;
  bytebuf_append(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
  conn_want_flush(c);
}

static void h1_abort_stream(struct conn *c, struct asgi_stream *s) {
  (void)s;
  /* The client sees the body cut short: that is the only signal HTTP/1.1 has. */
  conn_close(c, false);
}

static void h1_app_finished(struct conn *c, struct asgi_stream *s) {
  (void)s;
  conn_want_flush(c);
}

/* The current response (or the first request of a fresh connection) is
 * the last; the server's idle sweep closes the connection if none comes. */
static void h1_shutdown(struct conn *c) { h1(c)->keep_alive = false; }

static void h1_head_timed_out(struct conn *c) {
  write_error_and_close(c, 408, "the request head did not come within --timeout-request-head");
}

static void h1_destroy(struct conn *c) {
  struct h1_conn *h = h1(c);
  if (h == NULL) return;
  if (h->cur) {
    struct asgi_stream *s = h->cur;
    h->cur = NULL;
    asgi_stream_release(s);
  }
  h1_parser_free(&h->parser);
  bytebuf_free(&h->pending);
  free(h);
  c->proto_data = NULL;
}

const struct proto_ops h1_proto_ops = {
    .name = "http/1.1",
    .on_read = h1_on_read,
    .produce = h1_produce,
    .resume_send = h1_resume_send,
    .consumed = h1_consumed,
    .send_continue = h1_send_continue,
    .abort_stream = h1_abort_stream,
    .app_finished = h1_app_finished,
    .head_timed_out = h1_head_timed_out,
    .shutdown = h1_shutdown,
    .destroy = h1_destroy,
};

int h1_conn_start(struct conn *c) {
  struct h1_conn *h = calloc(1, sizeof *h);
  if (h == NULL) return -ENOMEM;
  struct h1_limits limits = {
      .max_head_bytes = server_config()->max_header_bytes,
      .max_fields = 200,
  };
  h->conn = c;
  h1_parser_init(&h->parser, &parser_ops, h, &limits);
  c->proto = &h1_proto_ops;
  c->proto_data = h;
  return 0;
}
