/* The gateway process: one libevent loop, the flush pass, deferred frees,
 * and the runtime generation (config + listeners + upstream pools) that
 * connections hold while SIGHUP installs a new one.
 *
 * Words: downstream = client-facing, upstream = backend-facing; conn,
 * strm, xchg (exchange), req, resp, hdr. */
#ifndef H3G_GATEWAY_GW_H
#define H3G_GATEWAY_GW_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <event2/event.h>

#include "config.h"

struct listener;
struct up_pool;

/* Something with output to gather once per loop iteration (Redis's
 * beforesleep): downstream and upstream connections. */
struct flushable {
  void (*flush)(struct flushable *f);
  TAILQ_ENTRY(flushable) link;
  bool queued;
  bool in_batch; /* on the list the current pass is working through */
};

struct gw_runtime {
  int refs;                 /* the gateway's own, plus one per connection */
  uint64_t generation;
  struct gw_conf *conf;
  struct listener **listeners;
  size_t n_listeners;
  struct up_pool **pools;   /* one per conf->upstreams entry, same order */
  size_t n_pools;
};

struct gw {
  struct event_base *base;
  struct evdns_base *dns;
  struct gw_runtime *rt;    /* the current generation */
  bool stopping;
  uint64_t next_id;
  uint64_t connections;     /* downstream, all generations */
};
extern struct gw gw;

enum {
  GW_PRIO_IO = 1,    /* default priority of events (of 3) */
  GW_PRIO_FLUSH = 2, /* after all I/O of the iteration */
};

int gw_loop_init(void);
void gw_want_flush(struct flushable *f);
/* Takes f off the flush lists: call before f is freed. */
void gw_flush_cancel(struct flushable *f);
/* Frees p with fn after the current flush pass: never inside a callback
 * that may still be standing on p. */
void gw_defer_free(void (*fn)(void *), void *p);
uint64_t gw_now_us(void);

struct gw_runtime *gw_runtime_ref(struct gw_runtime *rt);
void gw_runtime_unref(struct gw_runtime *rt);

#endif
