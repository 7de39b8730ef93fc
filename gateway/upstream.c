/* Upstream pools. See upstream.h.
 *
 * A pool holds servers; a configured name becomes one server per address
 * its DNS answer holds, re-resolved every resolve_interval. A server keeps
 * several HTTP/2 connections (h2_up.c). Exchanges that find no connection
 * with room wait in the pool's queue until one has.
 *
 * Table of contents:
 *   pool life cycle
 *   choosing a server and a connection; the queue
 *   passive health and connection events
 *   DNS: resolution and reconciliation
 *   active health checks
 */
#include "upstream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/util.h>

#include "fastrand.h"
#include "log.h"
#include "sock.h"
#include "up_internal.h"

enum {
  MAX_CONNS_PER_SERVER = 64,
  MAX_EXTRA_RECONNECTS = 16, /* connections reopened to reach more worker processes */
  AUTO_CONNS_UNANNOUNCED = 4, /* "auto", for a backend that does not tell its processes */
};

struct name_entry {
  struct up_pool *pool;
  int entry;
  struct evdns_getaddrinfo_request *req;
  bool resolved_once;
};

struct health_probe;

struct up_pool {
  const struct conf_upstream *conf;
  const struct gw_conf *gconf;
  struct gw_runtime *rt;
  TAILQ_HEAD(, up_server) servers;
  TAILQ_HEAD(, xchg) waiting;
  uint32_t n_waiting;
  uint32_t rr;
  struct name_entry *names;
  size_t n_names;
  size_t names_pending; /* first resolutions still running */
  struct event *resolve_timer;
  struct event *health_timer;
  bool retired;
};

static void kick(struct up_pool *p);
static void resolve_all(struct up_pool *p);
static void run_health_checks(struct up_pool *p);

const char *up_pool_name(const struct up_pool *p) { return p->conf->name; }
uint32_t up_pool_retries(const struct up_pool *p) { return p->conf->retries; }

/* ---------------------------------------------------------------------------
 * Life cycle.
 */
static void on_retry_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct up_server *s = arg;
  s->resting = false;
  kick(s->pool);
}

static struct up_server *server_new(struct up_pool *p, int entry, const struct sockaddr *sa,
                                    socklen_t len) {
  struct up_server *s = calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  s->pool = p;
  s->entry = entry;
  memcpy(&s->addr, sa, len);
  s->addr_len = len;
  s->state = SRV_UP;
  s->dns_seen = true;
  evtimer_assign(&s->retry_timer, gw.base, on_retry_timer, s);
  TAILQ_INIT(&s->conns);
  h3g_sockaddr_format(sa, len, s->addr_text, sizeof s->addr_text);
  const char *written = p->conf->servers[entry];
  if (strcmp(written, s->addr_text) == 0)
    snprintf(s->name, sizeof s->name, "%s", written);
  else
    snprintf(s->name, sizeof s->name, "%s (%s)", written, s->addr_text);
  TAILQ_INSERT_TAIL(&p->servers, s, link);
  return s;
}

static void server_free(struct up_server *s) {
  evtimer_del(&s->retry_timer);
  struct up_conn *c;
  while ((c = TAILQ_FIRST(&s->conns)) != NULL) {
    TAILQ_REMOVE(&s->conns, c, link);
    c->server = NULL;
    up_conn_drain(c);
  }
  free(s);
}

static void on_resolve_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  resolve_all(arg);
}

static void on_health_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  run_health_checks(arg);
}

struct up_pool *up_pool_new(const struct conf_upstream *cu, const struct gw_conf *conf) {
  struct up_pool *p = calloc(1, sizeof *p);
  if (p == NULL) return NULL;
  p->conf = cu;
  p->gconf = conf;
  TAILQ_INIT(&p->servers);
  TAILQ_INIT(&p->waiting);
  p->names = calloc(cu->n_servers, sizeof *p->names);
  if (p->names == NULL) {
    free(p);
    return NULL;
  }
  for (size_t i = 0; i < cu->n_servers; i++) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (h3g_hostport_to_sockaddr(&cu->addrs[i], &ss, &len) == 0) {
      server_new(p, (int)i, (struct sockaddr *)&ss, len);
    } else {
      p->names[p->n_names++] = (struct name_entry){.pool = p, .entry = (int)i};
    }
  }
  p->resolve_timer = evtimer_new(gw.base, on_resolve_timer, p);
  p->health_timer = evtimer_new(gw.base, on_health_timer, p);
  return p;
}

