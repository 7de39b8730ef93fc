/* The ASGI bridge. See asgi.h for the model.
 *
 * Table of contents:
 *   constants and the Ready awaitable
 *   stream type: life cycle
 *   request head -> scope
 *   receive()
 *   send()
 *   app task completion
 *   protocol-facing response accessors
 */
#include "asgi_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "conn.h"
#include "forwarded.h"
#include "http_status.h"
#include "log.h"
#include "server.h"

struct asgi_env asgi_env;

static uint64_t active_tasks;
uint64_t asgi_active_tasks(void) { return active_tasks; }

/* ---------------------------------------------------------------------------
 * Constants: interned keys and values built once per process.
 */
static struct {
  PyObject *type, *asgi, *http_version, *server, *client, *scheme, *method, *root_path, *path,
      *raw_path, *query_string, *headers, *state, *extensions, *body, *more_body, *status,
      *trailers, *set_result, *done, *throw_, *message;
  PyObject *cancelled_error;
  PyObject *task_name, *name_kwnames;
  PyObject *v_http, *v_https, *v_http_request, *v_http_disconnect, *v_resp_start, *v_resp_body,
      *v_resp_trailers, *v_ext_trailers, *v_1_1, *v_2, *v_3, *v_1_0;
  PyObject *empty_bytes, *asgi_version, *empty_dict;
  PyObject *host_header;
} K;

int asgi_init_constants(void) {
#define INTERN(field, text)                                                                        \
  if ((K.field = PyUnicode_InternFromString(text)) == NULL) return -1
  INTERN(type, "type");
  INTERN(asgi, "asgi");
  INTERN(http_version, "http_version");
  INTERN(server, "server");
  INTERN(client, "client");
  INTERN(scheme, "scheme");
  INTERN(method, "method");
  INTERN(root_path, "root_path");
  INTERN(path, "path");
  INTERN(raw_path, "raw_path");
  INTERN(query_string, "query_string");
  INTERN(headers, "headers");
  INTERN(state, "state");
  INTERN(extensions, "extensions");
  INTERN(body, "body");
  INTERN(more_body, "more_body");
  INTERN(status, "status");
  INTERN(trailers, "trailers");
  INTERN(set_result, "set_result");
  INTERN(done, "done");
  INTERN(throw_, "throw");
  INTERN(task_name, "h3gate-request");
  INTERN(message, "message");
  INTERN(v_http, "http");
  INTERN(v_https, "https");
  INTERN(v_http_request, "http.request");
  INTERN(v_http_disconnect, "http.disconnect");
  INTERN(v_resp_start, "http.response.start");
  INTERN(v_resp_body, "http.response.body");
  INTERN(v_resp_trailers, "http.response.trailers");
  INTERN(v_ext_trailers, "http.response.trailers");
  INTERN(v_1_1, "1.1");
  INTERN(v_2, "2");
  INTERN(v_3, "3");
  INTERN(v_1_0, "1.0");
#undef INTERN
  K.empty_bytes = PyBytes_FromStringAndSize("", 0);
  K.host_header = PyBytes_FromString("host");
  K.asgi_version = Py_BuildValue("{s:s,s:s}", "version", "3.0", "spec_version", "2.3");
  K.empty_dict = PyDict_New();
  if (!K.empty_bytes || !K.host_header || !K.asgi_version || !K.empty_dict) return -1;
  K.name_kwnames = Py_BuildValue("(s)", "name");
  if (K.name_kwnames == NULL) return -1;
  PyObject *exceptions = PyImport_ImportModule("asyncio.exceptions");
  if (exceptions == NULL) return -1;
  K.cancelled_error = PyObject_GetAttrString(exceptions, "CancelledError");
  Py_DECREF(exceptions);
  if (K.cancelled_error == NULL) return -1;
  return 0;
}

/* An awaitable that is already complete: `await` returns its value (None
 * when value is NULL) without suspending the task. Through am_send the
 * coroutine gets the value with no StopIteration raised. */
typedef struct {
  PyObject_HEAD PyObject *value;
} ready_obj;

static PyTypeObject ready_type;
static PyObject *ready_none; /* shared: it carries no state */

PyObject *asgi_ready(PyObject *value /* stolen */) {
  ready_obj *r = PyObject_New(ready_obj, &ready_type);
  if (r == NULL) {
    Py_XDECREF(value);
    return NULL;
  }
  r->value = value;
  return (PyObject *)r;
}

static void ready_dealloc(ready_obj *r) {
  Py_XDECREF(r->value);
  PyObject_Free(r);
}

static PyObject *ready_await(PyObject *self) { return Py_NewRef(self); }

static PyObject *ready_iternext(ready_obj *r) {
  if (r->value != NULL) {
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, r->value);
    if (stop != NULL) {
      PyErr_SetObject(PyExc_StopIteration, stop);
      Py_DECREF(stop);
    }
  }
  return NULL; /* no exception set: StopIteration(None) */
}

static PySendResult ready_am_send(ready_obj *r, PyObject *arg, PyObject **result) {
  (void)arg;
  *result = Py_NewRef(r->value ? r->value : Py_None);
  return PYGEN_RETURN;
}

static PyAsyncMethods ready_async = {
    .am_await = ready_await,
    .am_send = (sendfunc)ready_am_send,
};

static PyTypeObject ready_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "_h3gate.Ready",
    .tp_basicsize = sizeof(ready_obj),
    .tp_dealloc = (destructor)ready_dealloc,
    .tp_as_async = &ready_async,
    .tp_iter = ready_await,
    .tp_iternext = (iternextfunc)ready_iternext,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An awaitable whose result is already known.",
};

/* ---------------------------------------------------------------------------
 * The stream object.
 */
static PyTypeObject stream_type;

static void stream_clear_out(struct asgi_stream *s) {
  while (s->out_count > 0) {
    Py_DECREF(s->out[s->out_head]);
    s->out_head = (s->out_head + 1) % s->out_cap;
    s->out_count--;
  }
  s->out_bytes = 0;
  s->out_off = 0;
}

static void stream_dealloc(struct asgi_stream *s) {
  Py_XDECREF(s->method);
  Py_XDECREF(s->raw_path);
  Py_XDECREF(s->query);
  Py_XDECREF(s->scheme);
  Py_XDECREF(s->headers);
  Py_XDECREF(s->xff);
  Py_XDECREF(s->xfp);
  Py_XDECREF(s->prefix);
  Py_XDECREF(s->fwd);
  Py_XDECREF(s->via);
  Py_XDECREF(s->recv_waiter);
  Py_XDECREF(s->send_waiter);
  Py_XDECREF(s->resp_headers);
  Py_XDECREF(s->resp_trailers);
  Py_XDECREF(s->log_client);
  Py_XDECREF(s->ws_protocols);
  asgi_ws_free(s);
  stream_clear_out(s);
  PyMem_Free(s->out);
  bytebuf_free(&s->in);
  PyObject_Free(s);
}

struct asgi_stream *asgi_stream_new(struct conn *c, int32_t id, const char *http_version) {
  struct asgi_stream *s = PyObject_New(struct asgi_stream, &stream_type);
  if (s == NULL) return NULL;
  /* PyObject_New leaves the body uninitialised. */
  memset((char *)s + sizeof(PyObject), 0, sizeof *s - sizeof(PyObject));
  s->conn = c;
  s->id = id;
  s->http_version = http_version;
  s->headers = PyList_New(0);
  if (s->headers == NULL) {
    Py_DECREF(s);
    return NULL;
  }
  return s;
}

