/* The ASGI bridge's insides, shared by asgi.c (the http scope and the
 * plumbing every scope uses) and asgi_ws.c (the websocket scope). Protocol
 * modules use asgi.h only. */
#ifndef H3G_BACKEND_ASGI_INTERNAL_H
#define H3G_BACKEND_ASGI_INTERNAL_H

#include "asgi.h"

struct asgi_ws;

enum { OUT_RING_MIN = 8 };

struct asgi_stream {
  PyObject_HEAD struct conn *conn; /* NULL once the protocol released us */
  struct asgi_stream *list_prev, *list_next; /* in the connection's asgi_stream_list */
  void *proto_data;
  int32_t id;
  const char *http_version;

  /* request head */
  PyObject *method; /* str */
  PyObject *raw_path, *query; /* bytes */
  PyObject *scheme; /* str, from :scheme */
  PyObject *headers; /* list of (bytes, bytes) */
  size_t header_bytes;
  PyObject *xff, *xfp, *fwd, *via, *prefix; /* last value of each, bytes (prefix: X-Forwarded-Prefix) */
  bool has_authority;
  unsigned host_fields;    /* Host lines the client sent */
  Py_ssize_t cookie_at;    /* 1 + the index of the cookie field in headers; 0: none yet */
  bool te_trailers;
  bool expect_continue;
  bool is_head;

  /* request body: receive() side */
  struct bytebuf in;
  bool in_done;        /* the client finished the body */
  bool in_delivered;   /* the app got the last http.request */
  bool continue_sent;
  bool disconnected;
  PyObject *recv_waiter;

  /* response: send() side */
  int status;
  PyObject *resp_headers;
  PyObject *resp_trailers;
  bool resp_started;     /* http.response.start received */
  bool resp_wants_trailers;
  bool resp_body_done;   /* more_body=False received */
  bool resp_has_date;    /* the app gave its own Date */
  bool resp_has_length;  /* the app gave a Content-Length: */
  uint64_t resp_length;  /* this one */
  uint64_t resp_sent;    /* body bytes the app has sent so far */
  bool head_sent;        /* the protocol took status and headers */
  bool resp_complete;    /* the protocol sent everything */
  PyObject **out;        /* ring of bytes objects */
  size_t out_cap, out_head, out_count, out_off; /* out_off: bytes used of out[head] */
  size_t out_bytes;
  PyObject *send_waiter;

  /* access log (only with --access-log) */
  PyObject *log_client; /* scope["client"], after forwarding headers */
  const char *log_version;

  /* WebSocket (RFC 6455 / 8441): NULL for plain HTTP */
  struct asgi_ws *ws;
  PyObject *ws_protocols; /* sec-websocket-protocol values, joined (bytes) */

  /* app */
  bool app_running;
  bool app_done;
};


/* An awaitable that is already complete; value stolen (NULL: None). */
PyObject *asgi_ready(PyObject *value);
/* Queues a bytes object for the protocol to send. 0 or -1. */
int asgi_out_push(struct asgi_stream *s, PyObject *bytes);
/* Completes *waiter with value (if still pending) and clears it. */
void asgi_resolve(PyObject **waiter, PyObject *value);
/* Hands the next message to a receive() that is waiting, if any. */
void asgi_wake_receiver(struct asgi_stream *s);
/* The app's send() blocks while this much is queued. */
PyObject *asgi_send_backpressure(struct asgi_stream *s);
/* 0, or -1 with a Python error naming what is wrong with the fields an app
 * sends (a name that is no token, a value with CR, LF or NUL, too many). */
int asgi_validate_headers(PyObject *headers);
PyObject *asgi_send_start(struct asgi_stream *s, PyObject *msg);
PyObject *asgi_send_body(struct asgi_stream *s, PyObject *msg);
void asgi_log_python_error(const char *what);

/* asgi_ws.c */
int asgi_ws_init_constants(PyObject *module);
void asgi_ws_free(struct asgi_stream *s);
/* scope["type"] etc. for a WebSocket request; 0 or -1. */
int asgi_ws_fill_scope(struct asgi_stream *s, PyObject *scope, PyObject *extensions);
/* The next message for the app, or NULL with no error when it must wait. */
PyObject *asgi_ws_next_message(struct asgi_stream *s);
PyObject *asgi_ws_send(struct asgi_stream *s, PyObject *msg);
/* New bytes in s->in. */
void asgi_ws_on_bytes(struct asgi_stream *s);
/* The client can send no more (END_STREAM, EOF or reset). */
void asgi_ws_transport_closed(struct asgi_stream *s);
/* The app returned (exc NULL) or raised: complete the handshake or close. */
void asgi_ws_app_finished(struct asgi_stream *s, PyObject *exc);

#endif
