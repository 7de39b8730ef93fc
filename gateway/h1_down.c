/* HTTP/1.1 from clients (TLS or cleartext), into exchanges.
 *
 * One request at a time: later pipelined requests stay unread in the input
 * buffer until the current response is complete, so answers go out in
 * order. A request body is fed to the exchange only while its buffer has
 * room: above body_buffer reading pauses, and resumes when the upstream
 * takes bytes. Pausing disables EV_READ on the bufferevent: a read high
 * watermark would not do, since libevent 2.1.12 re-runs the read callback
 * for as long as the input sits at the watermark (bufferevent_inbuf_wm_check).
 *
 * Table of contents:
 *   parser callbacks -> exchange
 *   input processing and timers
 *   exchange callbacks: response head, body, abort, credit
 *   proto ops
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "addr.h"
#include "down.h"
#include "h1_parser.h"
#include "http_date.h"
#include "http_status.h"
#include "listener.h"
#include "log.h"
#include "ws_frame.h"
#include "xchg.h"

enum {
  OUT_HIGH_WATER = 256 * 1024, /* response bytes queued for the socket */
  SMALL_BODY = 8 * 1024,       /* over TLS, copied rather than moved into the output */
  DRAIN_IDLE_MS = 1000,        /* stopping: an idle connection closes after this */
};

struct h1d {
  struct down_conn *c;
  struct h1_parser parser;
  struct xchg *x;         /* the request being read or answered */
  uint8_t version_minor;
  bool keep_alive;
  bool req_done;
  bool head_written;
  bool chunked;
  bool close_delimited;
  bool no_body;
  bool is_head;
  bool want_input;        /* credit came back: feed the parser in the flush pass */
  bool read_paused;       /* EV_READ off: pipelined request waiting, or body backpressure */
  bool broken;            /* the request can't be read further: close after the answer */
  struct ws_handshake ws; /* the request's WebSocket fields */
  bool websocket;         /* a WebSocket handshake: after the head, input is frames */
  uint32_t requests;
};

static const struct xchg_down_ops xchg_ops;

static struct h1d *h1d(struct down_conn *c) { return c->pd; }


/* ---------------------------------------------------------------------------
 * Parser callbacks.
 */
static int ensure_xchg(struct h1d *h) {
  if (h->x) return 0;
  struct down_conn *c = h->c;
  h->x = xchg_new(c->rt, XCHG_HTTP_1_1, &xchg_ops, h);
  if (h->x == NULL) return 503;
  down_introduce_xchg(c, h->x);
  h->req_done = h->head_written = h->chunked = h->close_delimited = false;
  h->no_body = h->is_head = false;
  h->websocket = false;
  memset(&h->ws, 0, sizeof h->ws);
  return 0;
}

static int on_header(void *ctx, const char *name, size_t nlen, const char *value, size_t vlen) {
  struct h1d *h = ctx;
  int rc = ensure_xchg(h);
  if (rc) return rc;
  if (nlen >= 7 && (name[0] == 'u' || name[0] == 's')) ws_handshake_field(&h->ws, name, nlen, value, vlen);
  rc = xchg_req_field(h->x, name, nlen, value, vlen);
  if (rc) h1_parser_refuse(&h->parser, xchg_field_refusal(h->x, rc));
  return rc;
}

static void request_timeout(struct down_conn *c);

/* :path, and :authority from an absolute-form target, whose authority wins
 * over Host: "http://host/p?q" is "/p?q", "http://host?q" is "/?q". */
static int add_target(struct xchg *x, const char *t, size_t tlen) {
  const char *auth, *rest;
  size_t alen, rlen;
  if (!h1_absolute_form(t, tlen, &auth, &alen, &rest, &rlen))
    return xchg_req_field(x, ":path", 5, t, tlen);
  int rc = xchg_req_field(x, ":authority", 10, auth, alen);
  if (rc) return rc;
  if (rlen > 0 && rest[0] == '/') return xchg_req_field(x, ":path", 5, rest, rlen);
  char *path = malloc(rlen + 1);
  if (path == NULL) return 503;
  path[0] = '/';
  memcpy(path + 1, rest, rlen);
  rc = xchg_req_field(x, ":path", 5, path, rlen + 1);
  free(path);
  return rc;
}

/* The authority of a request that names no host: the address it reached,
 * as "IP:port". The listener's own may be a wildcard (":8080"), which is no
 * authority at all. */