void asgi_stream_release(struct asgi_stream *s) {
  s->conn = NULL;
  s->proto_data = NULL;
  if (!s->resp_complete) asgi_stream_on_disconnect(s);
  else if (s->ws) asgi_ws_transport_closed(s); /* after our close frame: the app hears it */
  Py_DECREF(s);
}

void asgi_stream_list_add(struct asgi_stream_list *l, struct asgi_stream *s) {
  s->list_prev = NULL;
  s->list_next = l->head;
  if (l->head) l->head->list_prev = s;
  l->head = s;
}

void asgi_stream_list_remove(struct asgi_stream_list *l, struct asgi_stream *s) {
  if (s->list_prev) s->list_prev->list_next = s->list_next;
  else if (l->head == s) l->head = s->list_next;
  if (s->list_next) s->list_next->list_prev = s->list_prev;
  s->list_prev = s->list_next = NULL;
}

void asgi_stream_list_release_all(struct asgi_stream_list *l) {
  while (l->head) {
    struct asgi_stream *s = l->head;
    asgi_stream_list_remove(l, s);
    asgi_stream_release(s);
  }
}

int32_t asgi_stream_id(const struct asgi_stream *s) { return s->id; }
void asgi_stream_set_id(struct asgi_stream *s, int32_t id) { s->id = id; }
void *asgi_stream_proto_data(const struct asgi_stream *s) { return s->proto_data; }
void asgi_stream_set_proto_data(struct asgi_stream *s, void *d) { s->proto_data = d; }
size_t asgi_stream_header_bytes(const struct asgi_stream *s) { return s->header_bytes; }
bool asgi_stream_wants_continue(const struct asgi_stream *s) { return s->expect_continue; }
bool asgi_stream_is_head(const struct asgi_stream *s) { return s->is_head; }
bool asgi_stream_app_finished(const struct asgi_stream *s) { return s->app_done; }

/* ---------------------------------------------------------------------------
 * Request head.
 */
int asgi_stream_set_method(struct asgi_stream *s, const char *m, size_t len) {
  Py_XDECREF(s->method);
  s->method = PyUnicode_DecodeLatin1(m, (Py_ssize_t)len, NULL);
  s->is_head = len == 4 && memcmp(m, "HEAD", 4) == 0;
  s->header_bytes += len;
  return s->method ? 0 : -1;
}

int asgi_stream_set_target(struct asgi_stream *s, const char *t, size_t len) {
  const char *q = memchr(t, '?', len);
  size_t path_len = q ? (size_t)(q - t) : len;
  Py_XDECREF(s->raw_path);
  Py_XDECREF(s->query);
  /* an empty path (absolute-form "http://host?q") is "/" */
  s->raw_path = path_len ? PyBytes_FromStringAndSize(t, (Py_ssize_t)path_len) : PyBytes_FromString("/");
  s->query = q ? PyBytes_FromStringAndSize(q + 1, (Py_ssize_t)(len - path_len - 1))
               : Py_NewRef(K.empty_bytes);
  s->header_bytes += len;
  return s->raw_path && s->query ? 0 : -1;
}

int asgi_stream_set_scheme(struct asgi_stream *s, const char *v, size_t len) {
  Py_XDECREF(s->scheme);
  if (len == 5 && memcmp(v, "https", 5) == 0)
    s->scheme = Py_NewRef(K.v_https);
  else if (len == 4 && memcmp(v, "http", 4) == 0)
    s->scheme = Py_NewRef(K.v_http);
  else
    s->scheme = PyUnicode_DecodeLatin1(v, (Py_ssize_t)len, NULL);
  return s->scheme ? 0 : -1;
}

static int append_header(struct asgi_stream *s, PyObject *name, const char *value, size_t vlen) {
  PyObject *v = PyBytes_FromStringAndSize(value, (Py_ssize_t)vlen);
  if (v == NULL) return -1;
  PyObject *pair = PyTuple_Pack(2, name, v);
  Py_DECREF(v);
  if (pair == NULL) return -1;
  int rc = PyList_Append(s->headers, pair);
  Py_DECREF(pair);
  return rc;
}

int asgi_stream_set_authority(struct asgi_stream *s, const char *v, size_t len) {
  s->has_authority = true;
  s->header_bytes += len;
  return append_header(s, K.host_header, v, len);
}

unsigned asgi_stream_host_fields(const struct asgi_stream *s) { return s->host_fields; }

int asgi_stream_override_host(struct asgi_stream *s, const char *v, size_t len) {
  PyObject *value = PyBytes_FromStringAndSize(v, (Py_ssize_t)len);
  PyObject *pair = value ? PyTuple_Pack(2, K.host_header, value) : NULL;
  Py_XDECREF(value);
  if (pair == NULL) return -1;
  Py_ssize_t i = 0, n = PyList_GET_SIZE(s->headers);
  while (i < n && !PyObject_RichCompareBool(PyTuple_GET_ITEM(PyList_GET_ITEM(s->headers, i), 0),
                                            K.host_header, Py_EQ))
    i++;
  /* the Host line's place, or first, where :authority goes */
  int rc = i < n ? PyList_SetItem(s->headers, i, pair) : PyList_Insert(s->headers, 0, pair);
  if (i == n) Py_DECREF(pair); /* SetItem stole it; Insert did not */
  if (i == n && s->cookie_at > 0) s->cookie_at++; /* moved one place down */
  s->has_authority = true;
  return rc;
}

static bool name_is(const char *name, size_t nlen, const char *lit, size_t litlen) {
  return nlen == litlen && memcmp(name, lit, nlen) == 0;
}
#define NAME_IS(lit) name_is(name, nlen, lit, sizeof(lit) - 1)

static void remember(PyObject **slot, PyObject *tuple) {
  Py_XSETREF(*slot, Py_NewRef(PyTuple_GET_ITEM(tuple, 1)));
}

/* A field that may come as several lines, kept as one comma-joined value. */
static int join_value(PyObject **slot, const char *value, size_t vlen) {
  size_t old = *slot ? (size_t)PyBytes_GET_SIZE(*slot) : 0;
  PyObject *v = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(old + (old ? 1 : 0) + vlen));
  if (v == NULL) return -1;
  char *p = PyBytes_AS_STRING(v);
  if (old) {
    memcpy(p, PyBytes_AS_STRING(*slot), old);
    p[old++] = ',';
  }
  memcpy(p + old, value, vlen);
  Py_XSETREF(*slot, v);
  return 0;
}

/* RFC 9113 8.2.3 and RFC 9114 4.2.1: HTTP/2 and HTTP/3 clients may split
 * Cookie into crumbs, which MUST be joined with "; " before a generic
 * application sees them. Apps read one field: Starlette's request.cookies
 * took only the first crumb, and Django joins repeated fields with ",",
 * which its cookie parser reads as part of a value. */
static int join_cookie(struct asgi_stream *s, const char *value, size_t vlen) {
  PyObject *pair = PyList_GET_ITEM(s->headers, s->cookie_at - 1);
  PyObject *old = PyTuple_GET_ITEM(pair, 1);
  size_t olen = (size_t)PyBytes_GET_SIZE(old);
  PyObject *v = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(olen + 2 + vlen));
  if (v == NULL) return -1;
  char *p = PyBytes_AS_STRING(v);
  memcpy(p, PyBytes_AS_STRING(old), olen);
  memcpy(p + olen, "; ", 2);
  memcpy(p + olen + 2, value, vlen);
  PyObject *joined = PyTuple_Pack(2, PyTuple_GET_ITEM(pair, 0), v);
  Py_DECREF(v);
  if (joined == NULL) return -1;
  return PyList_SetItem(s->headers, s->cookie_at - 1, joined); /* takes joined */
}

