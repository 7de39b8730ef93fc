/* The worker's server loop glue. The loop itself is asyncio's (or uvloop's):
 * listening and connection fds are registered with add_reader/add_writer,
 * writes are gathered and flushed once per loop iteration (one call_soon),
 * and a one-second tick handles idle timeouts and the graceful stop.
 *
 * Table of contents:
 *   state and small services (conn_want_flush, conn_close, ...)
 *   accept and sniffing the preface
 *   read, write and the flush pass
 *   tick: idle timeouts, stop progress
 *   start/stop and the _h3gate module
 */
#include "server.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "asgi.h"
#include "conn.h"
#include "log.h"
#include "sock.h"

enum {
  READ_CHUNK = 256 * 1024,
  OUT_HIGH_WATER = 256 * 1024, /* produce no more once this much waits for the socket */
  MAX_LISTENERS = 16,
  ACCEPT_BATCH = 64,
};

static const char H2_PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

struct listener {
  int fd;
  PyObject *server_tuple;
  PyObject *fd_obj;
};

static struct {
  struct worker_config config;
  struct listener listeners[MAX_LISTENERS];
  size_t n_listeners;
  struct conn **by_fd;
  size_t by_fd_cap;
  size_t n_conns;
  uint64_t next_conn_id;
  struct conn *flush_list;
  bool flush_scheduled;
  struct conn **dead;
  size_t n_dead, dead_cap;
  uint64_t requests;
  bool stopping;
  bool ws_going_away_sent; /* the graceful timeout closed WebSockets with 1001 */
  uint64_t stop_deadline_ms;
  PyObject *stopped_future;
  int ready_fd;
  /* cached loop methods and our own callbacks */
  PyObject *add_reader, *remove_reader, *add_writer, *remove_writer, *call_soon, *call_later;
  PyObject *cb_accept, *cb_readable, *cb_writable, *cb_flush, *cb_tick, *cb_accept_rested;
  bool accept_resting; /* out of files: the listeners are not watched for a moment */
  uint8_t *read_buf;
} S = {.ready_fd = -1};

const struct worker_config *server_config(void) { return &S.config; }
struct worker_config *server_config_mut(void) { return &S.config; }
PyObject *listener_server_tuple(struct listener *l) { return l->server_tuple; }
void server_set_ready_fd(int fd) { S.ready_fd = fd; }

uint64_t server_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void begin_stop(const char *why);

void server_count_request(void) {
  S.requests++;
  if (S.config.max_requests && S.requests == S.config.max_requests) {
    log_info("served %llu requests (--max-requests): recycling this worker",
             (unsigned long long)S.requests);
    begin_stop("max-requests");
  }
}

static int loop_call(PyObject *method, PyObject *a, PyObject *b) {
  PyObject *r = b ? PyObject_CallFunctionObjArgs(method, a, b, NULL)
                  : PyObject_CallOneArg(method, a);
  if (r == NULL) {
    PyErr_Print();
    return -1;
  }
  Py_DECREF(r);
  return 0;
}

static int fd_watch(PyObject *method, int fd, PyObject *cb) {
  PyObject *fdo = PyLong_FromLong(fd);
  if (fdo == NULL) return -1;
  PyObject *r = cb ? PyObject_CallFunctionObjArgs(method, fdo, cb, fdo, NULL)
                   : PyObject_CallOneArg(method, fdo);
  Py_DECREF(fdo);
  if (r == NULL) {
    PyErr_Print();
    return -1;
  }
  Py_DECREF(r);
  return 0;
}

static void schedule_flush_pass(void) {
  if (S.flush_scheduled) return;
  if (loop_call(S.call_soon, S.cb_flush, NULL) == 0) S.flush_scheduled = true;
}

void conn_want_flush(struct conn *c) {
  if (c->flush_queued || c->state == CONN_CLOSED) return;
  c->flush_queued = true;
  c->flush_next = S.flush_list;
  S.flush_list = c;
  schedule_flush_pass();
}

