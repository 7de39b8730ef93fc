/* The protocol-neutral exchange between a front protocol module (h1, h2,
 * later h3) and the upstream pool. Fronts and the upstream never talk to
 * each other: a front fills the request and reacts to xchg_down_ops; the
 * upstream module fills the response through the xchg_up_* calls.
 *
 * Ownership: an exchange has exactly two holders, its downstream end and
 * its upstream end. Each detaches itself; the exchange is freed at the
 * flush point after both have. Bodies flow through one bounded evbuffer per
 * direction; taking bytes out returns credit to whoever produced them. */
#ifndef H3G_GATEWAY_XCHG_H
#define H3G_GATEWAY_XCHG_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "hdrs.h"
#include "ws_frame.h"

struct xchg;
struct gw_runtime;
struct up_conn;
struct up_server;
struct up_pool;

enum xchg_proto {
  XCHG_HTTP_1_0,
  XCHG_HTTP_1_1,
  XCHG_HTTP_2,
  XCHG_HTTP_3,
};

enum xchg_state {
  XS_REQ_HEAD,    /* the front is still reading the request head */
  XS_QUEUED,      /* routed; waiting for an upstream connection with room */
  XS_SENT,        /* on an upstream stream; waiting for the response head */
  XS_RESPONDING,  /* response head in; body flowing */
  XS_DONE,        /* the whole response is in (or an error response was made) */
};

/* What an exchange tells its front. */
struct xchg_down_ops {
  /* Status and headers are ready (x->status, x->resp). */
  void (*on_resp_head)(struct xchg *x);
  /* More body in x->resp_body, and/or x->resp_end became true. */
  void (*on_resp_body)(struct xchg *x);
  /* The upstream took n request body bytes: return credit to the client. */
  void (*on_req_credit)(struct xchg *x, size_t n);
  /* The response broke after its head went out: reset or close. */
  void (*on_abort)(struct xchg *x);
};

struct xchg_up {
  struct up_conn *conn;    /* NULL when not on an upstream stream */
  int32_t stream_id;
  bool headers_sent;       /* our HEADERS frame left for the backend */
  bool body_deferred;      /* the data source waits for more request body */
  bool head_too_large;     /* the response's fields passed limits.max_header_bytes */
};

/* Servers whose app failed one request that it remembers, to try none
 * of them again for it. */
enum { XCHG_ANSWERED_MAX = 4 };

struct xchg {
  uint64_t id;
  struct gw_runtime *rt;
  enum xchg_proto proto;
  enum xchg_state state;
  bool tls;
  bool early_data;         /* HTTP/3 0-RTT */
  /* A WebSocket (HTTP/1.1 Upgrade, or extended CONNECT with :protocol
   * websocket): forwarded as RFC 8441 extended CONNECT; the bodies are the
   * tunnel's two directions. HTTP/1.1 fronts set it before head_done. */
  bool websocket;
  bool ws_open;                /* a tunnel is up: on the list of open WebSockets */
  struct ws_boundary ws_down;  /* frames toward the client, for a close of our own */
  struct ws_boundary ws_up;    /* frames toward the backend, likewise */
  LIST_ENTRY(xchg) ws_link;
  char client_ip[64];
  uint16_t client_port;
  uint16_t local_port;

  /* request */
  struct hdr_list req;     /* pseudo-headers first (":method"...), then fields */
  int i_method, i_scheme, i_authority, i_path, i_protocol;
  int64_t req_content_length; /* -1: unknown */
  struct evbuffer *req_body;
  struct evbuffer *req_replay; /* body already sent upstream, kept for a retry */
  bool req_replayable;
  bool req_end;
  bool expect_continue;
  bool saw_host;            /* a Host field came: a second is refused */
  bool saw_cookie;
  const char *field_refusal; /* why xchg_req_field refused the last field it refused */
  uint32_t cookie_crumbs;   /* cookie fields after the first: one header, not several */
  uint64_t req_bytes;     /* received from the client */
  uint64_t req_taken;     /* handed to the upstream (less what a retry gave back) */
  uint64_t req_credited;  /* credit returned to the client */
  /* Request trailers are not kept: ASGI has no place for them (the worker
   * could not hand them to the app), and uvicorn drops them too. */

  /* response */
  int status;
  struct hdr_list resp;
  struct evbuffer *resp_body;
  bool resp_end;
  bool resp_local;         /* an error response made here, not by a backend */
  struct hdr_list resp_trailers;
  uint64_t resp_bytes;

