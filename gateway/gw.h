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
  int worker_index;         /* this process's slot under the master; 0 when alone */
};
extern struct gw gw;

/* The flush runs at the I/O priority on purpose. libevent works through
 * one priority per loop turn: at a lower priority the flush waited for a
 * turn with no I/O at all, which under load could be many turns (measured:
 * HTTP/2 req/s 4-24% lower). At the same priority it is activated by the
 * first callback that queues work, so it runs last in the turn: after all
 * the I/O that epoll reported with it. */
enum {
  GW_PRIO_IO = 1,    /* default priority of events (of 3) */
  GW_PRIO_FLUSH = 1, /* the end of the current loop turn (see above) */
};

int gw_loop_init(void);
void gw_want_flush(struct flushable *f);
/* Takes f off the flush lists: call before f is freed. */
void gw_flush_cancel(struct flushable *f);
/* Frees p with fn after the current flush pass: never inside a callback
 * that may still be standing on p. */
void gw_defer_free(void (*fn)(void *), void *p);

/* Writing plain socket bufferevents ourselves. libevent writes a socket
 * bufferevent's output from its EV_WRITE callback: one more turn of the loop
 * per write, and an epoll_ctl to watch the socket and another to stop. For
 * the small writes that request/response traffic and WebSocket messages
 * make, we write at once at the flush point instead, with EV_WRITE off, and
 * hand over to libevent only for large output or a full socket.
 * Not for TLS bufferevents: their writes stay libevent's, which drive OpenSSL. */
struct bufferevent;
/* After connect (or accept): EV_WRITE off until needed. */
void gw_bev_direct(struct bufferevent *bev);
/* At the flush point: write the output now if it is small, else (or what
 * the socket did not take) let libevent write it. */
void gw_bev_send(struct bufferevent *bev);
/* From the write callback: libevent emptied the output, so stop watching. */
void gw_bev_written(struct bufferevent *bev);
/* Room for n name/value pairs of elem bytes each, to hand a head to
 * nghttp2 or nghttp3 (their submit calls copy it): one buffer for the
 * process, grown to the largest head seen, so no head is cut short. NULL
 * when memory runs out. Valid until the next call. */
void *gw_nv_scratch(size_t n, size_t elem);
uint64_t gw_now_us(void);
/* The same clock at the kernel tick's resolution (1-4 ms), read without the
 * TSC: for stamps taken per chunk that only timeouts compare (on a VM a
 * precise read costs about 36 ns, two per WebSocket message). Never mixed
 * with gw_now_us: a coarse stamp may be a tick behind a precise one. */
uint64_t gw_coarse_now_us(void);

struct gw_runtime *gw_runtime_ref(struct gw_runtime *rt);
void gw_runtime_unref(struct gw_runtime *rt);

#endif