void conn_pause_read(struct conn *c) {
  if (!c->reading) return;
  c->read_paused = true;
  c->reading = false;
  fd_watch(S.remove_reader, c->fd, NULL);
}

void conn_resume_read(struct conn *c) {
  c->read_paused = false;
  if (c->reading || c->state != CONN_OPEN) return;
  if (fd_watch(S.add_reader, c->fd, S.cb_readable) == 0) c->reading = true;
}

void conn_close(struct conn *c, bool abort) {
  if (c->state == CONN_CLOSED) return;
  /* While sniffing, c->out holds the client's first bytes, not ours. */
  if (c->state == CONN_SNIFFING) abort = true;
  c->state = CONN_CLOSING;
  c->abort_close |= abort;
  if (abort) bytebuf_consume(&c->out, bytebuf_size(&c->out));
  conn_want_flush(c);
}

/* The answer is out. Closing now, while the client's bytes still arrive (a
 * head over the limit, a pipelined request behind "connection: close"),
 * would make the kernel answer them with a reset, and a reset can destroy
 * the answer before the client reads it (RFC 9112 9.6). So the write side
 * is shut first, and on_readable drops what still comes until the client
 * closes too; the tick ends it after LINGER_MS at the latest. */
enum { LINGER_MS = 2000, LINGER_STOPPING_MS = 500 };

static void conn_linger(struct conn *c) {
  c->lingering = true;
  c->linger_until_ms = server_now_ms() + (S.stopping ? LINGER_STOPPING_MS : LINGER_MS);
  shutdown(c->fd, SHUT_WR);
  if (!c->reading && fd_watch(S.add_reader, c->fd, S.cb_readable) == 0) c->reading = true;
}

/* The real close, from the flush pass only. */
static void conn_finish_close(struct conn *c) {
  if (c->reading) fd_watch(S.remove_reader, c->fd, NULL);
  if (c->writing) fd_watch(S.remove_writer, c->fd, NULL);
  c->reading = c->writing = false;
  close(c->fd);
  S.by_fd[c->fd] = NULL;
  S.n_conns--;
  c->state = CONN_CLOSED;
  if (c->proto && c->proto->destroy) c->proto->destroy(c);
  if (S.n_dead == S.dead_cap) {
    size_t cap = S.dead_cap ? S.dead_cap * 2 : 64;
    struct conn **d = realloc(S.dead, cap * sizeof *d);
    if (d == NULL) abort(); /* cannot even remember what to free */
    S.dead = d;
    S.dead_cap = cap;
  }
  S.dead[S.n_dead++] = c;
}

static void conn_free(struct conn *c) {
  Py_XDECREF(c->client);
  bytebuf_free(&c->out);
  free(c);
}

/* ---------------------------------------------------------------------------
 * Accept.
 */
static PyObject *client_tuple(const struct sockaddr *sa) {
  if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) Py_RETURN_NONE;
  char host[64];
  h3g_sockaddr_host(sa, host, sizeof host);
  return Py_BuildValue("(si)", host, (int)h3g_sockaddr_port(sa));
}

static int table_reserve(int fd) {
  if ((size_t)fd < S.by_fd_cap) return 0;
  size_t cap = S.by_fd_cap ? S.by_fd_cap : 1024;
  while (cap <= (size_t)fd) cap *= 2;
  struct conn **t = realloc(S.by_fd, cap * sizeof *t);
  if (t == NULL) return -ENOMEM;
  memset(t + S.by_fd_cap, 0, (cap - S.by_fd_cap) * sizeof *t);
  S.by_fd = t;
  S.by_fd_cap = cap;
  return 0;
}