static int add_local_authority(struct h1d *h) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  char a[80];
  int fd = bufferevent_getfd(h->c->bev);
  if (fd >= 0 && getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
    h3g_sockaddr_format((struct sockaddr *)&ss, len, a, sizeof a);
  else
    h3g_copy_str(a, sizeof a, h->c->listener->conf->address);
  return xchg_req_field(h->x, ":authority", 10, a, strlen(a));
}

static int on_head(void *ctx, const struct h1_request_head *head) {
  struct h1d *h = ctx;
  int rc = ensure_xchg(h);
  if (rc) return rc;
  struct xchg *x = h->x;
  down_set_timer(h->c, 0, NULL);
  h->version_minor = head->version_minor;
  h->keep_alive = head->keep_alive && !h->c->draining;
  x->proto = head->version_minor == 0 ? XCHG_HTTP_1_0 : XCHG_HTTP_1_1;
  if (head->method_len == 7 && memcmp(head->method, "CONNECT", 7) == 0) {
    h1_parser_refuse(&h->parser, "CONNECT tunnels are not served here");
    return 405;
  }
  h->is_head = head->method_len == 4 && memcmp(head->method, "HEAD", 4) == 0;
  if ((rc = xchg_req_field(x, ":method", 7, head->method, head->method_len)) ||
      (rc = add_target(x, head->target, head->target_len)))
    return rc;
  int host = hdr_find(&x->req, "host", 4, 0);
  if ((host < 0 || x->req.v[host].value_len == 0) && x->i_authority < 0) {
    if (host < 0 && head->version_minor >= 1) { /* RFC 9112 3.2: a 1.1 request must say which host */
      h1_parser_refuse(&h->parser, "an HTTP/1.1 request needs a Host field");
      return 400;
    }
    /* HTTP/1.0 may name none, and an empty Host names none (RFC 9112 3.3):
     * the address it reached stands for it, as nginx's server name does. */
    if ((rc = add_local_authority(h))) return rc;
  }
  if (head->upgrade && h->ws.upgrade) {
    /* The bytes after this head are the client's frames: the request
     * "body" lasts as long as the WebSocket. */
    int refused = ws_handshake_status(&h->ws);
    if (refused) {
      h1_parser_refuse(&h->parser, ws_refusal_reason(refused));
      return refused;
    }
    h->websocket = x->websocket = true;
    h->keep_alive = false;
    xchg_req_head_done(x);
    return 0;
  }
  if (!head->chunked && (!head->has_content_length || head->content_length == 0)) {
    h->req_done = true;
    x->req_end = true;
  }
  bool wants_continue = x->expect_continue && !h->req_done && h->version_minor >= 1;
  xchg_req_head_done(x); /* errors come back as a local response */
  /* The body is asked for only when the request goes on: a 413 or 404
   * spares the client the upload (RFC 9110 10.1.1). */
  if (wants_continue && h->x && h->x->state != XS_DONE && h->x->state != XS_RESPONDING)
    evbuffer_add(bufferevent_get_output(h->c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
  return 0;
}

static int on_body(void *ctx, const char *data, size_t len) {
  struct h1d *h = ctx;
  if (h->x == NULL) return 0;
  int status = xchg_req_body(h->x, data, len);
  if (status) {
    h->broken = true;
    return status;
  }
  return 0;
}

static int on_end(void *ctx) {
  struct h1d *h = ctx;
  h->requests++;
  if (h->websocket) return 0; /* the tunnel follows */
  if (h->x && !h->req_done) {
    h->req_done = true;
    xchg_req_end(h->x);
  }
  return 0;
}

/* Trailers are dropped: ASGI has no request trailers to give the app. */
static const struct h1_parser_ops parser_ops = {
    .on_header = on_header, .on_head = on_head, .on_body = on_body, .on_end = on_end};

/* ---------------------------------------------------------------------------
 * Input.
 */
/* A request refused before it became an exchange of its own (malformed,
 * too large, too slow) is still one for the access log and the metrics,
 * with its status and what is known of its request line, as nginx logs
 * its 400s. It used to be logged as 499 (client gone) with no method,
 * or not at all when the first line was bad. */
static void record_refused(struct h1d *h, int status, size_t bytes) {
  if (ensure_xchg(h) != 0) return;
  struct xchg *x = h->x;
  const char *method, *target;
  size_t tlen;
  if (x->i_method < 0 && h1_parser_request_line(&h->parser, &method, &target, &tlen)) {
    xchg_req_field(x, ":method", 7, method, strlen(method));
    xchg_req_field(x, ":path", 5, target, tlen);
  }
  x->status = status;
  x->resp_bytes = bytes;
}

static void write_local_error(struct h1d *h, int status, const char *why) {
  struct down_conn *c = h->c;
  h->broken = true;
  h->keep_alive = false;
  if (h->x && h->x->state != XS_REQ_HEAD) {
    /* The exchange exists: let it answer (or break the response). */
    if (!h->head_written) xchg_respond_local(h->x, status, why);
    else down_close(c, false);
    return;
  }
  char body[256];
  int n = snprintf(body, sizeof body, "%d %s: %s\n", status, http_reason(status), why);
  if (n < 0 || n >= (int)sizeof body) n = (int)sizeof body - 1;
  evbuffer_add_printf(bufferevent_get_output(c->bev),
                      "HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n%s"
                      "content-length: %d\r\ndate: %s\r\nconnection: close\r\n\r\n%.*s",
                      status, http_reason(status), ws_refusal_field_line(status), n, h3g_http_date(), n, body);
  record_refused(h, status, (size_t)n);
  if (h->x) {
    xchg_down_detach(h->x);
    h->x = NULL;
  }
  down_close(c, false);
}

static void pause_reading(struct h1d *h, bool pause) {
  if (h->read_paused == pause || h->c->bev == NULL) return;
  h->read_paused = pause;
  down_pause_reading(h->c, pause);
}

/* A WebSocket's frames go to the exchange as they are, while it has room.
 * Returns true when it is full (reading pauses). */
static bool tunnel_input(struct down_conn *c) {
  struct h1d *h = h1d(c);
  struct evbuffer *in = bufferevent_get_input(c->bev);
  size_t limit = c->rt->conf->body_buffer;
  while (evbuffer_get_length(in) > 0) {
    if (h->x == NULL) {
      evbuffer_drain(in, evbuffer_get_length(in)); /* the WebSocket is over */
      return false;
    }
    size_t room = limit > xchg_req_buffered(h->x) ? limit - xchg_req_buffered(h->x) : 0;
    if (room == 0) return true;
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) break;
    size_t n = v.iov_len < room ? v.iov_len : room;
    xchg_req_body(h->x, v.iov_base, n);
    evbuffer_drain(in, n);
  }
  return false;
}

/* Feeds buffered input to the parser while the current exchange has room;
 * stops reading the socket when it can't take more. */
static void process_input(struct down_conn *c) {
  struct h1d *h = h1d(c);
  struct evbuffer *in = bufferevent_get_input(c->bev);
  h->want_input = false;
  bool blocked = false;
  while (c->state == DC_OPEN && !h->broken && evbuffer_get_length(in) > 0) {
    if (h->websocket && h1_parser_message_done(&h->parser)) {
      blocked = tunnel_input(c);
      break;
    }
    /* pipelined: wait for this response; or backpressure on the body */
    if (h1_parser_message_done(&h->parser) ||
        (h->x && xchg_req_buffered(h->x) >= c->rt->conf->body_buffer)) {
      blocked = true;
      break;
    }
    if (h->x == NULL && !h1_parser_in_message(&h->parser))
      down_set_timer(c, c->rt->conf->client_header_timeout_ms, request_timeout);
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) break;
    ssize_t n = h1_parser_feed(&h->parser, v.iov_base, v.iov_len);
    if (n < 0) {
      log_debug("conn %llu: bad request: %s", (unsigned long long)c->id, h->parser.error_reason);
      evbuffer_drain(in, evbuffer_get_length(in));
      write_local_error(h, h->parser.error_status, h->parser.error_reason);
      break;
    }
    evbuffer_drain(in, (size_t)n);
  }
  if (c->state == DC_OPEN) pause_reading(h, blocked);
}

