/* Client connections: life cycle, the one timer, graceful stop. The
 * protocol modules (h1_down.c, h2_down.c) do the talking. */
#include "down.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "addr.h"
#include "listener.h"
#include "log.h"
#include "per_ip.h"
#include "xchg.h"

enum { OUT_LOW_WATER = 64 * 1024 };

static LIST_HEAD(, down_conn) all_conns = LIST_HEAD_INITIALIZER(all_conns);
static size_t n_conns;

size_t down_count(void) { return n_conns; }

static void conn_flush(struct flushable *f);
static void on_timer(evutil_socket_t fd, short what, void *arg);

static void handshake_timeout(struct down_conn *c) { down_conn_fail(c, "handshake timed out"); }

struct down_conn *down_conn_new(struct listener *l, int fd, const struct sockaddr *peer) {
  (void)fd;
  struct down_conn *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  h3g_sockaddr_host(peer, c->peer_ip, sizeof c->peer_ip);
  if (strncmp(c->peer_ip, "::ffff:", 7) == 0) memmove(c->peer_ip, c->peer_ip + 7, strlen(c->peer_ip + 7) + 1);
  if (!per_ip_admit(c->peer_ip, gw.rt->conf->max_connections_per_ip)) {
    free(c);
    return NULL; /* the caller closes the socket */
  }
  c->id = ++gw.next_id;
  c->rt = gw_runtime_ref(gw.rt);
  c->listener = l;
  c->flush.flush = conn_flush;
  c->peer_port = h3g_sockaddr_port(peer);
  c->timer = evtimer_new(gw.base, on_timer, c);
  LIST_INSERT_HEAD(&all_conns, c, link);
  n_conns++;
  gw.connections++;
  down_set_timer(c, c->rt->conf->client_header_timeout_ms, handshake_timeout);
  return c;
}

static void conn_free(void *p) {
  struct down_conn *c = p;
  if (c->timer) event_free(c->timer);
  gw_runtime_unref(c->rt);
  free(c);
}

static void finish_close(struct down_conn *c) {
  if (c->state == DC_CLOSED) return;
  c->state = DC_CLOSED;
  if (c->proto && c->proto->destroy) c->proto->destroy(c);
  if (c->reader) {
    event_free(c->reader);
    c->reader = NULL;
  }
  if (c->bev) {
    bufferevent_free(c->bev);
    c->bev = NULL;
  }
  evtimer_del(c->timer);
  gw_flush_cancel(&c->flush);
  LIST_REMOVE(c, link);
  n_conns--;
  per_ip_leave(c->peer_ip);
  if (n_conns + 1 == gw.rt->conf->max_connections || n_conns < gw.rt->conf->max_connections)
    listeners_pause_all(false);
  gw_defer_free(conn_free, c);
}

void down_conn_fail(struct down_conn *c, const char *why) {
  log_debug("conn %llu %s:%u: %s", (unsigned long long)c->id, c->peer_ip, c->peer_port, why);
  c->proto = NULL; /* nothing was started */
  finish_close(c);
}

static void on_read(struct bufferevent *bev, void *arg) {
  (void)bev;
  struct down_conn *c = arg;
  if (c->state == DC_OPEN) c->proto->on_read(c);
  else if (c->state == DC_CLOSING) evbuffer_drain(bufferevent_get_input(c->bev), evbuffer_get_length(bufferevent_get_input(c->bev)));
  down_want_flush(c);
}

static void on_write(struct bufferevent *bev, void *arg) {
  struct down_conn *c = arg;
  if (!c->tls) gw_bev_written(bev);
  down_want_flush(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  struct down_conn *c = arg;
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
    /* The client is gone: nothing we queue will reach it. */
    c->state = DC_CLOSING;
    finish_close(c);
  }
}

/* Cleartext connections are read by us, not by their bufferevent: its
 * read asks the kernel how much is waiting (ioctl FIONREAD) before every
 * readv, a second system call per read, which on a WebSocket tunnel is one
 * per message. One readv of up to READ_CHUNK per readiness, as libevent's
 * own read does; the bytes land in the bufferevent's input all the same. */
enum { READ_CHUNK = 16 * 1024 };

static void on_readable(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  struct down_conn *c = arg;
  struct evbuffer *in = bufferevent_get_input(c->bev);
  struct evbuffer_iovec v[2];
  evbuffer_unfreeze(in, 0); /* a bufferevent keeps its input's end to itself */
  int nv = evbuffer_reserve_space(in, READ_CHUNK, v, 2);
  ssize_t n = nv > 0 ? readv(fd, (struct iovec *)v, nv) : -1;
  int err = n < 0 ? (nv > 0 ? errno : ENOMEM) : 0;
  size_t left = n > 0 ? (size_t)n : 0;
  for (int i = 0; i < nv; i++) {
    if (v[i].iov_len > left) v[i].iov_len = left;
    left -= v[i].iov_len;
  }
  if (nv > 0) evbuffer_commit_space(in, v, n > 0 ? nv : 0);
  evbuffer_freeze(in, 0);
  if (n > 0) on_read(c->bev, c);
  else if (n == 0) on_event(c->bev, BEV_EVENT_READING | BEV_EVENT_EOF, c);
  else if (err != EAGAIN && err != EINTR) on_event(c->bev, BEV_EVENT_READING | BEV_EVENT_ERROR, c);
}

