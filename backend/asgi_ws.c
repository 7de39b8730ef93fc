/* The ASGI websocket scope (ASGI 3.0, spec 2.3, with the
 * websocket.http.response extension).
 *
 * Protocol modules carry a WebSocket as a request/response body: after an
 * HTTP/1.1 101 the raw socket, after an RFC 8441 200 the stream's DATA.
 * This file reads client frames from the stream's input (shared/ws_frame's
 * reader: unmasking, fragments, size limit, UTF-8), answers pings and the
 * close handshake itself, hands whole messages to the app, and frames what
 * the app sends into the stream's output ring: a header object followed by
 * the app's own payload object, so large messages are not copied.
 *
 * Backpressure: at most INBOX_MAX messages wait for the app; beyond that
 * the input stays unread, which pauses the socket (HTTP/1.1) or withholds
 * the stream's window (HTTP/2). The app's send() waits above the stream's
 * output high-water mark, as for HTTP bodies.
 *
 * Table of contents:
 *   constants and life cycle
 *   scope
 *   frames out
 *   frames in
 *   receive() and send()
 *   app end and graceful stop
 */
#include <string.h>

#include "asgi_internal.h"
#include "conn.h"
#include "log.h"
#include "server.h"
#include "ws_frame.h"

enum {
  INBOX_MAX = 16,          /* whole messages waiting for receive() */
  MSG_KEEP = 64 * 1024,    /* assembly buffer kept between messages */
  SMALL_FRAME = 1024,      /* payloads up to this are copied next to their header */
  DIRECT_MIN = 64 * 1024,  /* a binary message in one frame this big goes straight into its bytes */
  MAX_CLOSE_REASON = 123,  /* a close frame's payload is at most 125 bytes */
};

struct asgi_ws {
  struct asgi_stream *s;       /* the stream owns us */
  struct asgi_ws *prev, *next; /* every WebSocket, for the graceful stop */
  struct ws_reader reader;
  struct bytebuf msg;          /* the message being assembled */
  PyObject *direct;            /* or its bytes object, filled in place (see take_data) */
  PyObject *inbox[INBOX_MAX];
  size_t inbox_head, inbox_count;
  bool pumping;
  bool connect_delivered;
  bool accepted;
  bool denied;     /* the app answers with an HTTP response instead */
  bool close_sent; /* our close frame (or the end of our side) is queued */
  bool closed;     /* no more client messages: close, error or transport gone */
  uint64_t last_rx_ms;   /* the client last sent anything */
  uint64_t ping_sent_ms; /* our keepalive ping is unanswered since; 0: none */
  unsigned close_code;
  PyObject *close_reason; /* str */
};

static struct asgi_ws *all_ws;
static PyObject *client_disconnected; /* _h3gate.ClientDisconnected (an OSError) */

static struct {
  PyObject *type, *text, *bytes, *code, *reason, *subprotocol, *subprotocols, *headers, *scheme;
  PyObject *v_websocket, *v_connect, *v_receive, *v_disconnect, *v_accept, *v_send, *v_close,
      *v_resp_start, *v_resp_body, *v_ext_resp, *v_ws, *v_wss, *v_https, *empty_str;
  PyObject *protocol_header;
} W;

int asgi_ws_init_constants(PyObject *module) {
#define INTERN(field, text)                                                                        \
  if ((W.field = PyUnicode_InternFromString(text)) == NULL) return -1
  INTERN(type, "type");
  INTERN(text, "text");
  INTERN(bytes, "bytes");
  INTERN(code, "code");
  INTERN(reason, "reason");
  INTERN(subprotocol, "subprotocol");
  INTERN(subprotocols, "subprotocols");
  INTERN(headers, "headers");
  INTERN(scheme, "scheme");
  INTERN(v_websocket, "websocket");
  INTERN(v_connect, "websocket.connect");
  INTERN(v_receive, "websocket.receive");
  INTERN(v_disconnect, "websocket.disconnect");
  INTERN(v_accept, "websocket.accept");
  INTERN(v_send, "websocket.send");
  INTERN(v_close, "websocket.close");
  INTERN(v_resp_start, "websocket.http.response.start");
  INTERN(v_resp_body, "websocket.http.response.body");
  INTERN(v_ext_resp, "websocket.http.response");
  INTERN(v_ws, "ws");
  INTERN(v_wss, "wss");
  INTERN(v_https, "https");
  INTERN(empty_str, "");
#undef INTERN
  W.protocol_header = PyBytes_FromString("sec-websocket-protocol");
  if (W.protocol_header == NULL) return -1;
  client_disconnected = PyErr_NewExceptionWithDoc(
      "_h3gate.ClientDisconnected",
      "send() on a WebSocket the client closed or left (ASGI: an OSError subclass).",
      PyExc_OSError, NULL);
  if (client_disconnected == NULL) return -1;
  return PyModule_AddObjectRef(module, "ClientDisconnected", client_disconnected);
}