int asgi_stream_add_header(struct asgi_stream *s, const char *name, size_t nlen,
                           const char *value, size_t vlen) {
  s->header_bytes += nlen + vlen + 32; /* RFC 9113 6.5.2 accounting */
  if (NAME_IS("host")) {
    s->host_fields++;
    /* With :authority present the host header is redundant (RFC 9113 8.3.1). */
    if (s->has_authority) return 0;
  }
  if (s->cookie_at > 0 && NAME_IS("cookie")) return join_cookie(s, value, vlen);
  PyObject *n = PyBytes_FromStringAndSize(name, (Py_ssize_t)nlen);
  if (n == NULL) return -1;
  int rc = append_header(s, n, value, vlen);
  Py_DECREF(n);
  if (rc != 0) return -1;
  PyObject *pair = PyList_GET_ITEM(s->headers, PyList_GET_SIZE(s->headers) - 1);
  switch (nlen) {
  case 2:
    if (NAME_IS("te")) {
      /* te: trailers (possibly in a list) announces the trailers extension. */
      for (size_t i = 0; i + 8 <= vlen; i++)
        if (strncasecmp(value + i, "trailers", 8) == 0) s->te_trailers = true;
    }
    break;
  case 3:
    if (NAME_IS("via") && s->via == NULL) remember(&s->via, pair); /* the first entry counts */
    break;
  case 6:
    if (NAME_IS("expect") && vlen == 12 && strncasecmp(value, "100-continue", 12) == 0)
      s->expect_continue = true;
    else if (NAME_IS("cookie"))
      s->cookie_at = PyList_GET_SIZE(s->headers);
    break;
  case 9:
    if (NAME_IS("forwarded")) remember(&s->fwd, pair);
    break;
  case 15:
    if (NAME_IS("x-forwarded-for")) remember(&s->xff, pair);
    break;
  case 17:
    if (NAME_IS("x-forwarded-proto")) remember(&s->xfp, pair);
    break;
  case 18:
    if (NAME_IS("x-forwarded-prefix")) remember(&s->prefix, pair);
    break;
  case 22:
    if (NAME_IS("sec-websocket-protocol")) return join_value(&s->ws_protocols, value, vlen);
    break;
  }
  return 0;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decodes the path and makes it a str, as uvicorn does (invalid
 * UTF-8 is replaced rather than refused). */
static PyObject *decode_path(PyObject *raw) {
  const char *p = PyBytes_AS_STRING(raw);
  Py_ssize_t n = PyBytes_GET_SIZE(raw);
  if (memchr(p, '%', (size_t)n) == NULL) return PyUnicode_DecodeUTF8(p, n, "replace");
  char *buf = PyMem_Malloc((size_t)n + 1);
  if (buf == NULL) return PyErr_NoMemory();
  Py_ssize_t out = 0;
  for (Py_ssize_t i = 0; i < n; i++) {
    int hi, lo;
    if (p[i] == '%' && i + 2 < n && (hi = hexval(p[i + 1])) >= 0 &&
        (lo = hexval(p[i + 2])) >= 0) {
      buf[out++] = (char)(hi * 16 + lo);
      i += 2;
    } else {
      buf[out++] = p[i];
    }
  }
  PyObject *s = PyUnicode_DecodeUTF8(buf, out, "replace");
  PyMem_Free(buf);
  return s;
}

/* Client, scheme and protocol as a trusted proxy reports them. */
static void apply_forwarded(struct asgi_stream *s, PyObject **client, PyObject **scheme,
                            PyObject **version) {
  struct forwarded_client fc = {.port = -1};
  char proto[16] = "";
  bool have_client = false;
  if (s->fwd) {
    if (forwarded_rfc7239_client(PyBytes_AS_STRING(s->fwd), (size_t)PyBytes_GET_SIZE(s->fwd),
                                 &server_config()->forwarded_allow, &fc, proto, sizeof proto) == 0 &&
        fc.host[0] != '\0')
      have_client = true;
  }
  if (!have_client && s->xff) {
    have_client = forwarded_xff_client(PyBytes_AS_STRING(s->xff),
                                       (size_t)PyBytes_GET_SIZE(s->xff),
                                       &server_config()->forwarded_allow, &fc) == 0;
  }
  if (have_client) {
    PyObject *c = Py_BuildValue("(si)", fc.host, fc.port < 0 ? 0 : fc.port);
    if (c) Py_SETREF(*client, c);
    else PyErr_Clear();
  }
  if (s->xfp) {
    const char *v = PyBytes_AS_STRING(s->xfp);
    Py_ssize_t n = PyBytes_GET_SIZE(s->xfp);
    /* The nearest proxy's value is the last one. */
    const char *comma = memrchr(v, ',', (size_t)n);
    if (comma) n -= (comma + 1 - v), v = comma + 1;
    while (n > 0 && *v == ' ') v++, n--;
    if (n == 5 && strncasecmp(v, "https", 5) == 0) Py_SETREF(*scheme, Py_NewRef(K.v_https));
    else if (n == 4 && strncasecmp(v, "http", 4) == 0) Py_SETREF(*scheme, Py_NewRef(K.v_http));
  } else if (strcmp(proto, "https") == 0) {
    Py_SETREF(*scheme, Py_NewRef(K.v_https));
  } else if (strcmp(proto, "http") == 0) {
    Py_SETREF(*scheme, Py_NewRef(K.v_http));
  }
  if (s->via) {
    char v[8];
    if (forwarded_via_protocol(PyBytes_AS_STRING(s->via), (size_t)PyBytes_GET_SIZE(s->via), v,
                               sizeof v) == 0) {
      PyObject *ver = strcmp(v, "3") == 0     ? K.v_3
                      : strcmp(v, "2") == 0   ? K.v_2
                      : strcmp(v, "1.1") == 0 ? K.v_1_1
                      : strcmp(v, "1.0") == 0 ? K.v_1_0
                                              : NULL;
      if (ver) Py_SETREF(*version, Py_NewRef(ver));
    }
  }
}

/* The app's root_path: what a trusted proxy took off the path in front of
 * it (X-Forwarded-Prefix, as h3gate's strip_prefix routes send), else
 * --root-path. */
static PyObject *root_path_of(const struct asgi_stream *s) {
  if (s->prefix && s->conn->peer_trusted && PyBytes_GET_SIZE(s->prefix) > 1 &&
      PyBytes_AS_STRING(s->prefix)[0] == '/') {
    PyObject *p = decode_path(s->prefix);
    if (p) return p;
    PyErr_Clear();
  }
  return Py_NewRef(asgi_env.root_path);
}

static PyObject *version_object(const char *v) {
  return strcmp(v, "2") == 0 ? K.v_2 : strcmp(v, "1.0") == 0 ? K.v_1_0 : K.v_1_1;
}

static PyObject *build_scope(struct asgi_stream *s) {
  struct conn *c = s->conn;
  PyObject *scope = PyDict_New();
  if (scope == NULL) return NULL;
  PyObject *client = Py_NewRef(c->client ? c->client : Py_None);
  /* The connection is cleartext: only a trusted proxy's :scheme (and its
   * forwarding fields, below) may say https, as with uvicorn. */
  PyObject *scheme = Py_NewRef(c->peer_trusted && s->scheme ? s->scheme : K.v_http);
  PyObject *version = Py_NewRef(version_object(s->http_version));
  if (c->peer_trusted) apply_forwarded(s, &client, &scheme, &version);
  if (asgi_env.access_log) {
    s->log_client = Py_NewRef(client);
    s->log_version = PyUnicode_AsUTF8(version);
  }
  PyObject *path = s->raw_path ? decode_path(s->raw_path) : NULL;
  PyObject *root_path = root_path_of(s);
  PyObject *asgi = PyDict_Copy(K.asgi_version);
  PyObject *state = asgi_env.state ? PyDict_Copy(asgi_env.state) : PyDict_New();
  PyObject *ext = PyDict_New();
  if (path == NULL || asgi == NULL || state == NULL || ext == NULL) goto err;
  if (s->te_trailers && PyDict_SetItem(ext, K.v_ext_trailers, K.empty_dict) != 0) goto err;
  PyObject *server = listener_server_tuple(c->listener);
  if (PyDict_SetItem(scope, K.type, K.v_http) || PyDict_SetItem(scope, K.asgi, asgi) ||
      PyDict_SetItem(scope, K.http_version, version) ||
      PyDict_SetItem(scope, K.server, server) || PyDict_SetItem(scope, K.client, client) ||
      PyDict_SetItem(scope, K.scheme, scheme) ||
      (s->ws == NULL && PyDict_SetItem(scope, K.method, s->method)) ||
      PyDict_SetItem(scope, K.root_path, root_path) ||
      PyDict_SetItem(scope, K.path, path) || PyDict_SetItem(scope, K.raw_path, s->raw_path) ||
      PyDict_SetItem(scope, K.query_string, s->query) ||
      PyDict_SetItem(scope, K.headers, s->headers) || PyDict_SetItem(scope, K.state, state) ||
      PyDict_SetItem(scope, K.extensions, ext))
    goto err;
  if (s->ws && asgi_ws_fill_scope(s, scope, ext) != 0) goto err;
  Py_DECREF(client);
  Py_DECREF(scheme);
  Py_DECREF(version);
  Py_DECREF(path);
  Py_DECREF(root_path);
  Py_DECREF(asgi);
  Py_DECREF(state);
  Py_DECREF(ext);
  return scope;

err:
  Py_DECREF(scope);
  Py_XDECREF(client);
  Py_XDECREF(scheme);
  Py_XDECREF(version);
  Py_XDECREF(path);
  Py_XDECREF(root_path);
  Py_XDECREF(asgi);
  Py_XDECREF(state);
  Py_XDECREF(ext);
  return NULL;
}

static PyMethodDef receive_def, send_def;

typedef struct {
  PyObject_HEAD PyObject *coro;
  struct asgi_stream *stream; /* strong reference until the app ends */
} runner_obj;
static PyTypeObject runner_type;

void asgi_log_python_error(const char *what) {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  if (value && tb) PyException_SetTraceback(value, tb);
  if (value && asgi_env.log_exception) {
    PyObject *msg = PyUnicode_FromString(what);
    PyObject *r = msg ? PyObject_CallFunctionObjArgs(asgi_env.log_exception, msg, value, NULL)
                      : NULL;
    Py_XDECREF(msg);
    if (r == NULL) {
      PyErr_Clear();
      log_error("%s (and the traceback could not be formatted)", what);
    }
    Py_XDECREF(r);
  } else {
    log_error("%s", what);
  }
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
}

static void set_internal_error(struct asgi_stream *s) {
  static const char text[] = "Internal Server Error\n";
  asgi_stream_respond_error(s, 500, text);
}

int asgi_stream_start_app(struct asgi_stream *s) {
  PyObject *scope = NULL, *recv = NULL, *send = NULL, *coro = NULL, *task = NULL;
  runner_obj *runner = NULL;
  if (s->method == NULL || s->raw_path == NULL) {
    asgi_stream_respond_error(s, 400, "Bad Request: missing method or path\n");
    return -1;
  }
  /* --limit-concurrency, as uvicorn's: past it a quick 503 (a gateway in
   * front tries another process or server) beats a queue nobody bounds. */
  uint64_t limit = server_config()->limit_concurrency;
  if (limit && active_tasks >= limit) {
    asgi_stream_respond_error(s, 503, "Service Unavailable: the worker is at its --limit-concurrency\n");
    return -1;
  }
  scope = build_scope(s);
  recv = PyCFunction_NewEx(&receive_def, (PyObject *)s, NULL);
  send = PyCFunction_NewEx(&send_def, (PyObject *)s, NULL);
  if (scope == NULL || recv == NULL || send == NULL) goto err;
  coro = PyObject_CallFunctionObjArgs(asgi_env.app, scope, recv, send, NULL);
  if (coro == NULL) goto err;
  runner = PyObject_New(runner_obj, &runner_type);
  if (runner == NULL) goto err;
  runner->coro = coro;
  runner->stream = (struct asgi_stream *)Py_NewRef(s);
  coro = NULL;
  s->app_running = true;
  active_tasks++;
  /* A shared name spares asyncio a "Task-%d" string per request. */
  PyObject *args[] = {(PyObject *)runner, K.task_name};
  task = PyObject_Vectorcall(asgi_env.create_task, args, 1, K.name_kwnames);
  Py_DECREF(runner);
  if (task == NULL) {
    /* runner_dealloc already counted the app as finished */
    asgi_log_python_error("could not start the ASGI app for a request:");
    goto out;
  }
  Py_DECREF(task); /* the loop keeps it while it runs */
  goto out;

err:
  asgi_log_python_error("could not start the ASGI app for a request:");
  if (coro && PyCoro_CheckExact(coro)) {
    PyObject *x = PyObject_CallMethod(coro, "close", NULL);
    Py_XDECREF(x);
    PyErr_Clear();
  }
  Py_XDECREF(coro);
  s->app_done = true;
  set_internal_error(s);
out:
  Py_XDECREF(scope);
  Py_XDECREF(recv);
  Py_XDECREF(send);
  return s->app_done && !s->app_running ? -1 : 0;
}

/* ---------------------------------------------------------------------------
 * receive()
 */
static PyObject *make_message(PyObject *type, PyObject *body, bool more) {
  PyObject *m = PyDict_New();
  if (m == NULL) return NULL;
  if (PyDict_SetItem(m, K.type, type) != 0) goto err;
  if (body != NULL) {
    if (PyDict_SetItem(m, K.body, body) || PyDict_SetItem(m, K.more_body, more ? Py_True : Py_False))
      goto err;
  }
  return m;
err:
  Py_DECREF(m);
  return NULL;
}

/* The next message for the app, or NULL with no error when it must wait. */
static PyObject *next_message(struct asgi_stream *s) {
  if (s->ws) return asgi_ws_next_message(s);
  if (!s->in_delivered) {
    size_t n = bytebuf_size(&s->in);
    if (n > 0 || s->in_done) {
      PyObject *body = n ? PyBytes_FromStringAndSize((const char *)bytebuf_head(&s->in),
                                                     (Py_ssize_t)n)
                         : Py_NewRef(K.empty_bytes);
      if (body == NULL) return NULL;
      PyObject *m = make_message(K.v_http_request, body, !s->in_done);
      Py_DECREF(body);
      if (m == NULL) return NULL;
      bytebuf_consume(&s->in, n);
      if (s->in_done) s->in_delivered = true;
      if (n > 0 && s->conn) s->conn->proto->consumed(s->conn, s, n);
      return m;
    }
    if (s->disconnected) return make_message(K.v_http_disconnect, NULL, false);
    if (s->expect_continue && !s->continue_sent && s->conn) {
      s->continue_sent = true;
      s->conn->proto->send_continue(s->conn, s);
    }
    return NULL;
  }
  /* After the body: http.disconnect once the response is out or the client left. */
  if (s->disconnected || s->resp_complete) return make_message(K.v_http_disconnect, NULL, false);
  return NULL;
}

static bool future_pending(PyObject *fut) {
  if (fut == NULL) return false;
  PyObject *d = PyObject_CallMethodNoArgs(fut, K.done);
  if (d == NULL) {
    PyErr_Clear();
    return false;
  }
  bool pending = d == Py_False;
  Py_DECREF(d);
  return pending;
}

/* Completes a future the caller knows is pending. */
static void resolve_pending(PyObject **waiter, PyObject *value) {
  PyObject *fut = *waiter;
  *waiter = NULL;
  PyObject *r = PyObject_CallMethodOneArg(fut, K.set_result, value);
  if (r == NULL) asgi_log_python_error("could not wake the app:");
  Py_XDECREF(r);
  Py_DECREF(fut);
}

void asgi_resolve(PyObject **waiter, PyObject *value) {
  if (future_pending(*waiter)) resolve_pending(waiter, value);
  else Py_CLEAR(*waiter);
}

void asgi_wake_receiver(struct asgi_stream *s) {
  if (s->recv_waiter == NULL) return;
  if (!future_pending(s->recv_waiter)) {
    /* Cancelled by the app (a disconnect watcher that gave up): keep the data. */
    Py_CLEAR(s->recv_waiter);
    return;
  }
  PyObject *m = next_message(s);
  if (m == NULL) {
    if (PyErr_Occurred()) asgi_log_python_error("could not build an ASGI message:");
    return;
  }
  resolve_pending(&s->recv_waiter, m); /* checked above: one done() call per message, not two */
  Py_DECREF(m);
}

static PyObject *stream_receive(struct asgi_stream *s, PyObject *unused) {
  (void)unused;
  if (s->recv_waiter != NULL) {
    if (future_pending(s->recv_waiter)) {
      PyErr_SetString(PyExc_RuntimeError, "receive() awaited twice at the same time");
      return NULL;
    }
    Py_CLEAR(s->recv_waiter);
  }
  PyObject *m = next_message(s);
  if (m != NULL) return asgi_ready(m);
  if (PyErr_Occurred()) return NULL;
  PyObject *fut = PyObject_CallNoArgs(asgi_env.create_future);
  if (fut == NULL) return NULL;
  s->recv_waiter = Py_NewRef(fut);
  return fut;
}

int asgi_stream_on_body(struct asgi_stream *s, const uint8_t *data, size_t len) {
  if (s->app_done || s->in_delivered) return 0; /* nobody will read it */
  if (bytebuf_append(&s->in, data, len) != 0) return -1;
  if (s->ws) {
    asgi_ws_on_bytes(s);
    return 0;
  }
  asgi_wake_receiver(s);
  return 0;
}

void asgi_stream_on_body_end(struct asgi_stream *s) {
  s->in_done = true;
  if (s->ws) asgi_ws_transport_closed(s);
  asgi_wake_receiver(s);
}

size_t asgi_stream_buffered_body(const struct asgi_stream *s) { return bytebuf_size(&s->in); }

void asgi_stream_on_disconnect(struct asgi_stream *s) {
  if (s->disconnected) return;
  s->disconnected = true;
  stream_clear_out(s);
  if (s->ws) asgi_ws_transport_closed(s);
  asgi_wake_receiver(s);
  if (s->send_waiter) asgi_resolve(&s->send_waiter, Py_None);
}

/* ---------------------------------------------------------------------------
 * send()
 */
int asgi_out_push(struct asgi_stream *s, PyObject *bytes) {
  if (s->out_count == s->out_cap) {
    size_t cap = s->out_cap ? s->out_cap * 2 : OUT_RING_MIN;
    PyObject **ring = PyMem_Malloc(cap * sizeof *ring);
    if (ring == NULL) return -1;
    for (size_t i = 0; i < s->out_count; i++) ring[i] = s->out[(s->out_head + i) % s->out_cap];
    PyMem_Free(s->out);
    s->out = ring;
    s->out_cap = cap;
    s->out_head = 0;
  }
  s->out[(s->out_head + s->out_count) % s->out_cap] = Py_NewRef(bytes);
  s->out_count++;
  s->out_bytes += (size_t)PyBytes_GET_SIZE(bytes);
  return 0;
}

/* Raises exc with fmt, whose one %R shows p[0..len) as Python shows bytes
 * (any byte legible). */
static void raise_showing(PyObject *exc, const char *fmt, const char *p, Py_ssize_t len) {
  PyObject *shown = PyBytes_FromStringAndSize(p, len);
  if (shown) PyErr_Format(exc, fmt, shown);
  Py_XDECREF(shown);
}

/* One field the app sends: a token for a name, and a value that cannot
 * end the line early (that would split the response). */
static int check_field(const char *name, Py_ssize_t nl, const char *value, Py_ssize_t vl) {
  bool bad_name = nl == 0;
  for (Py_ssize_t j = 0; j < nl && !bad_name; j++) {
    unsigned char ch = (unsigned char)name[j];
    bad_name = ch <= ' ' || ch == ':' || ch >= 0x7f;
  }
  if (bad_name) {
    raise_showing(PyExc_ValueError, "invalid header name %R", name, nl);
    return -1;
  }
  for (Py_ssize_t j = 0; j < vl; j++) {
    if (value[j] == '\r' || value[j] == '\n' || value[j] == '\0') {
      PyErr_SetString(PyExc_ValueError, "header value contains CR, LF or NUL");
      return -1;
    }
  }
  return 0;
}

/* A Content-Length value: digits between optional blanks, at most 18 of
 * them (so no overflow). */
static int parse_length(const char *v, Py_ssize_t len, uint64_t *out) {
  while (len > 0 && (*v == ' ' || *v == '\t')) v++, len--;
  while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t')) len--;
  if (len == 0 || len > 18) return -1;
  uint64_t n = 0;
  for (Py_ssize_t i = 0; i < len; i++) {
    if (v[i] < '0' || v[i] > '9') return -1;
    n = n * 10 + (uint64_t)(v[i] - '0');
  }
  *out = n;
  return 0;
}

/* The app's own Content-Length, into s: one field of digits. More than
 * one (even equal) is refused, as nghttp2 refuses it upstream. */
static int note_length(struct asgi_stream *s, const char *value, Py_ssize_t vl) {
  if (s->resp_has_length) {
    PyErr_SetString(PyExc_ValueError, "more than one Content-Length in the response");
    return -1;
  }
  if (parse_length(value, vl, &s->resp_length) != 0) {
    raise_showing(PyExc_ValueError, "invalid Content-Length in the response: %R", value, vl);
    return -1;
  }
  s->resp_has_length = true;
  return 0;
}

/* One pass over the fields an app sends: each checked, the whole weighed,
 * and, for a response head (length_of), its Content-Length and whether it
 * has a Date noted. */
static int scan_fields(PyObject *headers, struct asgi_stream *length_of) {
  PyObject *seq = PySequence_Fast(headers, "headers must be a list of [name, value] pairs");
  if (seq == NULL) return -1;
  size_t size = 0;
  int rc = 0;
  for (Py_ssize_t i = 0; rc == 0 && i < PySequence_Fast_GET_SIZE(seq); i++) {
    const char *name, *value;
    Py_ssize_t nl, vl;
    rc = asgi_header_item(PySequence_Fast_GET_ITEM(seq, i), &name, &nl, &value, &vl);
    if (rc == 0) rc = check_field(name, nl, value, vl);
    if (rc == 0 && length_of && nl == 14 && strncasecmp(name, "content-length", 14) == 0)
      rc = note_length(length_of, value, vl);
    if (length_of && nl == 4 && strncasecmp(name, "date", 4) == 0) length_of->resp_has_date = true;
    size += (size_t)nl + (size_t)vl + 32;
  }
  Py_DECREF(seq);
  if (rc == 0 && size > ASGI_HEAD_MAX) {
    PyErr_Format(PyExc_ValueError, "header fields too large: %zu bytes (counted as HTTP/2 does), at most %d",
                 size, ASGI_HEAD_MAX);
    rc = -1;
  }
  return rc;
}

int asgi_validate_headers(PyObject *headers) { return scan_fields(headers, NULL); }

int asgi_header_item(PyObject *item, const char **name, Py_ssize_t *nlen, const char **value,
                     Py_ssize_t *vlen) {
  PyObject *n, *v;
  if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 2) {
    n = PyTuple_GET_ITEM(item, 0);
    v = PyTuple_GET_ITEM(item, 1);
  } else if (PyList_Check(item) && PyList_GET_SIZE(item) == 2) {
    n = PyList_GET_ITEM(item, 0);
    v = PyList_GET_ITEM(item, 1);
  } else {
    PyErr_SetString(PyExc_TypeError, "each header must be a [name, value] pair");
    return -1;
  }
  if (!PyBytes_Check(n) || !PyBytes_Check(v)) {
    PyErr_SetString(PyExc_TypeError, "header names and values must be bytes");
    return -1;
  }
  *name = PyBytes_AS_STRING(n);
  *nlen = PyBytes_GET_SIZE(n);
  *value = PyBytes_AS_STRING(v);
  *vlen = PyBytes_GET_SIZE(v);
  return 0;
}