  /* ends */
  const struct xchg_down_ops *down;
  void *down_ctx;
  bool down_attached;
  struct xchg_up up;
  struct up_pool *pool;
  const struct conf_exchange_limits *limits; /* its route's, or the top level's before routing */
  uint16_t redirect_https;  /* its listener's redirect_https port (0: none), set by the front */
  int i_upstream_path;      /* :path sent upstream when a route strips its prefix; -1: i_path */
  struct up_server *server; /* the server of the current or last attempt */
  uint8_t attempts;
  /* Servers that reset the request (their app failed): never tried again
   * for it. Compared only, never followed. */
  const struct up_server *answered[XCHG_ANSWERED_MAX];
  uint8_t n_answered;
  int last_status;          /* why the previous attempt failed, for the final answer */
  char last_why[160];
  bool pinned;              /* must go to x->server (health probes) */
  TAILQ_ENTRY(xchg) queue_link; /* in the pool's waiting queue */
  TAILQ_ENTRY(xchg) up_link;    /* in its upstream connection's stream list */

  /* the free list's link while the exchange waits for reuse */
  struct xchg *pool_next;

  /* timers and accounting */
  struct event timer;
  uint64_t progress_us; /* last progress of a response, gw_coarse_now_us (the idle timer's start) */
  uint64_t start_us;
  uint64_t resp_out_us; /* the front took the response's last byte (0: not yet) */
  uint64_t queued_us;
  char upstream_addr[64];
};

/* Front-facing. */
struct xchg *xchg_new(struct gw_runtime *rt, enum xchg_proto proto, const struct xchg_down_ops *ops,
                      void *ctx);
/* Fields of the request head. Pseudo-headers (":method", ":path",
 * ":scheme", ":authority") may come in any order; HTTP/1.1 fronts give Host
 * as a field. Returns 0 or an HTTP status to fail the request with. */
int xchg_req_field(struct xchg *x, const char *name, size_t nlen, const char *value, size_t vlen);
/* Why xchg_req_field refused a field with this status, for the answer. */
const char *xchg_field_refusal(const struct xchg *x, int status);
/* The head is complete: validate, rewrite headers, route and dispatch.
 * Returns 0, or an error status (the front answers it via the usual
 * callbacks: the exchange has made a local error response). */
int xchg_req_head_done(struct xchg *x);
/* Body bytes from the client. Returns 0 or 413. */
int xchg_req_body(struct xchg *x, const void *data, size_t len);
void xchg_req_end(struct xchg *x);
/* Bytes waiting for the upstream: the front stops reading above the limit. */
size_t xchg_req_buffered(const struct xchg *x);
/* The front sent n response body bytes on; credit goes to the upstream. */
void xchg_resp_consumed(struct xchg *x, size_t n);
/* The front handed the response's end to its client's transport. */
void xchg_resp_out(struct xchg *x);
/* Request time, for the access log and metrics: until the response went
 * out, or until now. */
uint64_t xchg_duration_us(const struct xchg *x);
/* The front is done with the exchange (response sent or client gone). */
void xchg_down_detach(struct xchg *x);
/* A response made at the gateway (4xx/5xx): short plain text. */
void xchg_respond_local(struct xchg *x, int status, const char *text);
const char *xchg_protocol_name(const struct xchg *x);

/* Upstream-facing. */
void xchg_up_resp_head(struct xchg *x);
void xchg_up_resp_data(struct xchg *x, const uint8_t *data, size_t len);
void xchg_up_resp_end(struct xchg *x);
/* How far a failed upstream attempt got, which decides where, if at all,
 * the request may go again. */
enum up_reach {
  UP_UNSEEN,   /* the backend never saw it (refused, past a GOAWAY, no connection) */
  UP_BROKEN,   /* it may have seen it, and the connection broke (a process died) */
  UP_ANSWERED, /* a live backend reset the stream: its app failed, and would again */
};
/* The upstream attempt failed and the upstream has let go of the exchange.
 * Retries when it safely can: an unseen request anywhere, an idempotent
 * one after a break anywhere, after an answer on another server only (as
 * nginx tries each server once). Else makes the error response. */
void xchg_up_failed(struct xchg *x, enum up_reach reach, int status, const char *why);
/* Nowhere to send it (no server left): the error response, no retry. */
void xchg_up_give_up(struct xchg *x, int status, const char *why);
/* Moves up to max request body bytes into buf for the upstream. */
size_t xchg_up_take_req_body(struct xchg *x, uint8_t *buf, size_t max);
bool xchg_up_req_body_eof(const struct xchg *x);
/* The upstream stream is gone; the exchange may now be freed. */
void xchg_up_detach(struct xchg *x);

/* Shutdown: every open WebSocket that sits between two frames toward its
 * client gets a close frame (1001, going away) and ends. The backend gets
 * one too when its direction is between frames as well (else its stream is
 * cancelled). Returns how many were closed. */
size_t xchg_websockets_going_away(void);

/* Called by the pool when the exchange is put on an upstream stream. */
void xchg_arm_response_timer(struct xchg *x);
/* An HTTP/2 or HTTP/3 stream's head must be in within
 * timeouts.client_header (nginx bounds an HTTP/2 stream's by
 * client_header_timeout too), else 408. A client could hold streams open
 * on unfinished heads for good, its connection kept alive by other
 * frames. HTTP/1.x has its connection's timer. */
void xchg_arm_head_timer(struct xchg *x);

#endif
