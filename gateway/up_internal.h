/* Shared between the pool (upstream.c) and its HTTP/2 client sessions
 * (h2_up.c); nothing else sees these. */
#ifndef H3G_GATEWAY_UP_INTERNAL_H
#define H3G_GATEWAY_UP_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <event2/bufferevent.h>
#include <nghttp2/nghttp2.h>

#include "gw.h"
#include "xchg.h"

enum up_conn_state {
  UC_CONNECTING, /* TCP connect in progress; exchanges wait in the pool queue */
  UC_READY,      /* takes new streams up to the peer's limit */
  UC_DRAINING,   /* GOAWAY (either way) or retired: finishes its streams, takes no new ones */
  UC_CLOSED,     /* socket gone; freed at the flush point */
};

struct up_conn {
  struct flushable flush;
  struct up_server *server;
  struct bufferevent *bev;
  nghttp2_session *session;
  enum up_conn_state state;
  uint32_t n_streams;
  uint32_t max_streams;   /* the peer's SETTINGS_MAX_CONCURRENT_STREAMS */
  uint32_t worker_id;     /* from an h3gate-worker's private SETTINGS, else 0 */
  uint32_t worker_count;
  bool settings_seen;
  bool had_error;         /* refused, reset or broke: counts against the server */
  uint64_t idle_since_us;
  struct event *handshake_timer; /* connect, then the first SETTINGS, each within connect_timeout */
  TAILQ_ENTRY(up_conn) link;
};

enum up_server_state {
  SRV_UP,
  SRV_EJECTED,  /* passive health: failures; rests until ejected_until_us */
  SRV_DOWN,     /* active health check failing */
  SRV_DRAINING, /* gone from DNS: no new requests; removed when idle */
};

struct up_server {
  struct up_pool *pool;
  char name[160];            /* "host:port (1.2.3.4:port)" for logs */
  char addr_text[64];
  struct sockaddr_storage addr;
  socklen_t addr_len;
  int entry;                 /* index in conf servers (for DNS reconciliation) */
  bool dns_seen;             /* in the latest answer for its name */
  enum up_server_state state;
  uint64_t ejected_until_us;
  uint32_t fails;
  uint32_t hc_fails, hc_passes;
  bool hc_in_flight;
  uint32_t outstanding;      /* exchanges on this server */
  uint32_t n_conns;
  uint32_t reconnects;       /* extra connections opened to reach more workers */
  bool answered;             /* a connection's SETTINGS came, once */
  uint32_t workers_said;     /* the processes it announced in the latest; 0: none */
  uint32_t conn_rr;          /* rotates ties between equally busy connections */
  uint64_t requests;
  bool resting;              /* an attempt to connect just failed: the next waits for */
  struct event retry_timer;  /* this, which then wakes the requests waiting for it */
  TAILQ_HEAD(, up_conn) conns;
  TAILQ_ENTRY(up_server) link;
};

/* h2_up.c */
struct up_conn *up_conn_open(struct up_server *srv);
/* Submits the exchange as a new stream. 0, or -1 if the connection can't. */
int up_conn_submit(struct up_conn *c, struct xchg *x);
bool up_conn_has_room(const struct up_conn *c);
void up_conn_drain(struct up_conn *c);
void up_conn_reset_stream(struct xchg *x);
void up_conn_resume_stream(struct xchg *x);
void up_conn_consume(struct xchg *x, size_t n);

/* upstream.c, called by h2_up.c */
void up_server_conn_ready(struct up_server *srv, struct up_conn *c);
/* Takes c off the server (and counts a failure); no kicking here. */
/* c is gone; failed: refused, reset, timed out (why says which). */
void up_server_conn_closed(struct up_server *srv, struct up_conn *c, bool failed, const char *why);
/* Counters only: a stream of srv ended, well or not. */
void up_server_stream_done(struct up_server *srv, bool ok);
/* After an event: hand waiting exchanges to room that opened up, and free
 * a drained server once nothing of it is left. srv may be gone after this. */
void up_server_settle(struct up_server *srv);
/* A connection could not get a file descriptor (the gateway's own limit):
 * the requests waiting for one get 502 at the next kick (up_server_settle)
 * instead of waking the queue to try again. */
void up_note_files_short(void);
/* A connection's first SETTINGS came: what the server said of itself. */
void up_server_answered(struct up_server *srv, struct up_conn *c);

#endif