/* The body must be as long as the app's Content-Length says: a longer one
 * would run into the next response on an HTTP/1.1 connection, a shorter
 * one would leave the client waiting for the rest. The app hears of it
 * from send(), and the stream is cut. */
static int check_declared_length(const struct asgi_stream *s, size_t n, bool more_body) {
  if (!s->resp_has_length || s->is_head || s->status < 200 || s->status == 204 || s->status == 304)
    return 0; /* no body goes out with these, whatever the length says */
  unsigned long long total = s->resp_sent + n, declared = s->resp_length;
  if (total > declared)
    PyErr_Format(PyExc_RuntimeError, "response body longer than its Content-Length of %llu bytes",
                 declared);
  else if (!more_body && total < declared)
    PyErr_Format(PyExc_RuntimeError, "response body ended at %llu of its Content-Length of %llu bytes",
                 total, declared);
  return PyErr_Occurred() ? -1 : 0;
}

/* headers without their Content-Length fields, as a new list. */
static PyObject *without_length(PyObject *headers) {
  PyObject *seq = PySequence_Fast(headers, "headers must be a list of [name, value] pairs");
  PyObject *kept = seq ? PyList_New(0) : NULL;
  for (Py_ssize_t i = 0; kept && i < PySequence_Fast_GET_SIZE(seq); i++) {
    PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
    const char *name, *value;
    Py_ssize_t nl, vl;
    if (asgi_header_item(item, &name, &nl, &value, &vl) != 0) Py_CLEAR(kept); /* checked already */
    else if (!(nl == 14 && strncasecmp(name, "content-length", 14) == 0) && PyList_Append(kept, item) != 0)
      Py_CLEAR(kept);
  }
  Py_XDECREF(seq);
  return kept;
}