static void idle_timeout(struct down_conn *c) { down_close(c, false); }

static void request_timeout(struct down_conn *c) {
  struct h1d *h = h1d(c);
  if (h->x == NULL || h->x->state == XS_REQ_HEAD) {
    if (h1_parser_in_message(&h->parser) || h->x) write_local_error(h, 408, "request head not received in time");
    else down_close(c, false);
  }
}

/* ---------------------------------------------------------------------------
 * Response.
 */
/* The backend accepted (200 to its extended CONNECT): 101 with the accept
 * key for the client's own key; then raw frames until either side ends. */
static void write_websocket_head(struct h1d *h) {
  struct xchg *x = h->x;
  struct evbuffer *out = bufferevent_get_output(h->c->bev);
  char accept[29];
  ws_accept_key(h->ws.key, strlen(h->ws.key), accept);
  evbuffer_add_printf(out,
                      "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                      "connection: Upgrade\r\nsec-websocket-accept: %s\r\n",
                      accept);
  for (uint32_t i = 0; i < x->resp.n; i++) {
    const struct hdr *f = &x->resp.v[i];
    const char *name = x->resp.arena + f->name_off;
    if ((f->flags & HDR_DROPPED) || name[0] == ':' || hdr_name_is(&x->resp, (int)i, "content-length"))
      continue;
    evbuffer_add(out, name, f->name_len);
    evbuffer_add(out, ": ", 2);
    evbuffer_add(out, x->resp.arena + f->value_off, f->value_len);
    evbuffer_add(out, "\r\n", 2);
  }
  evbuffer_add(out, "\r\n", 2);
  h->close_delimited = true;
  h->keep_alive = false;
  h->head_written = true;
}