void down_pause_reading(struct down_conn *c, bool pause) {
  if (c->reader) {
    if (pause) event_del(c->reader);
    else event_add(c->reader, NULL);
  } else if (c->bev) {
    if (pause) bufferevent_disable(c->bev, EV_READ);
    else bufferevent_enable(c->bev, EV_READ);
  }
}

void down_conn_opened(struct down_conn *c) {
  bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
  bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW_WATER, 0);
  if (!c->tls) {
    gw_bev_direct(c->bev);
    c->reader = event_new(gw.base, bufferevent_getfd(c->bev), EV_READ | EV_PERSIST, on_readable, c);
    if (c->reader) {
      bufferevent_disable(c->bev, EV_READ);
      event_add(c->reader, NULL);
    }
  }
  down_set_timer(c, 0, NULL);
}

/* The answer is out. Closing now, while the client's bytes still arrive
 * (an upload refused part-way, a head over the limit, a pipelined request
 * behind "connection: close"), would make the kernel answer them with a
 * reset, and a reset can destroy the answer before the client reads it
 * (RFC 9112 9.6). So the write side is shut first, and what the client
 * still sends is read and dropped until it closes too, for a bounded time,
 * as nginx's lingering close does. */
enum { LINGER_MS = 2000, LINGER_DRAINING_MS = 500 };

static void linger(struct down_conn *c) {
  c->lingering = true;
  shutdown(bufferevent_getfd(c->bev), SHUT_WR);
  down_set_timer(c, c->draining ? LINGER_DRAINING_MS : LINGER_MS, finish_close);
  down_pause_reading(c, false);
}

static void conn_flush(struct flushable *f) {
  struct down_conn *c = (struct down_conn *)f;
  if (c->state == DC_OPEN) c->proto->flush(c);
  if (!c->tls && c->bev && (c->state == DC_OPEN || c->state == DC_CLOSING)) gw_bev_send(c->bev);
  if (c->state == DC_CLOSING) {
    if (c->bev == NULL || evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
      if (c->lingering) return; /* until EOF or the timer */
      if (c->bev == NULL || c->abort_close) finish_close(c);
      else linger(c);
    } else {
      /* Hear about it when the last byte is written. */
      bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
      down_pause_reading(c, true);
    }
  }
}

void down_want_flush(struct down_conn *c) {
  if (c->state != DC_CLOSED) gw_want_flush(&c->flush);
}

void down_close(struct down_conn *c, bool abort) {
  if (c->state == DC_CLOSED) return;
  c->state = DC_CLOSING;
  c->abort_close |= abort;
  if (abort && c->bev) evbuffer_drain(bufferevent_get_output(c->bev), evbuffer_get_length(bufferevent_get_output(c->bev)));
  down_want_flush(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct down_conn *c = arg;
  if (c->timer_fire) c->timer_fire(c);
}

void down_set_timer(struct down_conn *c, uint64_t ms, void (*fire)(struct down_conn *c)) {
  c->timer_fire = fire;
  if (ms == 0 || fire == NULL) {
    evtimer_del(c->timer);
    return;
  }
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
  evtimer_add(c->timer, &tv);
}

void down_introduce_xchg(const struct down_conn *c, struct xchg *x) {
  x->tls = c->tls;
  h3g_copy_str(x->client_ip, sizeof x->client_ip, c->peer_ip);
  x->client_port = c->peer_port;
  x->redirect_https = c->listener ? (uint16_t)c->listener->conf->redirect_https : 0;
}

const char *down_alt_svc(const struct down_conn *c) {
  const struct listener *l = c->listener;
  return l && l->h3_running && l->alt_svc[0] ? l->alt_svc : NULL;
}

void down_shutdown_all(bool only_old_generations) {
  struct down_conn *c, *next;
  for (c = LIST_FIRST(&all_conns); c; c = next) {
    next = LIST_NEXT(c, link);
    if (only_old_generations && c->rt == gw.rt) continue;
    c->draining = true;
    if (c->state == DC_OPEN) {
      c->proto->shutdown(c);
      down_want_flush(c);
    } else if (c->state == DC_HANDSHAKE || c->state == DC_SNIFF) {
      down_close(c, true);
    }
  }
}