PyObject *asgi_send_start(struct asgi_stream *s, PyObject *msg) {
  if (s->resp_started) {
    PyErr_SetString(PyExc_RuntimeError, "http.response.start sent twice");
    return NULL;
  }
  PyObject *status = PyDict_GetItemWithError(msg, K.status);
  if (status == NULL) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "http.response.start needs a status");
    return NULL;
  }
  long code = PyLong_AsLong(status);
  if (code == -1 && PyErr_Occurred()) return NULL;
  if (code < 100 || code > 999) {
    PyErr_Format(PyExc_ValueError, "invalid HTTP status %ld", code);
    return NULL;
  }
  if (code < 200) { /* an HTTP/1.1 client would wait for the final one forever */
    PyErr_Format(PyExc_ValueError, "HTTP status %ld is informational, not a response's status", code);
    return NULL;
  }
  PyObject *headers = PyDict_GetItemWithError(msg, K.headers);
  if (headers == NULL && PyErr_Occurred()) return NULL;
  if (headers != NULL && scan_fields(headers, s) != 0) return NULL;
  PyObject *trailers = PyDict_GetItemWithError(msg, K.trailers);
  if (trailers == NULL && PyErr_Occurred()) return NULL;
  s->status = (int)code;
  if (code == 204 && s->resp_has_length) {
    /* A 204 has no Content-Length (RFC 9110 8.6, a MUST): nginx drops it.
     * Django's CommonMiddleware sets one, and a client's HTTP/2 or HTTP/3
     * stack resets a 204 whose length is not 0: the app's right answer
     * became the client's error. */
    Py_XSETREF(s->resp_headers, without_length(headers));
    s->resp_has_length = false;
  } else {
    Py_XSETREF(s->resp_headers, headers ? Py_NewRef(headers) : PyList_New(0));
  }
  if (s->resp_headers == NULL) return NULL;
  s->resp_wants_trailers = trailers != NULL && PyObject_IsTrue(trailers) == 1;
  s->resp_started = true;
  return Py_NewRef(ready_none);
}