static void add_timer(struct event *ev, uint64_t ms) {
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
  evtimer_add(ev, &tv);
}

void up_pool_start(struct up_pool *p) {
  p->rt = gw.rt;
  if (p->n_names) resolve_all(p);
  if (p->conf->health_check.path) add_timer(p->health_timer, 10);
}

void up_pool_retire(struct up_pool *p) {
  p->retired = true;
  evtimer_del(p->resolve_timer);
  evtimer_del(p->health_timer);
  for (size_t i = 0; i < p->n_names; i++) {
    if (p->names[i].req) evdns_getaddrinfo_cancel(p->names[i].req);
    p->names[i].req = NULL;
  }
}

void up_pool_free(struct up_pool *p) {
  up_pool_retire(p);
  struct up_server *s;
  while ((s = TAILQ_FIRST(&p->servers)) != NULL) {
    TAILQ_REMOVE(&p->servers, s, link);
    server_free(s);
  }
  event_free(p->resolve_timer);
  event_free(p->health_timer);
  free(p->names);
  free(p);
}

void up_pool_render_metrics(const struct up_pool *p, struct evbuffer *out) {
  static const char *const states[] = {"up", "ejected", "down", "draining"};
  const struct up_server *s;
  TAILQ_FOREACH(s, &p->servers, link) {
    for (size_t st = 0; st < 4; st++)
      evbuffer_add_printf(out, "h3gate_upstream_server_state{upstream=\"%s\",server=\"%s\",state=\"%s\"} %d\n",
                          p->conf->name, s->addr_text, states[st], (size_t)s->state == st);
    evbuffer_add_printf(out, "h3gate_upstream_requests_total{upstream=\"%s\",server=\"%s\"} %llu\n"
                             "h3gate_upstream_in_flight{upstream=\"%s\",server=\"%s\"} %u\n",
                        p->conf->name, s->addr_text, (unsigned long long)s->requests, p->conf->name,
                        s->addr_text, s->outstanding);
  }
}

/* ---------------------------------------------------------------------------
 * Choosing.
 */
static uint32_t random_u32(void) { return (uint32_t)fastrand64(); }

static bool server_usable(struct up_server *s, uint64_t now) {
  switch (s->state) {
  case SRV_UP: return true;
  case SRV_EJECTED:
    if (now < s->ejected_until_us) return false;
    s->state = SRV_UP; /* rested: on probation (one more failure ejects it again) */
    s->fails = s->pool->conf->max_fails ? s->pool->conf->max_fails - 1 : 0;
    log_info("upstream %s: server %s back in rotation", s->pool->conf->name, s->name);
    return true;
  default: return false;
  }
}

/* An h3gate-worker tells how many processes it has: each gets at least
 * one connection. "auto" gives each exactly one: a process serves its
 * streams one after another, so a second connection to it adds no
 * parallelism, only smaller batches (h2load through the gateway to one
 * worker process: 19% less gateway CPU than with four). A server that has
 * not answered yet gets one connection, whose SETTINGS tell; one that does
 * not say gets AUTO_CONNS_UNANNOUNCED, for the processes that may share its
 * port. What it said is kept: after its idle connections closed, it gets
 * them all back at once. */
static uint32_t target_conns(const struct up_server *s) {
  uint32_t n = s->pool->conf->connections_per_server;
  if (n == CONNS_PER_SERVER_AUTO)
    n = s->workers_said ? s->workers_said : s->answered ? AUTO_CONNS_UNANNOUNCED : 1;
  if (s->workers_said > n) n = s->workers_said;
  return n > MAX_CONNS_PER_SERVER ? MAX_CONNS_PER_SERVER : n;
}

static bool conn_opening(const struct up_server *s) {
  const struct up_conn *c;
  TAILQ_FOREACH(c, &s->conns, link) {
    if (c->state == UC_CONNECTING) return true;
  }
  return false;
}

