/* A client (downstream) connection and the ops its protocol module (h1,
 * h2) offers. The connection owns its protocol state; the protocol owns
 * the exchanges it started until it detaches them. */
#ifndef H3G_GATEWAY_DOWN_H
#define H3G_GATEWAY_DOWN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <event2/bufferevent.h>

#include "gw.h"

struct down_conn;
struct listener;

struct down_proto {
  const char *name;
  int (*start)(struct down_conn *c);
  /* Bytes are waiting in the input evbuffer. */
  void (*on_read)(struct down_conn *c);
  /* The flush pass: move pending output to the socket buffer. */
  void (*flush)(struct down_conn *c);
  /* Graceful stop: GOAWAY (h2) or close after the current response (h1). */
  void (*shutdown)(struct down_conn *c);
  /* Free protocol state; exchanges still attached are detached (client gone). */
  void (*destroy)(struct down_conn *c);
  /* No request in flight. */
  bool (*idle)(const struct down_conn *c);
};

enum down_state {
  DC_HANDSHAKE, /* TLS handshake running */
  DC_SNIFF,     /* cleartext: reading the preface to tell h2c from HTTP/1.1 */
  DC_OPEN,      /* a protocol module drives it */
  DC_CLOSING,   /* writing what is queued, then closing */
  DC_CLOSED,    /* gone; freed at the flush point */
};

struct down_conn {
  struct flushable flush;
  uint64_t id;
  struct gw_runtime *rt;
  struct listener *listener;
  struct bufferevent *bev;
  struct event *reader; /* cleartext: our own read event (see down.c) */
  bool tls;
  char peer_ip[64];
  uint16_t peer_port;
  enum down_state state;
  const struct down_proto *proto;
  void *pd;
  struct event *timer;
  void (*timer_fire)(struct down_conn *c);
  bool draining;
  bool abort_close; /* down_close(c, true): no lingering either */
  bool lingering;   /* answer out, write side shut: reading the rest until EOF */
  LIST_ENTRY(down_conn) link;
};

/* Set-up, for listener.c. */
struct down_conn *down_conn_new(struct listener *l, int fd, const struct sockaddr *peer);
/* The protocol is chosen: wire the bufferevent to it. */
void down_conn_opened(struct down_conn *c);
/* Set-up failed (handshake, out of memory): close at once. */
void down_conn_fail(struct down_conn *c, const char *why);

extern const struct down_proto h1_down_proto;
extern const struct down_proto h2_down_proto;

/* Closes once queued output is written (abort: at once). */
void down_close(struct down_conn *c, bool abort);
/* Stops or resumes reading the client (backpressure, pipelining). */
void down_pause_reading(struct down_conn *c, bool pause);
void down_want_flush(struct down_conn *c);
/* (Re)arms the connection's one timer; 0 disarms. On expiry the protocol's
 * shutdown runs if it is idle, else the connection closes. */
void down_set_timer(struct down_conn *c, uint64_t ms, void (*fire)(struct down_conn *c));
struct xchg;
/* A new exchange on this connection learns where it came from: TLS or
 * not, the client's address, its listener's redirect_https. */
void down_introduce_xchg(const struct down_conn *c, struct xchg *x);
/* The Alt-Svc value for responses on this connection, or NULL. */
const char *down_alt_svc(const struct down_conn *c);
/* Graceful stop of every client connection (SIGTERM, or an old generation). */
void down_shutdown_all(bool only_old_generations);
size_t down_count(void);

#endif