PyObject *asgi_send_body(struct asgi_stream *s, PyObject *msg) {
  if (!s->resp_started) {
    PyErr_SetString(PyExc_RuntimeError, "http.response.body sent before http.response.start");
    return NULL;
  }
  if (s->resp_body_done) {
    PyErr_SetString(PyExc_RuntimeError, "http.response.body sent after the response ended");
    return NULL;
  }
  PyObject *body = PyDict_GetItemWithError(msg, K.body);
  if (body == NULL && PyErr_Occurred()) return NULL;
  PyObject *more = PyDict_GetItemWithError(msg, K.more_body);
  if (more == NULL && PyErr_Occurred()) return NULL;
  bool more_body = more != NULL && PyObject_IsTrue(more) == 1;
  if (s->disconnected) return Py_NewRef(ready_none); /* ASGI 2.3: a no-op */
  PyObject *bytes = NULL;
  if (body != NULL && body != Py_None) {
    bytes = PyBytes_Check(body) ? Py_NewRef(body) : PyBytes_FromObject(body);
    if (bytes == NULL) return NULL;
  }
  size_t n = bytes ? (size_t)PyBytes_GET_SIZE(bytes) : 0;
  int rc = check_declared_length(s, n, more_body);
  if (rc == 0 && n > 0) rc = asgi_out_push(s, bytes);
  Py_XDECREF(bytes);
  if (rc != 0) return NULL;
  s->resp_sent += n;
  if (!more_body) s->resp_body_done = true;
  if (s->conn) s->conn->proto->resume_send(s->conn, s);
  return asgi_send_backpressure(s);
}