/* The least busy connection with room; ties rotate, so sequential
 * requests still spread over the worker processes behind the address.
 *
 * A WebSocket that would join a connection already carrying streams waits
 * while another connection to s is opening. A burst after a quiet spell
 * (h3gate-worker closes idle connections after 5 s) all went to the first
 * connection up, one worker process, for the sockets' lives: wsload's 100
 * sessions cost one process 44 ticks of CPU and the other none. A short
 * request just goes: it is over before the next connection is up. */
static struct up_conn *best_conn(struct up_server *s, const struct xchg *x) {
  struct up_conn *tied[MAX_CONNS_PER_SERVER], *c;
  size_t n = 0;
  uint32_t least = UINT32_MAX;
  TAILQ_FOREACH(c, &s->conns, link) {
    if (!up_conn_has_room(c) || c->n_streams > least) continue;
    if (c->n_streams < least) {
      least = c->n_streams;
      n = 0;
    }
    if (n < MAX_CONNS_PER_SERVER) tied[n++] = c;
  }
  if (n && least > 0 && x->websocket && conn_opening(s)) return NULL;
  return n ? tied[s->conn_rr++ % n] : NULL;
}

/* A connection just failed for want of a file descriptor. The requests
 * waiting for one get 502 at the next kick, as nginx answers: waking the
 * queue to try again looped without end (each failure woke it), and a
 * request could only time out. The next request tries afresh, and servers
 * stay in rotation: the shortage is the gateway's own. */
static bool files_short;

void up_note_files_short(void) { files_short = true; }

static void open_conns(struct up_server *s) {
  if (s->pool->retired || s->resting) return;
  uint32_t open = 0;
  struct up_conn *c;
  TAILQ_FOREACH(c, &s->conns, link) {
    if (c->state == UC_CONNECTING || c->state == UC_READY) open++;
  }
  for (uint32_t want = target_conns(s); open < want; open++)
    if (up_conn_open(s) == NULL) break;
}

/* Every connection is full: one more, up to the cap. Streams that live
 * long (WebSockets) would otherwise leave new requests waiting for a slot
 * until they time out. One opens at a time; each brings the peer's
 * SETTINGS_MAX_CONCURRENT_STREAMS of room. */
static void open_overflow_conn(struct up_server *s) {
  if (s->pool->retired || s->resting) return;
  uint32_t open = 0;
  struct up_conn *c;
  TAILQ_FOREACH(c, &s->conns, link) {
    if (c->state == UC_CONNECTING) return;
    if (c->state == UC_READY) open++;
  }
  if (open < MAX_CONNS_PER_SERVER) up_conn_open(s);
}

/* Connections beyond the server's target close once idle, when nothing
 * waits: the overflow was for a crowd that has gone. */
static void drain_surplus_conns(struct up_server *s) {
  if (s->pool->n_waiting > 0) return;
  uint32_t ready = 0, target = target_conns(s);
  struct up_conn *c;
  TAILQ_FOREACH(c, &s->conns, link) {
    if (c->state == UC_READY) ready++;
  }
  TAILQ_FOREACH(c, &s->conns, link) {
    if (ready <= target) break;
    if (c->state == UC_READY && c->n_streams == 0) {
      up_conn_drain(c); /* GOAWAY now; it closes at the next flush */
      ready--;
    }
  }
}

static bool answered_already(const struct xchg *x, const struct up_server *s) {
  for (uint8_t i = 0; i < x->n_answered; i++)
    if (x->answered[i] == s) return true;
  return false;
}

/* Servers a request may go to. A retry avoids the server that just failed
 * it, unless it is the only one left, and never goes back to one whose
 * app failed it. */
static size_t candidates(struct up_pool *p, const struct xchg *x, struct up_server **out, size_t max) {
  uint64_t now = gw_now_us();
  struct up_server *avoid = x->attempts > 1 ? x->server : NULL, *s;
  size_t n = 0;
  TAILQ_FOREACH(s, &p->servers, link) {
    if (n < max && s != avoid && server_usable(s, now) && !answered_already(x, s)) out[n++] = s;
  }
  if (n == 0 && avoid && server_usable(avoid, now) && !answered_already(x, avoid)) out[n++] = avoid;
  return n;
}