static void accept_one(struct listener *l, int cfd, struct sockaddr_storage *ss, socklen_t len) {
  if (table_reserve(cfd) != 0) goto err_close;
  struct conn *c = calloc(1, sizeof *c);
  if (c == NULL) goto err_close;
  c->fd = cfd;
  c->listener = l;
  c->peer = *ss;
  c->peer_len = len;
  c->peer_trusted = cidr_list_match(&S.config.forwarded_allow, (struct sockaddr *)ss);
  c->client = client_tuple((struct sockaddr *)ss);
  c->id = ++S.next_conn_id;
  c->state = CONN_SNIFFING;
  c->last_activity_ms = c->head_since_ms = server_now_ms(); /* the first head's clock starts now */
  if (c->client == NULL) {
    PyErr_Clear();
    free(c);
    goto err_close;
  }
  h3g_set_nodelay(cfd);
  S.by_fd[cfd] = c;
  S.n_conns++;
  if (fd_watch(S.add_reader, cfd, S.cb_readable) != 0) {
    conn_close(c, true);
    return;
  }
  c->reading = true;
  return;

err_close:
  log_warn("dropping a new connection: out of memory");
  close(cfd);
}

/* Out of file descriptors (or kernel memory), accept() fails while the
 * listening socket stays readable: retrying at once spun a CPU and logged
 * every try. Accepting rests for a moment instead, as the gateway's does;
 * the connections wait in the backlog (the supervisor keeps the socket). */
enum { ACCEPT_REST_MS = 500 };

static void watch_listeners(bool on) {
  for (size_t i = 0; i < S.n_listeners; i++)
    if (S.listeners[i].fd >= 0)
      fd_watch(on ? S.add_reader : S.remove_reader, S.listeners[i].fd, on ? S.cb_accept : NULL);
}

static void rest_accepting(int err) {
  if (S.accept_resting) return;
  log_warn("accept: %s: pausing accept for %d ms (raise the open-files limit: LimitNOFILE= in systemd, "
           "ulimit -n)", strerror(err), ACCEPT_REST_MS);
  PyObject *delay = PyFloat_FromDouble(ACCEPT_REST_MS / 1000.0);
  if (delay && loop_call(S.call_later, delay, S.cb_accept_rested) == 0) {
    S.accept_resting = true;
    watch_listeners(false);
  }
  Py_XDECREF(delay);
}

static PyObject *on_accept_rested(PyObject *mod, PyObject *unused) {
  (void)mod;
  (void)unused;
  S.accept_resting = false;
  if (!S.stopping) watch_listeners(true);
  Py_RETURN_NONE;
}

static PyObject *on_accept(PyObject *mod, PyObject *fdo) {
  (void)mod;
  int lfd = (int)PyLong_AsLong(fdo);
  struct listener *l = NULL;
  for (size_t i = 0; i < S.n_listeners; i++)
    if (S.listeners[i].fd == lfd) l = &S.listeners[i];
  if (l == NULL || S.stopping) Py_RETURN_NONE;
  for (int i = 0; i < ACCEPT_BATCH; i++) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int cfd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) {
      if (h3g_out_of_files(errno)) rest_accepting(errno);
      else if (errno != EAGAIN && errno != ECONNABORTED && errno != EINTR)
        log_warn("accept: %s", strerror(errno));
      break;
    }
    accept_one(l, cfd, &ss, len);
  }
  Py_RETURN_NONE;
}

/* Decides HTTP/1.1 or h2c from the first bytes. */
static void sniff(struct conn *c, const uint8_t *data, size_t len) {
  size_t have = bytebuf_size(&c->out); /* the out buffer holds early bytes while sniffing */
  size_t preface_len = sizeof H2_PREFACE - 1;
  if (bytebuf_append(&c->out, data, len) != 0) {
    conn_close(c, true);
    return;
  }
  have += len;
  size_t cmp = have < preface_len ? have : preface_len;
  bool h2 = memcmp(bytebuf_head(&c->out), H2_PREFACE, cmp) == 0;
  if (h2 && have < preface_len) return; /* wait for the rest of the preface */
  struct bytebuf early = c->out;
  memset(&c->out, 0, sizeof c->out);
  c->state = CONN_OPEN;
  int rc = h2 ? h2_conn_start(c) : h1_conn_start(c);
  if (rc != 0) {
    bytebuf_free(&early);
    conn_close(c, true);
    return;
  }
  c->proto->on_read(c, bytebuf_head(&early), bytebuf_size(&early));
  bytebuf_free(&early);
  /* Accepted just before a stop: its first requests are served, then it
   * closes (HTTP/1.1) or says GOAWAY (h2). */
  if (c->draining && c->state == CONN_OPEN) c->proto->shutdown(c);
}