PyObject *asgi_send_backpressure(struct asgi_stream *s) {
  if (s->out_bytes > asgi_env.send_high_water && !s->disconnected) {
    /* The app waits until the client has taken some. */
    PyObject *fut = PyObject_CallNoArgs(asgi_env.create_future);
    if (fut == NULL) return NULL;
    Py_XSETREF(s->send_waiter, Py_NewRef(fut));
    return fut;
  }
  return Py_NewRef(ready_none);
}

static PyObject *send_trailers(struct asgi_stream *s, PyObject *msg) {
  if (!s->resp_wants_trailers) {
    PyErr_SetString(PyExc_RuntimeError,
                    "http.response.trailers sent without trailers=True in http.response.start");
    return NULL;
  }
  if (s->resp_trailers != NULL) {
    PyErr_SetString(PyExc_RuntimeError, "http.response.trailers sent twice");
    return NULL;
  }
  PyObject *headers = PyDict_GetItemWithError(msg, K.headers);
  if (headers == NULL && PyErr_Occurred()) return NULL;
  if (headers != NULL && asgi_validate_headers(headers) != 0) return NULL;
  s->resp_trailers = headers ? Py_NewRef(headers) : PyList_New(0);
  if (s->conn && !s->disconnected) s->conn->proto->resume_send(s->conn, s);
  return Py_NewRef(ready_none);
}

static PyObject *stream_send(struct asgi_stream *s, PyObject *msg) {
  if (!PyDict_Check(msg)) {
    PyErr_SetString(PyExc_TypeError, "send() takes a message dict");
    return NULL;
  }
  if (s->ws) return asgi_ws_send(s, msg);
  PyObject *type = PyDict_GetItemWithError(msg, K.type);
  if (type == NULL) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "message has no \"type\"");
    return NULL;
  }
  if (type == K.v_resp_body || PyUnicode_Compare(type, K.v_resp_body) == 0)
    return asgi_send_body(s, msg);
  if (type == K.v_resp_start || PyUnicode_Compare(type, K.v_resp_start) == 0)
    return asgi_send_start(s, msg);
  if (PyUnicode_Compare(type, K.v_resp_trailers) == 0) return send_trailers(s, msg);
  if (PyErr_Occurred()) return NULL;
  PyErr_Format(PyExc_RuntimeError, "unexpected ASGI message type %R for an http scope", type);
  return NULL;
}

/* ---------------------------------------------------------------------------
 * App completion.
 */
static void app_finished(struct asgi_stream *s, PyObject *exc) {
  s->app_done = true;
  s->app_running = false;
  active_tasks--;
  if (exc != NULL) {
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    asgi_log_python_error("exception in ASGI application:");
  }
  if (s->ws) {
    asgi_ws_app_finished(s, exc);
    if (s->conn) s->conn->proto->app_finished(s->conn, s);
    server_count_request();
    return;
  }
  /* A response already complete stands, whatever the app did after it
   * (the error is logged above), as with uvicorn. */
  bool complete = s->resp_body_done && !(s->resp_wants_trailers && s->resp_trailers == NULL);
  if (!s->disconnected && !complete) {
    if (exc == NULL) log_error("ASGI callable returned without completing the response");
    /* A clean 500 while the head is still ours (even after the app's
     * http.response.start); once it has gone out, the stream is cut. */
    set_internal_error(s);
  }
  if (s->conn) s->conn->proto->app_finished(s->conn, s);
  server_count_request();
}

/* The app's coroutine inside a coroutine-like object of ours, so that the
 * asyncio Task running it tells us when it ends without a done callback
 * (which costs a bound method, add_done_callback and one more call_soon per
 * request). Registered as a collections.abc.Coroutine, so asyncio accepts
 * it; current_task() inside the app is the real Task. */
static void runner_done(runner_obj *r, PyObject *exc) {
  struct asgi_stream *s = r->stream;
  r->stream = NULL;
  if (s == NULL) return;
  app_finished(s, exc);
  Py_DECREF(s);
}

/* Turns one step's outcome into what Task expects back. */
static PyObject *runner_outcome(runner_obj *r, PySendResult rc, PyObject *result) {
  if (rc == PYGEN_NEXT) return result; /* the app awaits a future */
  if (rc == PYGEN_RETURN) {
    Py_DECREF(result);
    runner_done(r, NULL);
    PyErr_SetNone(PyExc_StopIteration);
    return NULL;
  }
  /* The app raised. Cancellation and interpreter exits go on to the Task;
   * anything else is the app's error: logged here, the Task ends cleanly. */
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb && value) PyException_SetTraceback(value, tb);
  bool passes = value && (PyErr_GivenExceptionMatches(value, PyExc_SystemExit) ||
                          PyErr_GivenExceptionMatches(value, PyExc_KeyboardInterrupt) ||
                          PyErr_GivenExceptionMatches(type, K.cancelled_error));
  if (passes) {
    runner_done(r, NULL);
    PyErr_Restore(type, value, tb);
    return NULL;
  }
  runner_done(r, value);
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
  PyErr_SetNone(PyExc_StopIteration);
  return NULL;
}

static PyObject *runner_send(runner_obj *r, PyObject *arg) {
  PyObject *result = NULL;
  PySendResult rc = PyIter_Send(r->coro, arg, &result);
  return runner_outcome(r, rc, result);
}

static PyObject *runner_iternext(runner_obj *r) { return runner_send(r, Py_None); }

static PyObject *runner_throw(runner_obj *r, PyObject *args) {
  PyObject *throw_ = PyObject_GetAttr(r->coro, K.throw_);
  PyObject *result = throw_ ? PyObject_Call(throw_, args, NULL) : NULL;
  Py_XDECREF(throw_);
  if (result != NULL) return result;
  /* StopIteration from throw() means the app returned. */
  if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
    PyErr_Clear();
    return runner_outcome(r, PYGEN_RETURN, Py_NewRef(Py_None));
  }
  return runner_outcome(r, PYGEN_ERROR, NULL);
}

static PyObject *runner_close(runner_obj *r, PyObject *unused) {
  (void)unused;
  PyObject *x = PyObject_CallMethod(r->coro, "close", NULL);
  if (r->stream) runner_done(r, NULL);
  return x;
}

static PySendResult runner_am_send(runner_obj *r, PyObject *arg, PyObject **result) {
  *result = runner_send(r, arg);
  if (*result) return PYGEN_NEXT;
  if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
    PyErr_Clear();
    *result = Py_NewRef(Py_None);
    return PYGEN_RETURN;
  }
  return PYGEN_ERROR;
}

static void runner_dealloc(runner_obj *r) {
  if (r->stream) runner_done(r, NULL); /* dropped without finishing */
  Py_XDECREF(r->coro);
  PyObject_Free(r);
}

static PyObject *runner_await(PyObject *self) { return Py_NewRef(self); }