static struct up_server *pick_server(struct up_pool *p, struct xchg *x) {
  struct up_server *cand[256];
  size_t n = candidates(p, x, cand, 256);
  if (n == 0) return NULL;
  if (p->conf->balance == BALANCE_ROUND_ROBIN) return cand[p->rr++ % n];
  if (n == 1) return cand[0];
  /* Power of two choices on in-flight requests. */
  uint32_t r = random_u32();
  struct up_server *a = cand[r % n], *b = cand[(r / (uint32_t)n) % (n - 1)];
  if (b == a) b = cand[n - 1];
  return a->outstanding <= b->outstanding ? a : b;
}

static void place(struct up_pool *p, struct xchg *x, struct up_server *s) {
  struct up_conn *c = best_conn(s, x);
  open_conns(s);
  if (c && up_conn_submit(c, x) == 0) {
    s->requests++;
    return;
  }
  /* Wait for a connection with room. */
  if (c == NULL) open_overflow_conn(s);
  x->server = s;
  TAILQ_INSERT_TAIL(&p->waiting, x, queue_link);
  p->n_waiting++;
  x->state = XS_QUEUED;
}

static bool still_resolving(struct up_pool *p) { return p->names_pending > 0; }

void up_pool_dispatch(struct up_pool *p, struct xchg *x) {
  x->attempts++;
  struct up_server *s = pick_server(p, x);
  if (s == NULL) {
    if (still_resolving(p)) { /* first DNS answers not in yet: wait for them */
      TAILQ_INSERT_TAIL(&p->waiting, x, queue_link);
      p->n_waiting++;
      x->state = XS_QUEUED;
      add_timer(&x->timer, p->gconf->connect_timeout_ms);
      return;
    }
    if (x->last_status) /* a retry found nowhere to go: report what went wrong */
      xchg_up_give_up(x, x->last_status, x->last_why);
    else
      xchg_up_give_up(x, 503, "no healthy upstream server");
    return;
  }
  x->server = s;
  if (x->state == XS_QUEUED && !x->up.conn) add_timer(&x->timer, p->gconf->connect_timeout_ms);
  place(p, x, s);
}

/* Hands waiting exchanges to connections that have room now. */
static void kick(struct up_pool *p) {
  struct xchg *x, *next;
  for (x = TAILQ_FIRST(&p->waiting); x; x = next) {
    next = TAILQ_NEXT(x, queue_link);
    struct up_server *s = x->server;
    struct up_conn *c = s ? best_conn(s, x) : NULL;
    if (c == NULL && s != NULL && server_usable(s, gw_now_us()) && !files_short) open_overflow_conn(s);
    if (c == NULL && x->pinned) continue; /* waits for its own server */
    if (c == NULL) {
      /* Its server can't take it (yet): any other server with room? */
      struct up_server *o;
      TAILQ_FOREACH(o, &p->servers, link) {
        if (server_usable(o, gw_now_us()) && !answered_already(x, o) && (c = best_conn(o, x)) != NULL) break;
      }
      if (c == NULL && files_short) {
        TAILQ_REMOVE(&p->waiting, x, queue_link);
        p->n_waiting--;
        xchg_up_give_up(x, 502, "cannot open a connection to a backend: the gateway is out of file descriptors");
        continue;
      }
      if (c == NULL) {
        if (s == NULL || !server_usable(s, gw_now_us())) {
          /* Nothing is coming for it where it waits: choose again. */
          TAILQ_REMOVE(&p->waiting, x, queue_link);
          p->n_waiting--;
          struct up_server *again = pick_server(p, x);
          if (again == NULL) {
            if (still_resolving(p)) {
              TAILQ_INSERT_TAIL(&p->waiting, x, queue_link);
              p->n_waiting++;
              continue;
            }
            xchg_up_give_up(x, x->last_status ? x->last_status : 502,
                            x->last_status ? x->last_why : "upstream servers unreachable");
            continue;
          }
          x->server = again;
          open_conns(again);
          TAILQ_INSERT_TAIL(&p->waiting, x, queue_link);
          p->n_waiting++;
        }
        continue;
      }
    }
    TAILQ_REMOVE(&p->waiting, x, queue_link);
    p->n_waiting--;
    if (up_conn_submit(c, x) == 0) {
      c->server->requests++;
    } else {
      TAILQ_INSERT_HEAD(&p->waiting, x, queue_link);
      p->n_waiting++;
      break;
    }
  }
  files_short = false; /* said to the requests that were waiting */
}

