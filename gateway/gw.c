#include "gw.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "listener.h"
#include "log.h"
#include "upstream.h"

struct gw gw;

struct deferred {
  void (*fn)(void *);
  void *p;
};

static struct {
  TAILQ_HEAD(, flushable) queue;
  TAILQ_HEAD(, flushable) batch;
  struct event *ev;
  bool scheduled;
  struct deferred *frees;
  size_t n_frees, cap_frees;
} F;

static uint64_t clock_us(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t gw_now_us(void) { return clock_us(CLOCK_MONOTONIC); }

uint64_t gw_coarse_now_us(void) { return clock_us(CLOCK_MONOTONIC_COARSE); }

static void run_deferred(void) {
  /* A free may defer another: loop until quiet. */
  while (F.n_frees > 0) {
    struct deferred d = F.frees[--F.n_frees];
    d.fn(d.p);
  }
}

static void on_flush(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
  F.scheduled = false;
  /* Items queued while flushing go to the next pass, which runs right after
   * this one in the same loop turn. */
  struct flushable *f;
  TAILQ_FOREACH(f, &F.queue, link) f->in_batch = true;
  TAILQ_CONCAT(&F.batch, &F.queue, link);
  while ((f = TAILQ_FIRST(&F.batch)) != NULL) {
    TAILQ_REMOVE(&F.batch, f, link);
    f->queued = f->in_batch = false;
    f->flush(f);
  }
  run_deferred();
}

static void schedule(void) {
  if (F.scheduled) return;
  F.scheduled = true;
  event_active(F.ev, EV_TIMEOUT, 0);
}

void gw_want_flush(struct flushable *f) {
  if (f->queued) return;
  f->queued = true;
  TAILQ_INSERT_TAIL(&F.queue, f, link);
  schedule();
}

void gw_flush_cancel(struct flushable *f) {
  if (!f->queued) return;
  if (f->in_batch) TAILQ_REMOVE(&F.batch, f, link);
  else TAILQ_REMOVE(&F.queue, f, link);
  f->queued = f->in_batch = false;
}

void gw_defer_free(void (*fn)(void *), void *p) {
  if (F.n_frees == F.cap_frees) {
    size_t cap = F.cap_frees ? F.cap_frees * 2 : 64;
    struct deferred *d = realloc(F.frees, cap * sizeof *d);
    if (d == NULL) abort(); /* nothing sane is left to do */
    F.frees = d;
    F.cap_frees = cap;
  }
  F.frees[F.n_frees++] = (struct deferred){fn, p};
  schedule();
}

int gw_loop_init(void) {
  struct event_config *cfg = event_config_new();
  event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
  gw.base = event_base_new_with_config(cfg);
  event_config_free(cfg);
  if (gw.base == NULL || event_base_priority_init(gw.base, 3) != 0) return -1;
  TAILQ_INIT(&F.queue);
  TAILQ_INIT(&F.batch);
  F.ev = event_new(gw.base, -1, 0, on_flush, NULL);
  if (F.ev == NULL) return -1;
  event_priority_set(F.ev, GW_PRIO_FLUSH);
  return 0;
}

struct gw_runtime *gw_runtime_ref(struct gw_runtime *rt) {
  rt->refs++;
  return rt;
}

static void runtime_free(void *p) {
  struct gw_runtime *rt = p;
  for (size_t i = 0; i < rt->n_pools; i++) up_pool_free(rt->pools[i]);
  free(rt->pools);
  for (size_t i = 0; i < rt->n_listeners; i++) listener_free(rt->listeners[i]);
  free(rt->listeners);
  log_debug("configuration generation %llu released", (unsigned long long)rt->generation);
  conf_free(rt->conf);
  free(rt);
}

void gw_runtime_unref(struct gw_runtime *rt) {
  if (--rt->refs == 0) gw_defer_free(runtime_free, rt);
}

/* ---------------------------------------------------------------------------
 * Direct writes (see gw.h).
 */
enum { DIRECT_WRITE_MAX = 64 * 1024 };

void gw_bev_direct(struct bufferevent *bev) { bufferevent_disable(bev, EV_WRITE); }

void gw_bev_send(struct bufferevent *bev) {
  struct evbuffer *out = bufferevent_get_output(bev);
  size_t len = evbuffer_get_length(out);
  if (len == 0 || (bufferevent_get_enabled(bev) & EV_WRITE)) return; /* nothing, or libevent's */
  if (len <= DIRECT_WRITE_MAX) {
    /* A failure other than a full socket is left to libevent's write,
     * which reports it through the event callback like any other. */
    /* A bufferevent keeps the start of its output frozen against
     * anyone else draining it; unfreeze it as its own write does. */
    evbuffer_unfreeze(out, 1);
    int n = evbuffer_write(out, bufferevent_getfd(bev));
    evbuffer_freeze(out, 1);
    (void)n;
    if (evbuffer_get_length(out) == 0) return;
  }
  bufferevent_enable(bev, EV_WRITE);
}

void gw_bev_written(struct bufferevent *bev) {
  if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) bufferevent_disable(bev, EV_WRITE);
}

void *gw_nv_scratch(size_t n, size_t elem) {
  static void *buf;
  static size_t cap;
  if (n > SIZE_MAX / elem) return NULL;
  if (n * elem > cap) {
    void *grown = realloc(buf, n * elem);
    if (grown == NULL) return NULL;
    buf = grown;
    cap = n * elem;
  }
  return buf;
}