/* ---------------------------------------------------------------------------
 * Read, write, flush.
 */
static PyObject *on_readable(PyObject *mod, PyObject *fdo) {
  (void)mod;
  int fd = (int)PyLong_AsLong(fdo);
  struct conn *c = (size_t)fd < S.by_fd_cap ? S.by_fd[fd] : NULL;
  if (c == NULL || c->state == CONN_CLOSED) Py_RETURN_NONE;
  if (c->state == CONN_CLOSING) {
    /* Keep draining the socket so our last response isn't lost to an RST. */
    ssize_t n = recv(fd, S.read_buf, READ_CHUNK, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) conn_close(c, true);
    Py_RETURN_NONE;
  }
  ssize_t n = recv(fd, S.read_buf, READ_CHUNK, 0);
  if (n < 0) {
    if (errno != EAGAIN && errno != EINTR) conn_close(c, true);
    Py_RETURN_NONE;
  }
  if (n == 0) {
    conn_close(c, true);
    Py_RETURN_NONE;
  }
  c->last_activity_ms = server_now_ms();
  if (c->state == CONN_SNIFFING)
    sniff(c, S.read_buf, (size_t)n);
  else
    c->proto->on_read(c, S.read_buf, (size_t)n);
  conn_want_flush(c);
  Py_RETURN_NONE;
}

/* Writes as much as the socket takes. 0, or -1 when the connection broke. */
static int conn_write(struct conn *c) {
  for (;;) {
    if (c->state == CONN_OPEN && c->proto && bytebuf_size(&c->out) < OUT_HIGH_WATER)
      c->proto->produce(c);
    size_t len = bytebuf_size(&c->out);
    if (len == 0) break;
    ssize_t n = send(c->fd, bytebuf_head(&c->out), len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        if (!c->writing && fd_watch(S.add_writer, c->fd, S.cb_writable) == 0) c->writing = true;
        return 0;
      }
      return -1;
    }
    bytebuf_consume(&c->out, (size_t)n);
    c->last_activity_ms = server_now_ms();
  }
  if (c->writing) {
    fd_watch(S.remove_writer, c->fd, NULL);
    c->writing = false;
  }
  return 0;
}

static void flush_conn(struct conn *c) {
  if (c->state == CONN_CLOSED) return;
  if (c->state == CONN_SNIFFING) return;
  if (conn_write(c) != 0) {
    conn_finish_close(c);
    return;
  }
  if (c->state == CONN_CLOSING && bytebuf_size(&c->out) == 0) {
    if (c->abort_close) conn_finish_close(c);
    else if (!c->lingering) conn_linger(c);
  }
}

static PyObject *on_writable(PyObject *mod, PyObject *fdo) {
  (void)mod;
  int fd = (int)PyLong_AsLong(fdo);
  struct conn *c = (size_t)fd < S.by_fd_cap ? S.by_fd[fd] : NULL;
  if (c != NULL) conn_want_flush(c);
  Py_RETURN_NONE;
}

/* A closed connection still on the next pass's flush list is freed after
 * that pass has taken it off. */
static void free_dead(void) {
  size_t kept = 0;
  for (size_t i = 0; i < S.n_dead; i++) {
    if (S.dead[i]->flush_queued)
      S.dead[kept++] = S.dead[i];
    else
      conn_free(S.dead[i]);
  }
  S.n_dead = kept;
}