static void write_head(struct h1d *h) {
  struct xchg *x = h->x;
  struct evbuffer *out = bufferevent_get_output(h->c->bev);
  if (h->websocket && !x->resp_local && x->status >= 200 && x->status < 300) {
    write_websocket_head(h);
    return;
  }
  evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", x->status, http_reason(x->status));
  bool has_length = false, has_alt_svc = false;
  for (uint32_t i = 0; i < x->resp.n; i++) {
    const struct hdr *f = &x->resp.v[i];
    if (f->flags & HDR_DROPPED) continue;
    const char *name = x->resp.arena + f->name_off;
    if (name[0] == ':') continue;
    if (f->name_len == 14 && memcmp(name, "content-length", 14) == 0) has_length = true;
    if (f->name_len == 7 && memcmp(name, "alt-svc", 7) == 0) has_alt_svc = true;
    evbuffer_add(out, name, f->name_len);
    evbuffer_add(out, ": ", 2);
    evbuffer_add(out, x->resp.arena + f->value_off, f->value_len);
    evbuffer_add(out, "\r\n", 2);
  }
  /* The app's own Alt-Svc wins; otherwise we advertise HTTP/3. */
  const char *alt = down_alt_svc(h->c);
  if (alt && !has_alt_svc) evbuffer_add_printf(out, "alt-svc: %s\r\n", alt);
  h->no_body = h->is_head || x->status == 204 || x->status == 304 || x->status < 200;
  if (!h->no_body && !has_length) {
    if (x->resp_end && x->resp_trailers.n == 0) {
      evbuffer_add_printf(out, "content-length: %zu\r\n", evbuffer_get_length(x->resp_body));
    } else if (h->version_minor >= 1) {
      h->chunked = true;
      evbuffer_add(out, "transfer-encoding: chunked\r\n", 28);
    } else {
      h->close_delimited = true;
      h->keep_alive = false;
    }
  }
  /* Our own answer to a request whose body is still coming (a 413, a 404):
   * the connection closes after it rather than read a body nobody wants. */
  if (x->resp_local && !h->req_done) h->keep_alive = false;
  if (!h->keep_alive || h->broken) evbuffer_add(out, "connection: close\r\n", 19);
  else if (h->version_minor == 0) evbuffer_add(out, "connection: keep-alive\r\n", 24);
  evbuffer_add(out, "\r\n", 2);
  h->head_written = true;
}

static void write_trailers(struct h1d *h) {
  struct xchg *x = h->x;
  struct evbuffer *out = bufferevent_get_output(h->c->bev);
  evbuffer_add(out, "0\r\n", 3);
  for (uint32_t i = 0; i < x->resp_trailers.n; i++) {
    const struct hdr *f = &x->resp_trailers.v[i];
    evbuffer_add(out, x->resp_trailers.arena + f->name_off, f->name_len);
    evbuffer_add(out, ": ", 2);
    evbuffer_add(out, x->resp_trailers.arena + f->value_off, f->value_len);
    evbuffer_add(out, "\r\n", 2);
  }
  evbuffer_add(out, "\r\n", 2);
}

/* The response is out: next request, or close. */
static void finish_exchange(struct down_conn *c) {
  struct h1d *h = h1d(c);
  struct xchg *x = h->x;
  h->x = NULL;
  xchg_down_detach(x);
  if (!h->keep_alive || !h->req_done || h->broken) {
    down_close(c, false);
    return;
  }
  h1_parser_next(&h->parser);
  down_set_timer(c, c->draining ? DRAIN_IDLE_MS : c->rt->conf->keepalive_timeout_ms, idle_timeout);
  process_input(c);
}