int asgi_stream_set_websocket(struct asgi_stream *s) {
  struct asgi_ws *w = PyMem_Calloc(1, sizeof *w);
  if (w == NULL) {
    PyErr_NoMemory();
    return -1;
  }
  w->s = s;
  w->last_rx_ms = server_now_ms();
  ws_reader_init(&w->reader, true, asgi_env.ws_max_size);
  w->next = all_ws;
  if (all_ws) all_ws->prev = w;
  all_ws = w;
  s->ws = w;
  return 0;
}

void asgi_ws_free(struct asgi_stream *s) {
  struct asgi_ws *w = s->ws;
  if (w == NULL) return;
  if (w->prev) w->prev->next = w->next;
  else all_ws = w->next;
  if (w->next) w->next->prev = w->prev;
  while (w->inbox_count > 0) {
    Py_DECREF(w->inbox[w->inbox_head]);
    w->inbox_head = (w->inbox_head + 1) % INBOX_MAX;
    w->inbox_count--;
  }
  Py_XDECREF(w->close_reason);
  Py_XDECREF(w->direct);
  bytebuf_free(&w->msg);
  PyMem_Free(w);
  s->ws = NULL;
}

bool asgi_stream_ws_accepted(const struct asgi_stream *s) { return s->ws && s->ws->accepted; }

/* ---------------------------------------------------------------------------
 * Scope: type, ws/wss, subprotocols, the denial extension.
 */
static PyObject *split_protocols(PyObject *joined) {
  PyObject *list = PyList_New(0);
  if (list == NULL || joined == NULL) return list;
  const char *p = PyBytes_AS_STRING(joined), *end = p + PyBytes_GET_SIZE(joined);
  while (p < end) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    const char *stop = comma ? comma : end;
    const char *a = p, *b = stop;
    while (a < b && (*a == ' ' || *a == '\t')) a++;
    while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
    if (b > a) {
      PyObject *item = PyUnicode_DecodeLatin1(a, b - a, NULL);
      if (item == NULL || PyList_Append(list, item) != 0) {
        Py_XDECREF(item);
        Py_DECREF(list);
        return NULL;
      }
      Py_DECREF(item);
    }
    p = stop + 1;
  }
  return list;
}

int asgi_ws_fill_scope(struct asgi_stream *s, PyObject *scope, PyObject *extensions) {
  PyObject *scheme = PyDict_GetItemWithError(scope, W.scheme);
  bool secure = scheme && PyUnicode_Compare(scheme, W.v_https) == 0;
  PyObject *protocols = split_protocols(s->ws_protocols);
  PyObject *empty = PyDict_New();
  int rc = -1;
  if (protocols && empty && PyDict_SetItem(scope, W.type, W.v_websocket) == 0 &&
      PyDict_SetItem(scope, W.scheme, secure ? W.v_wss : W.v_ws) == 0 &&
      PyDict_SetItem(scope, W.subprotocols, protocols) == 0 &&
      PyDict_SetItem(extensions, W.v_ext_resp, empty) == 0)
    rc = 0;
  Py_XDECREF(protocols);
  Py_XDECREF(empty);
  return rc;
}

/* ---------------------------------------------------------------------------
 * Frames out. Servers send unmasked frames (RFC 6455 5.1).
 */
static void want_send(struct asgi_stream *s) {
  if (s->conn) s->conn->proto->resume_send(s->conn, s);
}

/* One frame; payload is copied. */
static int queue_frame(struct asgi_stream *s, uint8_t opcode, const void *payload, size_t len) {
  uint8_t hdr[WS_MAX_HDR];
  size_t h = ws_write_header(hdr, true, opcode, len, NULL);
  PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(h + len));
  if (b == NULL) return -1;
  memcpy(PyBytes_AS_STRING(b), hdr, h);
  if (len) memcpy(PyBytes_AS_STRING(b) + h, payload, len);
  int rc = asgi_out_push(s, b);
  Py_DECREF(b);
  return rc;
}