void up_cancel(struct xchg *x) {
  if (x->up.conn) {
    up_conn_reset_stream(x);
    return;
  }
  if (x->state == XS_QUEUED && x->pool) {
    struct xchg *w;
    TAILQ_FOREACH(w, &x->pool->waiting, queue_link) {
      if (w == x) {
        TAILQ_REMOVE(&x->pool->waiting, x, queue_link);
        x->pool->n_waiting--;
        break;
      }
    }
  }
}

void up_resume_req(struct xchg *x) { up_conn_resume_stream(x); }
void up_consumed(struct xchg *x, size_t n) { up_conn_consume(x, n); }

/* ---------------------------------------------------------------------------
 * Connection events.
 */
/* A backend host that vanishes without a word (power, network, a
 * container's veth gone) sends no reset: its connections would look alive,
 * and requests on them wait for their timeout. Keepalive probes find it
 * while a connection is quiet, waiting for a response included: three
 * unanswered probes, a third of the idle time apart, break it. */
static void set_keepalive(const struct up_server *s, const struct up_conn *c) {
  uint64_t idle_s = s->pool->conf->tcp_keepalive_ms / 1000;
  if (idle_s == 0 || s->addr.ss_family == AF_UNIX) return;
  h3g_set_keepalive(bufferevent_getfd(c->bev), (unsigned)idle_s, idle_s >= 3 ? (unsigned)(idle_s / 3) : 1, 3);
}

void up_server_conn_ready(struct up_server *s, struct up_conn *c) {
  set_keepalive(s, c);
  kick(s->pool);
}

/* Another server than s takes requests (x's, if x: not one whose app
 * failed it). */
static bool another_usable(const struct up_server *s, const struct xchg *x) {
  uint64_t now = gw_now_us();
  struct up_server *o;
  TAILQ_FOREACH(o, &s->pool->servers, link) {
    if (o != s && server_usable(o, now) && !(x && answered_already(x, o))) return true;
  }
  return false;
}

/* Passive health never takes out the last server in rotation: every
 * request would get a 503 for fail_timeout, though the server may well
 * answer the next one (a worker pool restarting, one of its processes
 * killed). nginx ignores max_fails for a lone server; Envoy sends to every
 * host once too few are healthy. Each request still tries it, and one
 * that cannot be reached is a 502. Active health checks still take it
 * out (a 503): they asked the server itself. */
static void eject(struct up_server *s, const char *why) {
  const struct conf_upstream *cu = s->pool->conf;
  if (cu->max_fails == 0 || ++s->fails < cu->max_fails || s->state != SRV_UP) return;
  if (!another_usable(s, NULL)) {
    log_debug("upstream %s: server %s not ejected: no other server is in rotation (%s)", cu->name,
              s->name, why);
    return;
  }
  s->state = SRV_EJECTED;
  s->ejected_until_us = gw_now_us() + cu->fail_timeout_ms * 1000;
  log_warn("upstream %s: server %s ejected for %.1fs: %s", cu->name, s->name,
           (double)cu->fail_timeout_ms / 1000, why);
}

static void server_maybe_remove(struct up_server *s) {
  if (s->state != SRV_DRAINING || s->outstanding > 0) return;
  struct up_conn *c;
  TAILQ_FOREACH(c, &s->conns, link) {
    if (c->n_streams > 0) return;
  }
  log_info("upstream %s: server %s removed", s->pool->conf->name, s->name);
  TAILQ_REMOVE(&s->pool->servers, s, link);
  server_free(s);
}

/* A connection to the server works still: one that broke went to a
 * process of its pool that went away (crashed, killed), not to a server
 * gone, and a request retried lands on a sibling. */
