/* The ASGI bridge: one asgi_stream per HTTP request, a Python object whose
 * bound methods are the app's receive() and send(). Protocol modules fill
 * the request head, start the app, feed body bytes and pull the response;
 * the bridge turns that into ASGI messages and back.
 *
 * The response head is handed to the protocol only with the first body
 * message (or at the end), so an app that fails before sending any body
 * still gets a clean 500 and an empty response is one HEADERS frame. */
#ifndef H3G_BACKEND_ASGI_H
#define H3G_BACKEND_ASGI_H

#include <stdbool.h>
#include <stdint.h>
#include <Python.h>

#include "bytebuf.h"

struct conn;
struct proto_ops;

/* Per-process settings and objects the bridge uses for every request. */
struct asgi_env {
  PyObject *loop;
  PyObject *create_task;   /* loop.create_task */
  PyObject *create_future; /* loop.create_future */
  PyObject *app;
  PyObject *state;         /* lifespan state: each request gets a copy */
  PyObject *root_path;     /* str */
  PyObject *log_exception; /* runtime.log_exception(message, exc) */
  bool access_log;
  size_t body_buffer_limit; /* request bytes buffered before reads pause */
  size_t send_high_water;   /* await send() blocks above this many queued bytes */
  size_t ws_max_size;       /* bytes per incoming WebSocket message */
  uint64_t ws_ping_interval_ms, ws_ping_timeout_ms; /* keepalive; 0: off */
};
extern struct asgi_env asgi_env;

struct asgi_stream;

struct asgi_request_info {
  const char *http_version; /* "1.1" or "2" as received */
  PyObject *server;         /* (host, port) of the listener, or None */
};

int asgi_init_types(PyObject *module);
/* Interned strings and constants; call once after Py_Initialize. */
int asgi_init_constants(void);

/* The streams a connection holds, so it can let go of all of them when it
 * closes (nghttp2_session_del does not report open streams as closed). */
struct asgi_stream_list {
  struct asgi_stream *head;
};
void asgi_stream_list_add(struct asgi_stream_list *l, struct asgi_stream *s);
void asgi_stream_list_remove(struct asgi_stream_list *l, struct asgi_stream *s);
/* Releases every stream still on the list (their apps see http.disconnect). */
void asgi_stream_list_release_all(struct asgi_stream_list *l);

/* A new stream with one reference, owned by the caller (the protocol). */
struct asgi_stream *asgi_stream_new(struct conn *c, int32_t id, const char *http_version);
/* The protocol lets go of the stream: it won't call back into the connection. */
void asgi_stream_release(struct asgi_stream *s);
int32_t asgi_stream_id(const struct asgi_stream *s);
void asgi_stream_set_id(struct asgi_stream *s, int32_t id);
void *asgi_stream_proto_data(const struct asgi_stream *s);
void asgi_stream_set_proto_data(struct asgi_stream *s, void *data);

/* Request head, as the protocol parses it. 0 or -1 (Python error set:
 * log and reset). */
int asgi_stream_set_method(struct asgi_stream *s, const char *m, size_t len);
int asgi_stream_set_target(struct asgi_stream *s, const char *t, size_t len);
int asgi_stream_set_scheme(struct asgi_stream *s, const char *v, size_t len);
int asgi_stream_set_authority(struct asgi_stream *s, const char *v, size_t len);
/* The authority of an absolute-form target (http://HOST/...), which stands
 * for the Host field the client sent, if any (RFC 9112 3.2.2). */
int asgi_stream_override_host(struct asgi_stream *s, const char *v, size_t len);
/* How many Host fields the request had. */
unsigned asgi_stream_host_fields(const struct asgi_stream *s);
/* name must be lower-case. */
int asgi_stream_add_header(struct asgi_stream *s, const char *name, size_t nlen,
                           const char *value, size_t vlen);
size_t asgi_stream_header_bytes(const struct asgi_stream *s);
bool asgi_stream_wants_continue(const struct asgi_stream *s);
bool asgi_stream_is_head(const struct asgi_stream *s);
/* The request is a WebSocket handshake (HTTP/1.1 Upgrade or extended
 * CONNECT): the app gets a websocket scope, and body bytes both ways are
 * WebSocket frames the bridge reads and writes. Call before start_app. */
int asgi_stream_set_websocket(struct asgi_stream *s);
/* The app accepted the WebSocket: answer 101 (HTTP/1.1) or 200 (HTTP/2),
 * then the body is the open-ended frame stream. */
bool asgi_stream_ws_accepted(const struct asgi_stream *s);
/* Graceful stop ran out of time: close every open WebSocket with 1001
 * (going away). Returns how many were open. */
size_t asgi_ws_going_away_all(void);
/* Keepalive, from the server's periodic tick: pings WebSockets the client
 * has been quiet on, and closes (1011) those that don't answer in time. */
void asgi_ws_tick(uint64_t now_ms);

/* Creates the app's task. -1 when the app could not be called (a 500 is queued). */
int asgi_stream_start_app(struct asgi_stream *s);
/* An early error answered without the app (400, 413, 431...). */
void asgi_stream_respond_error(struct asgi_stream *s, int status, const char *text);
/* The same for a refusal that says why, and whose answer may carry one
 * field of its own (name NULL: none). */
void asgi_stream_respond_refusal(struct asgi_stream *s, int status, const char *why, const char *name,
                                 const char *value);

/* Request body. */
int asgi_stream_on_body(struct asgi_stream *s, const uint8_t *data, size_t len);
void asgi_stream_on_body_end(struct asgi_stream *s);
size_t asgi_stream_buffered_body(const struct asgi_stream *s);
/* The client went away or reset the stream. */
void asgi_stream_on_disconnect(struct asgi_stream *s);

/* Response, as the protocol pulls it. */
bool asgi_stream_head_ready(const struct asgi_stream *s);
int asgi_stream_status(const struct asgi_stream *s);
/* The app's header list (items are 2-sequences of bytes), borrowed. */
PyObject *asgi_stream_headers(const struct asgi_stream *s);
/* What a response head or trailer section may weigh, as HTTP/2 counts it
 * (name + value + 32 per field); send() refuses more. nghttp2 sends no
 * header block over 64 KiB (this leaves room for :status and the
 * gateway's own fields), and nginx takes 4-8 KiB from its upstreams. */
enum { ASGI_HEAD_MAX = 65536 - 1024 };

void asgi_stream_mark_head_sent(struct asgi_stream *s);
bool asgi_stream_head_sent(const struct asgi_stream *s);
/* Whether the app's response head has a Date (else the protocol adds one). */
bool asgi_stream_has_date(const struct asgi_stream *s);
size_t asgi_stream_queued_body(const struct asgi_stream *s);
size_t asgi_stream_read_body(struct asgi_stream *s, uint8_t *buf, size_t max);
/* All body bytes were read and the app said more_body=False. */
bool asgi_stream_body_eof(const struct asgi_stream *s);
bool asgi_stream_wants_trailers(const struct asgi_stream *s);
/* Trailer list once the app sent it, else NULL (borrowed). */
PyObject *asgi_stream_trailers(const struct asgi_stream *s);
/* The protocol finished sending the whole response. */
void asgi_stream_response_done(struct asgi_stream *s);
bool asgi_stream_app_finished(const struct asgi_stream *s);

/* Converts header name/value items to C strings; the bytes stay owned by
 * the list. Returns 0 or -1 (with a Python error). */
int asgi_header_item(PyObject *item, const char **name, Py_ssize_t *nlen,
                     const char **value, Py_ssize_t *vlen);

uint64_t asgi_active_tasks(void);

#endif