/* A data frame whose payload is a bytes object the app gave us. */
static int queue_message(struct asgi_stream *s, uint8_t opcode, PyObject *payload) {
  size_t len = (size_t)PyBytes_GET_SIZE(payload);
  if (len <= SMALL_FRAME) return queue_frame(s, opcode, PyBytes_AS_STRING(payload), len);
  uint8_t hdr[WS_MAX_HDR];
  size_t h = ws_write_header(hdr, true, opcode, len, NULL);
  PyObject *hb = PyBytes_FromStringAndSize((const char *)hdr, (Py_ssize_t)h);
  if (hb == NULL) return -1;
  int rc = asgi_out_push(s, hb);
  Py_DECREF(hb);
  return rc == 0 ? asgi_out_push(s, payload) : rc;
}

/* Our close frame; the stream's output ends after it. */
static void send_close(struct asgi_stream *s, unsigned code, const char *reason, size_t rlen) {
  struct asgi_ws *w = s->ws;
  if (w->close_sent) return;
  w->close_sent = true;
  if (!s->disconnected) {
    uint8_t payload[2 + MAX_CLOSE_REASON];
    size_t n = 0;
    if (code != WS_NO_STATUS) {
      if (rlen > MAX_CLOSE_REASON) {
        rlen = MAX_CLOSE_REASON;
        while (rlen > 0 && ((uint8_t)reason[rlen] & 0xc0) == 0x80) rlen--; /* whole characters */
      }
      payload[0] = (uint8_t)(code >> 8);
      payload[1] = (uint8_t)code;
      memcpy(payload + 2, reason, rlen);
      n = 2 + rlen;
    }
    if (queue_frame(s, WS_CLOSE, payload, n) != 0) PyErr_Clear();
  }
  s->resp_body_done = true;
  want_send(s);
}

/* ---------------------------------------------------------------------------
 * Frames in.
 */
static void mark_closed(struct asgi_ws *w, unsigned code, const char *reason, size_t rlen) {
  if (w->closed) return;
  w->closed = true;
  w->close_code = code;
  Py_XSETREF(w->close_reason, PyUnicode_DecodeUTF8(reason, (Py_ssize_t)rlen, "replace"));
  if (w->close_reason == NULL) PyErr_Clear();
}

static PyObject *receive_message(struct asgi_ws *w, uint8_t opcode) {
  const char *data = (const char *)bytebuf_head(&w->msg);
  Py_ssize_t len = (Py_ssize_t)bytebuf_size(&w->msg);
  PyObject *payload;
  if (w->direct) {
    payload = w->direct; /* complete: the reader ended the message */
    w->direct = NULL;
  } else {
    /* The reader checked the UTF-8 already. */
    payload = opcode == WS_TEXT ? PyUnicode_DecodeUTF8(data, len, NULL)
                                : PyBytes_FromStringAndSize(data, len);
  }
  if (payload == NULL) return NULL;
  PyObject *m = PyDict_New();
  if (m == NULL || PyDict_SetItem(m, W.type, W.v_receive) != 0 ||
      PyDict_SetItem(m, opcode == WS_TEXT ? W.text : W.bytes, payload) != 0)
    Py_CLEAR(m);
  Py_DECREF(payload);
  return m;
}

static int deliver(struct asgi_stream *s, uint8_t opcode) {
  struct asgi_ws *w = s->ws;
  PyObject *m = receive_message(w, opcode);
  if (w->msg.cap > MSG_KEEP) bytebuf_free(&w->msg); /* a 16 MB message is not kept around */
  else bytebuf_consume(&w->msg, bytebuf_size(&w->msg));
  if (m == NULL) return -1;
  w->inbox[(w->inbox_head + w->inbox_count) % INBOX_MAX] = m;
  w->inbox_count++;
  return 0;
}

/* Payload bytes of the current message. A large binary message that is one
 * frame has a known size from its first bytes on: it is written straight
 * into its bytes object, which saves a copy and an assembly buffer that
 * would grow to twice its size. Anything else is assembled first. */
static int take_data(struct asgi_ws *w, const struct ws_event *ev) {
  const struct ws_reader *r = &w->reader;
  if (w->direct == NULL && bytebuf_size(&w->msg) == 0 && r->frame.fin &&
      r->frame.opcode == WS_BINARY && r->frame.len >= DIRECT_MIN && r->payload_off == ev->len) {
    w->direct = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)r->frame.len);
    if (w->direct == NULL) return -1;
  }
  if (w->direct == NULL) return bytebuf_append(&w->msg, ev->data, ev->len);
  /* The reader counted these bytes already: they start at payload_off - len. */
  memcpy(PyBytes_AS_STRING(w->direct) + (r->payload_off - ev->len), ev->data, ev->len);
  return 0;
}