static bool has_working_conn(const struct up_server *s) {
  const struct up_conn *o;
  TAILQ_FOREACH(o, &s->conns, link) {
    if (o->state == UC_READY) return true;
  }
  return false;
}

/* An attempt to connect to s failed, and no connection to it works.
 * HAProxy's turn-around: the next attempt waits min(connect_timeout,
 * TURNAROUND_MS). Requests waiting for s go to another server when there
 * is one; else they wait for that attempt, each allowed upstreams.retries
 * of them, then get their 502. A worker pool that restarts within it
 * (systemctl restart: a Python app starts in well under a second) costs
 * its clients a delay, not an error: failing at once, 7,340 of 40,000
 * GETs got a 502 across a 0.3 s restart. Health probes wait for their own
 * timeout. */
enum { TURNAROUND_MS = 1000 };

/* The server rests: no connection opens to it until its timer. */
static uint64_t begin_rest(struct up_server *s) {
  uint64_t connect_ms = s->pool->gconf->connect_timeout_ms;
  uint64_t rest_ms = connect_ms < TURNAROUND_MS ? connect_ms : TURNAROUND_MS;
  s->resting = true;
  add_timer(&s->retry_timer, rest_ms);
  return rest_ms;
}

static void connect_failed(struct up_server *s, const char *why) {
  if (s->resting) return; /* another attempt of the same round failed first: one rest, one count */
  struct up_pool *p = s->pool;
  uint64_t wait_ms = begin_rest(s) + p->gconf->connect_timeout_ms; /* the rest, then an attempt */
  char msg[192];
  snprintf(msg, sizeof msg, "upstream %s: %s", s->name, why);
  TAILQ_HEAD(, xchg) failing = TAILQ_HEAD_INITIALIZER(failing);
  struct xchg *x, *next;
  for (x = TAILQ_FIRST(&p->waiting); x; x = next) {
    next = TAILQ_NEXT(x, queue_link);
    if (x->server != s || x->pinned) continue;
    if (another_usable(s, x) || x->attempts > up_pool_retries(p)) {
      TAILQ_REMOVE(&p->waiting, x, queue_link);
      p->n_waiting--;
      TAILQ_INSERT_TAIL(&failing, x, queue_link);
      continue;
    }
    x->attempts++; /* the one that failed; the next comes after the rest */
    x->last_status = 502;
    snprintf(x->last_why, sizeof x->last_why, "%.*s", (int)sizeof x->last_why - 1, msg);
    add_timer(&x->timer, wait_ms);
  }
  /* Taken out first: a retry may queue the request again. */
  while ((x = TAILQ_FIRST(&failing)) != NULL) {
    TAILQ_REMOVE(&failing, x, queue_link);
    xchg_up_failed(x, UP_UNSEEN, 502, msg);
  }
}

void up_server_conn_closed(struct up_server *s, struct up_conn *c, bool failed, const char *why) {
  TAILQ_REMOVE(&s->conns, c, link);
  s->n_conns--;
  if (!failed || has_working_conn(s)) return;
  eject(s, "connection refused, reset or timed out");
  if (!c->settings_seen) connect_failed(s, why);
}

void up_server_stream_done(struct up_server *s, bool ok) {
  if (s->outstanding > 0) s->outstanding--;
  if (ok && s->state == SRV_UP) s->fails = 0;
}

void up_server_settle(struct up_server *s) {
  kick(s->pool);
  drain_surplus_conns(s);
  server_maybe_remove(s);
}

/* A connection's first SETTINGS: what the server says of itself sets how
 * many connections it gets (target_conns).
 *
 * Connections land on worker processes by the kernel's SO_REUSEPORT hash.
 * When a process holds more than its share of this server's connections
 * (ceil(connections / processes)), one is replaced: requests must reach
 * every process behind the address, evenly. */
