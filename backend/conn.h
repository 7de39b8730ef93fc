/* A client connection of the worker, and the ops a protocol module (h1, h2)
 * offers to the ASGI bridge. The loop is Python's asyncio loop: each
 * connection registers its fd with loop.add_reader/add_writer; everything
 * runs with the GIL held.
 *
 * Ownership: the server owns connections (an fd-indexed table); a
 * connection holds one reference to each of its open streams and drops it
 * when the protocol is done with the stream; the app's task holds the
 * others. Connections are freed only from the server's flush pass, never
 * inside a protocol callback. */
#ifndef H3G_BACKEND_CONN_H
#define H3G_BACKEND_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <Python.h>

#include "bytebuf.h"

struct conn;
struct asgi_stream;
struct listener;

struct proto_ops {
  const char *name;
  /* Bytes read from the socket. */
  void (*on_read)(struct conn *c, const uint8_t *data, size_t len);
  /* Moves whatever the protocol has to say into c->out (bounded). */
  void (*produce)(struct conn *c);
  /* The app queued response data for s (head, body, trailers or end). */
  void (*resume_send)(struct conn *c, struct asgi_stream *s);
  /* The app consumed n request body bytes: return credit to the client. */
  void (*consumed)(struct conn *c, struct asgi_stream *s, size_t n);
  /* The app asked for the body of a request that sent Expect: 100-continue. */
  void (*send_continue)(struct conn *c, struct asgi_stream *s);
  /* The response cannot be completed (app error after it started). */
  void (*abort_stream)(struct conn *c, struct asgi_stream *s);
  /* The app's task finished; the stream may be released. */
  void (*app_finished)(struct conn *c, struct asgi_stream *s);
  /* A request head did not come within --timeout-request-head: answer
   * 408 if the protocol can, and close. */
  void (*head_timed_out)(struct conn *c);
  /* Begin a graceful close: finish open streams, accept no new ones. */
  void (*shutdown)(struct conn *c);
  /* The connection is being freed: release protocol state and streams. */
  void (*destroy)(struct conn *c);
};

enum conn_state {
  CONN_SNIFFING, /* reading the first bytes to tell HTTP/1.1 from h2c */
  CONN_OPEN,     /* a protocol module drives the connection */
  CONN_CLOSING,  /* flush what is queued, then close */
  CONN_CLOSED,   /* fd closed; freed at the next flush pass */
};

struct conn {
  int fd;
  enum conn_state state;
  const struct proto_ops *proto;
  void *proto_data;
  struct listener *listener;
  struct sockaddr_storage peer;
  socklen_t peer_len;
  bool peer_trusted;          /* --forwarded-allow-ips matched the peer */
  PyObject *client;           /* scope["client"]: (host, port) or None */
  struct bytebuf out;         /* bytes waiting for the socket */
  bool reading;               /* registered with add_reader */
  bool writing;               /* registered with add_writer */
  bool read_paused;           /* backpressure: a stream's buffer is full */
  bool flush_queued;          /* on the server's flush list */
  bool draining;              /* graceful shutdown began */
  bool abort_close;           /* conn_close(c, true): no lingering either */
  bool lingering;             /* answer out, write side shut: reading the rest until EOF */
  uint64_t linger_until_ms;
  uint32_t active_streams;    /* streams whose app task has not finished */
  uint64_t last_activity_ms;
  uint64_t head_since_ms;     /* a request head under way since; 0: none */
  uint64_t id;                /* for log lines */
  struct conn *flush_next;
};

/* Services the server offers to protocol modules. */
void conn_want_flush(struct conn *c);
void conn_pause_read(struct conn *c);
void conn_resume_read(struct conn *c);
/* Closes once c->out has been written (or at once if abort). */
void conn_close(struct conn *c, bool abort);
/* CLOCK_MONOTONIC at the kernel tick's resolution (1-4 ms): every use is a
 * timeout in milliseconds, and it is read per WebSocket message, where a
 * precise read (the TSC, slow on a VM) showed in the profile. */
uint64_t server_now_ms(void);
/* Counts a finished request toward --max-requests. */
void server_count_request(void);

extern const struct proto_ops h2_proto_ops;
extern const struct proto_ops h1_proto_ops;
/* Protocol start-up, with the bytes read so far (the preface). */
int h2_conn_start(struct conn *c);
int h1_conn_start(struct conn *c);

#endif