static int on_event(struct asgi_stream *s, const struct ws_event *ev) {
  struct asgi_ws *w = s->ws;
  switch (ev->type) {
  case WS_EV_DATA:
    return take_data(w, ev);
  case WS_EV_MESSAGE_END:
    return deliver(s, ev->opcode);
  case WS_EV_PING:
    if (w->close_sent) return 0;
    if (queue_frame(s, WS_PONG, ev->data, ev->len) != 0) return -1;
    want_send(s);
    return 0;
  case WS_EV_PONG:
  case WS_EV_NONE:
    return 0;
  case WS_EV_CLOSE:
    mark_closed(w, ev->code, (const char *)ev->data, ev->len);
    /* Echo the code (RFC 6455 5.5.1) unless we closed first. */
    send_close(s, ev->code, "", 0);
    return 0;
  case WS_EV_ERROR:
    log_debug("WebSocket protocol error from the client: closing with %u", ev->code);
    mark_closed(w, ev->code, "", 0);
    send_close(s, ev->code, "", 0);
    return 0;
  }
  return 0;
}

/* Reads frames from the stream's input until the inbox is full or the
 * input runs out; returns the credit for what was read to the client. It
 * wakes nobody: a wake-up takes a message out, which may pump again, and a
 * pump that woke the receiver from in there would hand it a second message
 * while the first is still on its way. */
static void pump(struct asgi_stream *s) {
  struct asgi_ws *w = s->ws;
  if (w->pumping) return;
  w->pumping = true;
  size_t used_total = 0;
  while (!w->closed && w->inbox_count < INBOX_MAX) {
    struct ws_event ev;
    uint8_t *data = (uint8_t *)bytebuf_head(&s->in);
    size_t used = ws_reader_next(&w->reader, data, bytebuf_size(&s->in), &ev);
    bytebuf_consume(&s->in, used);
    used_total += used;
    if (ev.type == WS_EV_NONE && used == 0) break;
    if (on_event(s, &ev) != 0) {
      asgi_log_python_error("could not take a WebSocket message:");
      mark_closed(w, WS_INTERNAL, "", 0);
      send_close(s, WS_INTERNAL, "", 0);
    }
  }
  if (w->closed) bytebuf_consume(&s->in, bytebuf_size(&s->in)); /* nothing reads it now */
  w->pumping = false;
  if (used_total > 0 && s->conn) s->conn->proto->consumed(s->conn, s, used_total);
}

void asgi_ws_on_bytes(struct asgi_stream *s) {
  /* Anything from the client shows it is alive, a pong or not. */
  s->ws->last_rx_ms = server_now_ms();
  s->ws->ping_sent_ms = 0;
  pump(s);
  asgi_wake_receiver(s);
}

void asgi_ws_transport_closed(struct asgi_stream *s) {
  struct asgi_ws *w = s->ws;
  /* 1006: gone without a close frame; after our own close, our code. */
  if (w->close_sent) mark_closed(w, w->close_code ? w->close_code : WS_NORMAL, "", 0);
  else mark_closed(w, WS_ABNORMAL, "", 0);
  if (w->accepted && !w->close_sent) {
    w->close_sent = true; /* no close frame: just end our side */
    s->resp_body_done = true;
    want_send(s);
  }
  asgi_wake_receiver(s);
}

/* ---------------------------------------------------------------------------
 * receive() and send().
 */
static PyObject *message_of_type(PyObject *type) {
  PyObject *m = PyDict_New();
  if (m && PyDict_SetItem(m, W.type, type) != 0) Py_CLEAR(m);
  return m;
}

static PyObject *disconnect_message(struct asgi_ws *w) {
  PyObject *m = message_of_type(W.v_disconnect);
  PyObject *code = PyLong_FromUnsignedLong(w->close_code);
  if (m == NULL || code == NULL || PyDict_SetItem(m, W.code, code) != 0 ||
      PyDict_SetItem(m, W.reason, w->close_reason ? w->close_reason : W.empty_str) != 0)
    Py_CLEAR(m);
  Py_XDECREF(code);
  return m;
}