void up_server_answered(struct up_server *s, struct up_conn *c) {
  s->answered = true;
  s->workers_said = c->worker_count;
  if (c->worker_count > 1 && c->worker_id > 0 && c->worker_id <= 64) {
    uint32_t per_worker[65] = {0}, ready = 0;
    struct up_conn *o;
    TAILQ_FOREACH(o, &s->conns, link) {
      if (o->state != UC_READY || o->worker_id == 0 || o->worker_id > 64) continue;
      per_worker[o->worker_id]++;
      ready++;
    }
    uint32_t share = (ready + c->worker_count - 1) / c->worker_count;
    if (per_worker[c->worker_id] > share && s->reconnects < MAX_EXTRA_RECONNECTS) {
      s->reconnects++;
      log_debug("upstream %s: %s: worker %u holds %u of %u connections; reconnecting one",
                s->pool->conf->name, s->name, c->worker_id, per_worker[c->worker_id], ready);
      up_conn_drain(c);
    } else if (per_worker[c->worker_id] <= share) {
      s->reconnects = 0; /* balanced as far as this connection goes */
    }
  }
  open_conns(s); /* a replacement, or more connections for more workers */
}

/* ---------------------------------------------------------------------------
 * DNS.
 */
static void reconcile(struct name_entry *ne, struct evutil_addrinfo *res) {
  struct up_pool *p = ne->pool;
  struct up_server *s;
  TAILQ_FOREACH(s, &p->servers, link) {
    if (s->entry == ne->entry) s->dns_seen = false;
  }
  size_t added = 0, kept = 0;
  for (struct evutil_addrinfo *ai = res; ai; ai = ai->ai_next) {
    bool found = false;
    TAILQ_FOREACH(s, &p->servers, link) {
      if (s->entry == ne->entry && h3g_sockaddr_equal((struct sockaddr *)&s->addr, ai->ai_addr)) {
        if (!s->dns_seen) kept++;
        s->dns_seen = true;
        found = true;
        if (s->state == SRV_DRAINING) s->state = SRV_UP; /* came back */
      }
    }
    if (!found) {
      s = server_new(p, ne->entry, ai->ai_addr, (socklen_t)ai->ai_addrlen);
      if (s) {
        added++;
        log_info("upstream %s: server %s added", p->conf->name, s->name);
      }
    }
  }
  struct up_server *next;
  for (s = TAILQ_FIRST(&p->servers); s; s = next) {
    next = TAILQ_NEXT(s, link);
    if (s->entry != ne->entry || s->dns_seen || s->state == SRV_DRAINING) continue;
    log_info("upstream %s: server %s left DNS: draining", p->conf->name, s->name);
    s->state = SRV_DRAINING;
    struct up_conn *c;
    TAILQ_FOREACH(c, &s->conns, link) up_conn_drain(c);
    server_maybe_remove(s);
  }
  (void)kept;
  (void)added;
}

static void on_resolved(int result, struct evutil_addrinfo *res, void *arg) {
  if (result == EVUTIL_EAI_CANCEL) return; /* the pool is going away: touch nothing */
  struct name_entry *ne = arg;
  struct up_pool *p = ne->pool;
  ne->req = NULL;
  const char *written = p->conf->servers[ne->entry];
  if (result != 0 || res == NULL) {
    /* Keep what we had: the old addresses may well still answer. */
    log_warn("upstream %s: resolving %s failed: %s; keeping %s", p->conf->name, written,
             evutil_gai_strerror(result), ne->resolved_once ? "the previous addresses" : "nothing");
  } else {
    reconcile(ne, res);
    evutil_freeaddrinfo(res);
  }
  if (!ne->resolved_once) {
    ne->resolved_once = true;
    p->names_pending--;
  }
  kick(p);
  bool all_done = true;
  for (size_t i = 0; i < p->n_names; i++)
    if (p->names[i].req) all_done = false;
  if (all_done && !p->retired) add_timer(p->resolve_timer, p->conf->resolve_interval_ms);
}

static void resolve_all(struct up_pool *p) {
  for (size_t i = 0; i < p->n_names; i++) {
    struct name_entry *ne = &p->names[i];
    if (ne->req) continue;
    const struct h3g_hostport *hp = &p->conf->addrs[ne->entry];
    char port[8];
    snprintf(port, sizeof port, "%u", hp->port);
    struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                    .ai_protocol = IPPROTO_TCP};
    if (!ne->resolved_once) p->names_pending++;
    ne->req = evdns_getaddrinfo(gw.dns, hp->host, port, &hints, on_resolved, ne);
    /* A synchronous answer (numeric, hosts file) already ran the callback. */
  }
}