static PyObject *on_flush(PyObject *mod, PyObject *unused) {
  (void)mod;
  (void)unused;
  S.flush_scheduled = false;
  /* Flushing may queue more connections (a stream finishing wakes another):
   * take the list as it is now; newcomers go to the next pass. */
  struct conn *list = S.flush_list;
  S.flush_list = NULL;
  while (list) {
    struct conn *c = list;
    list = c->flush_next;
    c->flush_queued = false;
    c->flush_next = NULL;
    flush_conn(c);
  }
  free_dead();
  Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------
 * Tick: once a second.
 */
static void stop_progress(void);

enum { STOP_IDLE_MS = 1000, WS_CLOSE_GRACE_MS = 1000 };

static void idle_sweep(uint64_t now) {
  /* While stopping, a connection idle for a moment is closed: long enough
   * for a request already on its way over a fresh connection to arrive. */
  uint64_t limit = S.config.keepalive_timeout_ms;
  if (S.stopping && limit > STOP_IDLE_MS) limit = STOP_IDLE_MS;
  for (size_t fd = 0; fd < S.by_fd_cap; fd++) {
    struct conn *c = S.by_fd[fd];
    if (c == NULL || c->state == CONN_CLOSED) continue;
    if (c->lingering) {
      if (now >= c->linger_until_ms) conn_close(c, true);
      continue;
    }
    /* Slowloris: a head that trickles in, a byte now and then, or an
     * HTTP/2 header block left unfinished, holds its connection for good
     * otherwise (nginx: client_header_timeout; uvicorn has none). */
    bool reading_heads = c->state == CONN_OPEN || c->state == CONN_SNIFFING;
    if (reading_heads && c->head_since_ms && now - c->head_since_ms >= S.config.head_timeout_ms) {
      log_debug("conn %llu: request head not in within --timeout-request-head", (unsigned long long)c->id);
      c->head_since_ms = 0;
      if (c->state == CONN_OPEN) c->proto->head_timed_out(c);
      else conn_close(c, true); /* still telling HTTP/1.1 from h2c */
      continue;
    }
    if (c->active_streams > 0) continue;
    if (now - c->last_activity_ms < limit) continue;
    if (c->state == CONN_OPEN && c->proto == &h2_proto_ops && !c->draining) {
      /* h2 says goodbye with GOAWAY first; HTTP/1.1 just closes. */
      c->draining = true;
      c->proto->shutdown(c);
      c->last_activity_ms = now;
    } else {
      conn_close(c, c->state == CONN_SNIFFING);
    }
  }
}

static PyObject *on_tick(PyObject *mod, PyObject *unused) {
  (void)mod;
  (void)unused;
  idle_sweep(server_now_ms());
  asgi_ws_tick(server_now_ms());
  if (S.stopping) stop_progress();
  PyObject *delay = PyFloat_FromDouble(S.stopping ? 0.1 : 1.0);
  if (delay) {
    loop_call(S.call_later, delay, S.cb_tick);
    Py_DECREF(delay);
  }
  Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------
 * Start and stop.
 */
static void stop_listening(void) {
  for (size_t i = 0; i < S.n_listeners; i++) {
    if (S.listeners[i].fd < 0) continue;
    fd_watch(S.remove_reader, S.listeners[i].fd, NULL);
    /* The supervisor keeps its copy open: queued connections wait for the
     * next worker instead of being reset. */
    close(S.listeners[i].fd);
    S.listeners[i].fd = -1;
  }
}

static void begin_stop(const char *why) {
  if (S.stopping) return;
  S.stopping = true;
  S.stop_deadline_ms = server_now_ms() + S.config.graceful_timeout_ms;
  log_info("stopping (%s): finishing %zu connections and %llu requests, for up to %.1fs", why,
           S.n_conns, (unsigned long long)asgi_active_tasks(),
           (double)S.config.graceful_timeout_ms / 1000);
  stop_listening();
  /* Connections still sniffing get their shutdown once their protocol is
   * known; idle ones are closed by the sweep. */
  for (size_t fd = 0; fd < S.by_fd_cap; fd++) {
    struct conn *c = S.by_fd[fd];
    if (c == NULL || c->state == CONN_CLOSED) continue;
    c->draining = true;
    if (c->state == CONN_OPEN) c->proto->shutdown(c);
    conn_want_flush(c);
  }
  stop_progress();
}

static void stop_progress(void) {
  bool idle = S.n_conns == 0 && asgi_active_tasks() == 0;
  if (!idle && server_now_ms() < S.stop_deadline_ms) return;
  if (!idle && !S.ws_going_away_sent) {
    /* WebSockets never finish on their own: tell them we are going away
     * (1001) and give the close frames a moment to leave. */
    S.ws_going_away_sent = true;
    size_t n = asgi_ws_going_away_all();
    if (n > 0) {
      log_info("graceful timeout: closing %zu WebSockets with 1001 (going away)", n);
      S.stop_deadline_ms = server_now_ms() + WS_CLOSE_GRACE_MS;
      return;
    }
  }
  if (!idle) {
    log_warn("graceful timeout: closing %zu connections with %llu requests in flight", S.n_conns,
             (unsigned long long)asgi_active_tasks());
    for (size_t fd = 0; fd < S.by_fd_cap; fd++)
      if (S.by_fd[fd] && S.by_fd[fd]->state != CONN_CLOSED) conn_close(S.by_fd[fd], true);
  }
  if (S.stopped_future) {
    PyObject *r = PyObject_CallMethod(S.stopped_future, "done", NULL);
    if (r == Py_False) {
      PyObject *x = PyObject_CallMethod(S.stopped_future, "set_result", "O", Py_None);
      Py_XDECREF(x);
    }
    Py_XDECREF(r);
    PyErr_Clear();
  }
}

static PyObject *py_stop(PyObject *mod, PyObject *signum) {
  (void)mod;
  long sig = PyLong_AsLong(signum);
  if (sig == -1 && PyErr_Occurred()) return NULL;
  if (S.stopping) {
    /* A second SIGINT/SIGTERM: stop now, like uvicorn. */
    S.stop_deadline_ms = 0;
    stop_progress();
    Py_RETURN_NONE;
  }
  begin_stop(sig == 2 ? "SIGINT" : sig == 3 ? "SIGQUIT" : "SIGTERM");
  Py_RETURN_NONE;
}

static PyObject *get_attr_checked(PyObject *obj, const char *name) {
  PyObject *r = PyObject_GetAttrString(obj, name);
  return r;
}

static PyObject *py_start(PyObject *mod, PyObject *args) {
  PyObject *loop, *app, *state, *stopped;
  if (!PyArg_ParseTuple(args, "OOOO", &loop, &app, &state, &stopped)) return NULL;
  asgi_env.loop = Py_NewRef(loop);
  asgi_env.app = Py_NewRef(app);
  asgi_env.state = Py_NewRef(state);
  S.stopped_future = Py_NewRef(stopped);
  if (!(asgi_env.create_task = get_attr_checked(loop, "create_task")) ||
      !(asgi_env.create_future = get_attr_checked(loop, "create_future")) ||
      !(S.add_reader = get_attr_checked(loop, "add_reader")) ||
      !(S.remove_reader = get_attr_checked(loop, "remove_reader")) ||
      !(S.add_writer = get_attr_checked(loop, "add_writer")) ||
      !(S.remove_writer = get_attr_checked(loop, "remove_writer")) ||
      !(S.call_soon = get_attr_checked(loop, "call_soon")) ||
      !(S.call_later = get_attr_checked(loop, "call_later")) ||
      !(S.cb_accept = PyObject_GetAttrString(mod, "_on_accept")) ||
      !(S.cb_readable = PyObject_GetAttrString(mod, "_on_readable")) ||
      !(S.cb_writable = PyObject_GetAttrString(mod, "_on_writable")) ||
      !(S.cb_flush = PyObject_GetAttrString(mod, "_on_flush")) ||
      !(S.cb_tick = PyObject_GetAttrString(mod, "_on_tick")) ||
      !(S.cb_accept_rested = PyObject_GetAttrString(mod, "_on_accept_rested")))
    return NULL;
  S.read_buf = malloc(READ_CHUNK);
  if (S.read_buf == NULL) return PyErr_NoMemory();
  for (size_t i = 0; i < S.n_listeners; i++) {
    if (fd_watch(S.add_reader, S.listeners[i].fd, S.cb_accept) != 0) {
      PyErr_SetString(PyExc_OSError, "could not watch a listening socket");
      return NULL;
    }
  }
  PyObject *one = PyFloat_FromDouble(1.0);
  if (one == NULL || loop_call(S.call_later, one, S.cb_tick) != 0) {
    Py_XDECREF(one);
    return NULL;
  }
  Py_DECREF(one);
  Py_RETURN_NONE;
}

int server_add_listener(int fd) {
  if (S.n_listeners == MAX_LISTENERS) return -E2BIG;
  struct listener *l = &S.listeners[S.n_listeners];
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return -errno;
  if (ss.ss_family == AF_UNIX) {
    l->server_tuple = Py_BuildValue("(sO)", ((struct sockaddr_un *)&ss)->sun_path, Py_None);
  } else {
    char host[64];
    h3g_sockaddr_host((struct sockaddr *)&ss, host, sizeof host);
    l->server_tuple = Py_BuildValue("(si)", host, (int)h3g_sockaddr_port((struct sockaddr *)&ss));
  }
  if (l->server_tuple == NULL) return -ENOMEM;
  if (h3g_set_nonblock(fd) != 0) return -errno;
  l->fd = fd;
  S.n_listeners++;
  return 0;
}

/* ---------------------------------------------------------------------------
 * The _h3gate module.
 */
static PyObject *py_log(enum h3g_log_level level, PyObject *msg) {
  const char *text = PyUnicode_AsUTF8(msg);
  if (text == NULL) return NULL;
  h3g_log(level, "%s", text);
  Py_RETURN_NONE;
}
static PyObject *py_log_error(PyObject *m, PyObject *msg) { (void)m; return py_log(H3G_LOG_ERROR, msg); }
static PyObject *py_log_warning(PyObject *m, PyObject *msg) { (void)m; return py_log(H3G_LOG_WARN, msg); }
static PyObject *py_log_info(PyObject *m, PyObject *msg) { (void)m; return py_log(H3G_LOG_INFO, msg); }
static PyObject *py_log_debug(PyObject *m, PyObject *msg) { (void)m; return py_log(H3G_LOG_DEBUG, msg); }

static PyObject *py_worker_ready(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  if (S.ready_fd >= 0) {
    ssize_t rc = write(S.ready_fd, "R", 1);
    (void)rc;
    close(S.ready_fd);
    S.ready_fd = -1;
  }
  Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"start", py_start, METH_VARARGS, "start(loop, app, state, stopped): serve on the loop"},
    {"stop", py_stop, METH_O, "stop(signum): graceful stop"},
    {"worker_ready", py_worker_ready, METH_NOARGS, "tell the supervisor this worker serves"},
    {"log_error", py_log_error, METH_O, NULL},
    {"log_warning", py_log_warning, METH_O, NULL},
    {"log_info", py_log_info, METH_O, NULL},
    {"log_debug", py_log_debug, METH_O, NULL},
    {"_on_accept", on_accept, METH_O, NULL},
    {"_on_readable", on_readable, METH_O, NULL},
    {"_on_writable", on_writable, METH_O, NULL},
    {"_on_flush", on_flush, METH_NOARGS, NULL},
    {"_on_tick", on_tick, METH_NOARGS, NULL},
    {"_on_accept_rested", on_accept_rested, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_h3gate", "h3gate-worker's C core", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyObject *server_module_init(void) {
  PyObject *m = PyModule_Create(&module_def);
  if (m == NULL) return NULL;
  if (asgi_init_types(m) != 0) {
    Py_DECREF(m);
    return NULL;
  }
  return m;
}