PyObject *asgi_ws_next_message(struct asgi_stream *s) {
  struct asgi_ws *w = s->ws;
  if (!w->connect_delivered) {
    w->connect_delivered = true;
    return message_of_type(W.v_connect);
  }
  if (w->inbox_count > 0) {
    PyObject *m = w->inbox[w->inbox_head];
    w->inbox_head = (w->inbox_head + 1) % INBOX_MAX;
    w->inbox_count--;
    if (bytebuf_size(&s->in) > 0) pump(s); /* room for one more */
    return m;
  }
  if (w->closed || s->disconnected) {
    if (!w->closed) mark_closed(w, WS_ABNORMAL, "", 0);
    return disconnect_message(w);
  }
  return NULL;
}

static PyObject *get_optional(PyObject *msg, PyObject *key) {
  PyObject *v = PyDict_GetItemWithError(msg, key);
  return v == Py_None ? NULL : v;
}

static PyObject *ws_accept(struct asgi_stream *s, PyObject *msg) {
  struct asgi_ws *w = s->ws;
  if (w->accepted || s->resp_started) {
    PyErr_SetString(PyExc_RuntimeError, "websocket.accept after the handshake was answered");
    return NULL;
  }
  PyObject *headers = get_optional(msg, W.headers);
  PyObject *sub = get_optional(msg, W.subprotocol);
  if (PyErr_Occurred()) return NULL;
  if (headers && asgi_validate_headers(headers) != 0) return NULL;
  PyObject *list = headers ? PySequence_List(headers) : PyList_New(0);
  if (list == NULL) return NULL;
  if (sub != NULL) {
    PyObject *value = PyUnicode_Check(sub) ? PyUnicode_AsEncodedString(sub, "latin-1", NULL) : NULL;
    if (value == NULL && !PyErr_Occurred())
      PyErr_SetString(PyExc_TypeError, "websocket.accept: subprotocol must be a str");
    PyObject *pair = value ? PyTuple_Pack(2, W.protocol_header, value) : NULL;
    Py_XDECREF(value);
    if (pair == NULL || PyList_Append(list, pair) != 0) {
      Py_XDECREF(pair);
      Py_DECREF(list);
      return NULL;
    }
    Py_DECREF(pair);
  }
  s->status = 200; /* HTTP/1.1 turns it into 101 */
  Py_XSETREF(s->resp_headers, list);
  s->resp_started = true;
  w->accepted = true;
  want_send(s);
  return asgi_send_backpressure(s);
}

static PyObject *ws_send_message(struct asgi_stream *s, PyObject *msg) {
  struct asgi_ws *w = s->ws;
  if (!w->accepted) {
    PyErr_SetString(PyExc_RuntimeError, "websocket.send before websocket.accept");
    return NULL;
  }
  if (w->close_sent || s->disconnected) {
    PyErr_SetString(client_disconnected, "the WebSocket is closed");
    return NULL;
  }
  PyObject *bytes = get_optional(msg, W.bytes);
  PyObject *text = bytes ? NULL : get_optional(msg, W.text);
  if (PyErr_Occurred()) return NULL;
  int rc;
  if (bytes != NULL) {
    PyObject *b = PyBytes_Check(bytes) ? Py_NewRef(bytes) : PyBytes_FromObject(bytes);
    if (b == NULL) return NULL;
    rc = queue_message(s, WS_BINARY, b);
    Py_DECREF(b);
  } else if (text != NULL && PyUnicode_Check(text)) {
    PyObject *b = PyUnicode_AsUTF8String(text);
    if (b == NULL) return NULL;
    rc = queue_message(s, WS_TEXT, b);
    Py_DECREF(b);
  } else {
    PyErr_SetString(PyExc_TypeError, "websocket.send needs \"bytes\" or a str \"text\"");
    return NULL;
  }
  if (rc != 0) return NULL;
  want_send(s);
  return asgi_send_backpressure(s);
}