/* ---------------------------------------------------------------------------
 * Active health checks: GET path on each server, as an internal exchange.
 */
struct health_probe {
  struct up_server *server;
  struct xchg *x;
  struct event *timeout;
  bool done;
};

static void probe_finish(struct health_probe *hp, bool ok, const char *why) {
  if (hp->done) return;
  hp->done = true;
  struct up_server *s = hp->server;
  const struct conf_health_check *hc = &s->pool->conf->health_check;
  s->hc_in_flight = false;
  if (ok) {
    s->hc_fails = 0;
    if (s->state == SRV_DOWN && ++s->hc_passes >= hc->passes) {
      s->state = SRV_UP;
      s->fails = 0;
      log_info("upstream %s: server %s passes its health check again", s->pool->conf->name, s->name);
      kick(s->pool);
    }
  } else {
    s->hc_passes = 0;
    if (s->state != SRV_DOWN && s->state != SRV_DRAINING && ++s->hc_fails >= hc->fails) {
      s->state = SRV_DOWN;
      log_warn("upstream %s: server %s fails its health check (%s): taken out",
               s->pool->conf->name, s->name, why);
    }
  }
  event_free(hp->timeout);
  if (hp->x) xchg_down_detach(hp->x);
  free(hp);
}

static void probe_head(struct xchg *x) {
  struct health_probe *hp = x->down_ctx;
  bool ok = !x->resp_local && x->status >= 200 && x->status < 400;
  char why[64];
  snprintf(why, sizeof why, "status %d", x->status);
  if (!ok || x->resp_end) probe_finish(hp, ok, why);
}

static void probe_body(struct xchg *x) {
  evbuffer_drain(x->resp_body, evbuffer_get_length(x->resp_body));
  if (x->resp_end) probe_finish(x->down_ctx, x->status >= 200 && x->status < 400, "body");
}

static void probe_credit(struct xchg *x, size_t n) {
  (void)x;
  (void)n;
}

static void probe_abort(struct xchg *x) { probe_finish(x->down_ctx, false, "response broke"); }

static const struct xchg_down_ops probe_ops = {probe_head, probe_body, probe_credit, probe_abort};

static void on_probe_timeout(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  probe_finish(arg, false, "timeout");
}

static void probe_server(struct up_pool *p, struct up_server *s) {
  struct health_probe *hp = calloc(1, sizeof *hp);
  if (hp == NULL) return;
  hp->server = s;
  hp->x = xchg_new(p->rt, XCHG_HTTP_2, &probe_ops, hp);
  if (hp->x == NULL) {
    free(hp);
    return;
  }
  struct xchg *x = hp->x;
  snprintf(x->client_ip, sizeof x->client_ip, "127.0.0.1");
  const char *path = p->conf->health_check.path;
  x->i_method = hdr_add(&x->req, ":method", 7, "GET", 3);
  x->i_scheme = hdr_add(&x->req, ":scheme", 7, "http", 4);
  x->i_authority = hdr_add(&x->req, ":authority", 10, s->addr_text, strlen(s->addr_text));
  x->i_path = hdr_add(&x->req, ":path", 5, path, strlen(path));
  hdr_add(&x->req, "user-agent", 10, "h3gate-health-check", 19);
  x->req_end = true;
  x->pool = p;
  x->server = s;
  x->attempts = 99; /* never retried elsewhere: it tests this server */
  x->pinned = true;
  s->hc_in_flight = true;
  hp->timeout = evtimer_new(gw.base, on_probe_timeout, hp);
  add_timer(hp->timeout, p->conf->health_check.timeout_ms);
  x->state = XS_QUEUED;
  place(p, x, s);
}

static void run_health_checks(struct up_pool *p) {
  if (p->retired) return;
  struct up_server *s;
  TAILQ_FOREACH(s, &p->servers, link) {
    if (!s->hc_in_flight && s->state != SRV_DRAINING) probe_server(p, s);
  }
  add_timer(p->health_timer, p->conf->health_check.interval_ms);
}