static PyMethodDef runner_methods[] = {
    {"send", (PyCFunction)runner_send, METH_O, NULL},
    {"throw", (PyCFunction)runner_throw, METH_VARARGS, NULL},
    {"close", (PyCFunction)runner_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods runner_async = {
    .am_await = runner_await,
    .am_send = (sendfunc)runner_am_send,
};

static PyTypeObject runner_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "_h3gate.AppRunner",
    .tp_basicsize = sizeof(runner_obj),
    .tp_dealloc = (destructor)runner_dealloc,
    .tp_as_async = &runner_async,
    .tp_iter = runner_await,
    .tp_iternext = (iternextfunc)runner_iternext,
    .tp_methods = runner_methods,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Runs one request's ASGI coroutine and reports its end.",
};

static PyMethodDef receive_def = {"receive", (PyCFunction)stream_receive, METH_NOARGS, NULL};
static PyMethodDef send_def = {"send", (PyCFunction)stream_send, METH_O, NULL};

static PyTypeObject stream_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "_h3gate.Stream",
    .tp_basicsize = sizeof(struct asgi_stream),
    .tp_dealloc = (destructor)stream_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One HTTP request and its response.",
};

int asgi_init_types(PyObject *module) {
  if (PyType_Ready(&ready_type) < 0 || PyType_Ready(&stream_type) < 0 ||
      PyType_Ready(&runner_type) < 0)
    return -1;
  if (PyModule_AddObjectRef(module, "AppRunner", (PyObject *)&runner_type) < 0) return -1;
  ready_none = asgi_ready(NULL);
  if (ready_none == NULL) return -1;
  if (asgi_ws_init_constants(module) != 0) return -1;
  return 0;
}

/* ---------------------------------------------------------------------------
 * Protocol-facing response accessors.
 */
static void respond_local(struct asgi_stream *s, int status, const char *text, const char *name,
                          const char *value) {
  if (s->head_sent) {
    if (s->conn) s->conn->proto->abort_stream(s->conn, s);
    return;
  }
  stream_clear_out(s);
  size_t len = strlen(text);
  char num[24];
  snprintf(num, sizeof num, "%zu", len);
  PyObject *body = PyBytes_FromStringAndSize(text, (Py_ssize_t)len);
  PyObject *headers = Py_BuildValue("[(yy)(yy)]", "content-type", "text/plain; charset=utf-8",
                                    "content-length", num);
  if (headers && name) {
    PyObject *pair = Py_BuildValue("(yy)", name, value);
    if (pair == NULL || PyList_Append(headers, pair) != 0) Py_CLEAR(headers);
    Py_XDECREF(pair);
  }
  if (body == NULL || headers == NULL) {
    PyErr_Clear();
    Py_XDECREF(body);
    Py_XDECREF(headers);
    if (s->conn) s->conn->proto->abort_stream(s->conn, s);
    return;
  }
  s->status = status;
  Py_XSETREF(s->resp_headers, headers);
  s->resp_has_length = s->resp_has_date = false; /* the app's, if it gave them, are void */
  Py_CLEAR(s->resp_trailers);
  s->resp_wants_trailers = false;
  s->resp_started = true;
  s->resp_body_done = true;
  if (!s->is_head) asgi_out_push(s, body);
  Py_DECREF(body);
  if (s->conn) s->conn->proto->resume_send(s->conn, s);
}

void asgi_stream_respond_error(struct asgi_stream *s, int status, const char *text) {
  respond_local(s, status, text, NULL, NULL);
}

void asgi_stream_respond_refusal(struct asgi_stream *s, int status, const char *why, const char *name,
                                 const char *value) {
  char text[256];
  snprintf(text, sizeof text, "%s: %s\n", http_reason(status), why);
  respond_local(s, status, text, name, value);
}

bool asgi_stream_head_ready(const struct asgi_stream *s) {
  return s->resp_started && (s->out_bytes > 0 || s->resp_body_done || asgi_stream_ws_accepted(s));
}
int asgi_stream_status(const struct asgi_stream *s) { return s->status; }
PyObject *asgi_stream_headers(const struct asgi_stream *s) { return s->resp_headers; }
void asgi_stream_mark_head_sent(struct asgi_stream *s) { s->head_sent = true; }
bool asgi_stream_head_sent(const struct asgi_stream *s) { return s->head_sent; }
bool asgi_stream_has_date(const struct asgi_stream *s) { return s->resp_has_date; }
size_t asgi_stream_queued_body(const struct asgi_stream *s) { return s->out_bytes; }
bool asgi_stream_body_eof(const struct asgi_stream *s) {
  return s->resp_body_done && s->out_bytes == 0;
}
bool asgi_stream_wants_trailers(const struct asgi_stream *s) { return s->resp_wants_trailers; }
PyObject *asgi_stream_trailers(const struct asgi_stream *s) { return s->resp_trailers; }

size_t asgi_stream_read_body(struct asgi_stream *s, uint8_t *buf, size_t max) {
  size_t copied = 0;
  while (copied < max && s->out_count > 0) {
    PyObject *b = s->out[s->out_head];
    size_t avail = (size_t)PyBytes_GET_SIZE(b) - s->out_off;
    size_t n = avail < max - copied ? avail : max - copied;
    memcpy(buf + copied, PyBytes_AS_STRING(b) + s->out_off, n);
    copied += n;
    s->out_off += n;
    if (s->out_off == (size_t)PyBytes_GET_SIZE(b)) {
      Py_DECREF(b);
      s->out_head = (s->out_head + 1) % s->out_cap;
      s->out_count--;
      s->out_off = 0;
    }
  }
  s->out_bytes -= copied;
  if (s->send_waiter && s->out_bytes <= asgi_env.send_high_water / 2)
    asgi_resolve(&s->send_waiter, Py_None);
  return copied;
}

/* uvicorn's line: 127.0.0.1:54321 - "GET /path?q HTTP/1.1" 200 */
static void access_log(struct asgi_stream *s) {
  char client[96] = "-";
  if (s->log_client && PyTuple_Check(s->log_client) && PyTuple_GET_SIZE(s->log_client) == 2) {
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(s->log_client, 0));
    long port = PyLong_AsLong(PyTuple_GET_ITEM(s->log_client, 1));
    if (host) snprintf(client, sizeof client, "%s:%ld", host, port);
    PyErr_Clear();
  }
  const char *method = s->method ? PyUnicode_AsUTF8(s->method) : NULL;
  if (method == NULL) PyErr_Clear();
  /* The target as it came (HTTP/2 lets quotes and any byte above 0x7f
   * through), escaped as the gateway's log escapes it. */
  char path[2048], query[2048];
  h3g_log_escape(s->raw_path ? PyBytes_AS_STRING(s->raw_path) : "-",
                 s->raw_path ? (size_t)PyBytes_GET_SIZE(s->raw_path) : 1, path, sizeof path);
  h3g_log_escape(s->query ? PyBytes_AS_STRING(s->query) : "", s->query ? (size_t)PyBytes_GET_SIZE(s->query) : 0,
                 query, sizeof query);
  log_info("%s - \"%s %s%s%s HTTP/%s\" %d", client, method ? method : "-", path, query[0] ? "?" : "", query,
           s->log_version ? s->log_version : s->http_version, s->status);
}

void asgi_stream_response_done(struct asgi_stream *s) {
  if (asgi_env.access_log && !s->resp_complete) access_log(s);
  s->resp_complete = true;
  if (s->in_delivered) asgi_wake_receiver(s);
}