static void write_response(struct down_conn *c) {
  struct h1d *h = h1d(c);
  struct xchg *x = h->x;
  if (x == NULL || x->status == 0 || (x->state != XS_RESPONDING && x->state != XS_DONE)) return;
  if (!h->head_written) write_head(h);
  struct evbuffer *out = bufferevent_get_output(c->bev);
  size_t moved = 0;
  while (evbuffer_get_length(x->resp_body) > 0 && evbuffer_get_length(out) < OUT_HIGH_WATER) {
    size_t n = evbuffer_get_length(x->resp_body);
    if (n > OUT_HIGH_WATER) n = OUT_HIGH_WATER;
    if (h->no_body) {
      evbuffer_drain(x->resp_body, n);
    } else {
      if (h->chunked) evbuffer_add_printf(out, "%zx\r\n", n);
      if (n <= SMALL_BODY && c->tls) {
        /* Copied next to the head: one TLS record for a small response,
         * where moving the chain would make two. In cleartext a moved chain
         * leaves in the same writev, and a copy is an allocation, a memcpy
         * and a free per WebSocket message. */
        evbuffer_add(out, evbuffer_pullup(x->resp_body, (ev_ssize_t)n), n);
        evbuffer_drain(x->resp_body, n);
      } else {
        evbuffer_remove_buffer(x->resp_body, out, n);
      }
      if (h->chunked) evbuffer_add(out, "\r\n", 2);
    }
    moved += n;
  }
  if (moved) xchg_resp_consumed(x, moved);
  if (x->resp_end && evbuffer_get_length(x->resp_body) == 0) {
    if (h->chunked) write_trailers(h);
    xchg_resp_out(x);
    finish_exchange(c);
  }
}

/* ---------------------------------------------------------------------------
 * Exchange callbacks: thin, the flush pass does the work.
 */
static void on_resp_head(struct xchg *x) { down_want_flush(((struct h1d *)x->down_ctx)->c); }
static void on_resp_body(struct xchg *x) { down_want_flush(((struct h1d *)x->down_ctx)->c); }

static void on_req_credit(struct xchg *x, size_t n) {
  (void)n;
  struct h1d *h = x->down_ctx;
  h->want_input = true;
  down_want_flush(h->c);
}

static void on_abort(struct xchg *x) {
  struct h1d *h = x->down_ctx;
  /* HTTP/1.1 can only say "broken" by closing before the body's end. */
  h->broken = true;
  h->keep_alive = false;
  if (!h->head_written) {
    down_close(h->c, false);
    return;
  }
  down_close(h->c, false);
}

static const struct xchg_down_ops xchg_ops = {on_resp_head, on_resp_body, on_req_credit, on_abort};

/* ---------------------------------------------------------------------------
 * Proto ops.
 */
static int h1_start(struct down_conn *c) {
  struct h1d *h = calloc(1, sizeof *h);
  if (h == NULL) return -1;
  h->c = c;
  struct h1_limits limits = {
      .max_head_bytes = c->rt->conf->max_header_bytes,
      .max_fields = c->rt->conf->max_header_count,
  };
  h1_parser_init(&h->parser, &parser_ops, h, &limits);
  c->pd = h;
  down_set_timer(c, c->rt->conf->client_header_timeout_ms, request_timeout);
  return 0;
}

static void h1_on_read(struct down_conn *c) { process_input(c); }

static void h1_flush(struct down_conn *c) {
  struct h1d *h = h1d(c);
  if (h->want_input) process_input(c);
  write_response(c);
}

/* Graceful stop or reload: the current (or next) response says
 * "connection: close". An idle connection closes only after a moment of
 * silence: closing it at once races the client's next request on it. */
static void h1_shutdown(struct down_conn *c) {
  struct h1d *h = h1d(c);
  h->keep_alive = false;
  if (h->x == NULL && !h1_parser_in_message(&h->parser))
    down_set_timer(c, DRAIN_IDLE_MS, idle_timeout);
}

static void h1_destroy(struct down_conn *c) {
  struct h1d *h = h1d(c);
  if (h == NULL) return;
  if (h->x) xchg_down_detach(h->x);
  h1_parser_free(&h->parser);
  free(h);
  c->pd = NULL;
}

static bool h1_idle(const struct down_conn *c) { return h1d((struct down_conn *)c)->x == NULL; }

const struct down_proto h1_down_proto = {
    .name = "http/1.1",
    .start = h1_start,
    .on_read = h1_on_read,
    .flush = h1_flush,
    .shutdown = h1_shutdown,
    .destroy = h1_destroy,
    .idle = h1_idle,
};