static PyObject *ws_close(struct asgi_stream *s, PyObject *msg) {
  struct asgi_ws *w = s->ws;
  if (!w->accepted) {
    if (!s->resp_started) {
      /* Closing before accepting refuses the handshake (ASGI: 403). */
      w->denied = true;
      asgi_stream_respond_error(s, 403, "Forbidden\n");
    }
    return asgi_send_backpressure(s);
  }
  PyObject *code_obj = get_optional(msg, W.code);
  PyObject *reason_obj = get_optional(msg, W.reason);
  if (PyErr_Occurred()) return NULL;
  long code = code_obj ? PyLong_AsLong(code_obj) : WS_NORMAL;
  if (code == -1 && PyErr_Occurred()) return NULL;
  if (code < 0 || code > 4999 || !ws_close_code_valid((unsigned)code)) { /* 2**32 + 1000 is not 1000 */
    PyErr_Format(PyExc_ValueError, "websocket.close: %ld is not a close code one may send", code);
    return NULL;
  }
  Py_ssize_t rlen = 0;
  const char *reason = reason_obj ? PyUnicode_AsUTF8AndSize(reason_obj, &rlen) : "";
  if (reason == NULL) return NULL;
  if (!w->close_sent) w->close_code = (unsigned)code;
  send_close(s, (unsigned)code, reason, (size_t)rlen);
  return asgi_send_backpressure(s);
}

PyObject *asgi_ws_send(struct asgi_stream *s, PyObject *msg) {
  struct asgi_ws *w = s->ws;
  PyObject *type = PyDict_GetItemWithError(msg, W.type);
  if (type == NULL) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "message has no \"type\"");
    return NULL;
  }
  if (PyUnicode_Compare(type, W.v_send) == 0) return ws_send_message(s, msg);
  if (PyUnicode_Compare(type, W.v_accept) == 0) return ws_accept(s, msg);
  if (PyUnicode_Compare(type, W.v_close) == 0) return ws_close(s, msg);
  if (PyUnicode_Compare(type, W.v_resp_start) == 0) {
    if (w->accepted || s->resp_started) {
      PyErr_SetString(PyExc_RuntimeError, "websocket.http.response.start after the handshake");
      return NULL;
    }
    w->denied = true;
    return asgi_send_start(s, msg);
  }
  if (PyUnicode_Compare(type, W.v_resp_body) == 0) {
    if (!w->denied) {
      PyErr_SetString(PyExc_RuntimeError,
                      "websocket.http.response.body without websocket.http.response.start");
      return NULL;
    }
    return asgi_send_body(s, msg);
  }
  if (PyErr_Occurred()) return NULL;
  PyErr_Format(PyExc_RuntimeError, "unexpected ASGI message type %R for a websocket scope", type);
  return NULL;
}

/* ---------------------------------------------------------------------------
 * App end and graceful stop.
 */
void asgi_ws_app_finished(struct asgi_stream *s, PyObject *exc) {
  struct asgi_ws *w = s->ws;
  if (s->disconnected) return;
  if (w->accepted) {
    /* uvicorn's choices: 1000 when the app just returns, 1011 when it raised. */
    send_close(s, exc ? WS_INTERNAL : WS_NORMAL, "", 0);
  } else if (w->denied) {
    if (!s->resp_body_done && s->conn) s->conn->proto->abort_stream(s->conn, s);
  } else {
    asgi_stream_respond_error(s, exc ? 500 : 403, exc ? "Internal Server Error\n" : "Forbidden\n");
  }
}

void asgi_ws_tick(uint64_t now) {
  if (asgi_env.ws_ping_interval_ms == 0) return;
  for (struct asgi_ws *w = all_ws; w; w = w->next) {
    if (!w->accepted || w->close_sent || w->s->disconnected) continue;
    if (w->ping_sent_ms && now - w->ping_sent_ms >= asgi_env.ws_ping_timeout_ms) {
      static const char reason[] = "keepalive ping timeout";
      log_debug("WebSocket: no answer to our ping for %llu ms: closing with 1011",
                (unsigned long long)(now - w->ping_sent_ms));
      mark_closed(w, WS_INTERNAL, reason, sizeof reason - 1);
      send_close(w->s, WS_INTERNAL, reason, sizeof reason - 1);
      asgi_wake_receiver(w->s);
    } else if (!w->ping_sent_ms && now - w->last_rx_ms >= asgi_env.ws_ping_interval_ms) {
      w->ping_sent_ms = now;
      if (queue_frame(w->s, WS_PING, "h3gate", 6) != 0) PyErr_Clear();
      want_send(w->s);
    }
  }
}

size_t asgi_ws_going_away_all(void) {
  size_t n = 0;
  for (struct asgi_ws *w = all_ws; w; w = w->next) {
    if (!w->accepted || w->close_sent || w->s->disconnected) continue;
    static const char reason[] = "server shutting down";
    mark_closed(w, WS_GOING_AWAY, reason, sizeof reason - 1);
    send_close(w->s, WS_GOING_AWAY, reason, sizeof reason - 1);
    asgi_wake_receiver(w->s);
    n++;
  }
  return n;
}
