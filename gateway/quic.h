/* HTTP/3 over QUIC: the endpoint (UDP socket, connection-ID map, Retry,
 * stateless reset, version negotiation), connections (ngtcp2 + GnuTLS) and
 * HTTP/3 streams (nghttp3) into exchanges.
 *
 * Every ngtcp2, nghttp3 and GnuTLS call lives in quic_*.c and h3_down.c, so
 * a move to ngtcp2 1.x touches these files only. The rest of the gateway
 * sees the functions at the end of this header. */
#ifndef H3G_GATEWAY_QUIC_H
#define H3G_GATEWAY_QUIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <gnutls/gnutls.h>
#include <nghttp3/nghttp3.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>

#include "gw.h"
#include "token_bucket.h"

struct listener;
struct quic_conn;
struct h3_strm;

enum {
  QUIC_SCID_LEN = 18,        /* our connection IDs; the first byte names the worker process */
  QUIC_MAX_UDP_PAYLOAD = 1452,
  QUIC_GSO_MAX_SEGMENTS = 64,
};

/* Connection IDs we issued, to their connections: open addressing with a
 * keyed hash (SipHash with a random key), so clients can't aim collisions. */
struct cid_entry {
  uint8_t len;               /* 0: empty, 255: deleted */
  uint8_t cid[NGTCP2_MAX_CIDLEN];
  struct quic_conn *conn;
};

struct cid_map {
  struct cid_entry *slots;
  size_t cap, used, tombstones;
  uint64_t key[2];
  /* The last hit: a GRO batch or a bulk transfer brings many packets for one
   * connection in a row, and each would hash the same CID again. */
  uint8_t last_cid[NGTCP2_MAX_CIDLEN];
  size_t last_len; /* 0: nothing cached */
  struct quic_conn *last_conn;
};

struct rate_limit {
  double tokens;
  uint64_t last_us;
};

/* A certificate and key, and the certificate parsed, to match SNI names. */
struct quic_cert {
  gnutls_certificate_credentials_t cred;
  gnutls_x509_crt_t crt;
};

/* A TLS listener's certificates for QUIC, loaded with its configuration
 * generation (a reload renews them for new handshakes). A connection takes
 * its generation's, which its reference to the runtime keeps alive. */
struct quic_certs {
  size_t n;
  struct quic_cert cert[]; /* [0] the default, then those chosen by SNI */
};

/* Shared TLS state of an endpoint, the same across reloads: session
 * tickets (their key comes from the endpoint's secret, so a ticket issued
 * before a reload resumes after it), 0-RTT anti-replay. */
struct quic_tls {
  gnutls_datum_t ticket_key;
  gnutls_anti_replay_t anti_replay;
  gnutls_priority_t priority;
};

struct quic_endpoint {
  struct listener *listener;       /* the current generation's; NULL once retiring */
  bool retiring;                   /* its listener left the configuration: no new
                                    * connections; it closes with its last one */
  bool freeing;                    /* its last connection went: freed at the flush point */
  int fd;
  int family;
  struct sockaddr_storage local;
  socklen_t local_len;
  uint16_t port;
  struct event *ev_read;
  struct event *ev_write;
  bool gso;                        /* UDP_SEGMENT works here */
  bool gro;
  struct cid_map cids;
  uint8_t secret[32];              /* Retry tokens, NEW_TOKEN, stateless resets */
  uint8_t worker_index;
  struct quic_tls tls;
  struct rate_limit reset_rate, vn_rate;
  uint32_t handshakes_this_second;
  uint64_t handshake_second;
  LIST_HEAD(, quic_conn) conns;
  size_t n_conns;
  /* Packets the socket refused with EAGAIN wait here (bounded: QUIC
   * retransmits what is dropped). */
  struct pending_pkt *pending;
  size_t n_pending, cap_pending;
  TAILQ_HEAD(, quic_conn) blocked; /* connections waiting for the socket */
};

struct quic_conn {
  struct flushable flush;
  uint64_t id;
  struct quic_endpoint *ep;
  struct gw_runtime *rt;
  ngtcp2_conn *conn;
  gnutls_session_t tls;
  const struct quic_certs *certs;  /* its generation's; rt keeps them */
  ngtcp2_crypto_conn_ref conn_ref;
  nghttp3_conn *h3;
  ngtcp2_path_storage ps;          /* the path of the last packet in */
  struct event *timer;
  ngtcp2_connection_close_error ccerr;
  uint8_t *close_pkt;              /* CONNECTION_CLOSE, resent in the closing period */
  size_t close_pkt_len;
  bool closing;                    /* sent CONNECTION_CLOSE */
  bool draining;                   /* peer closed: wait, then free */
  bool dead;
  bool blocked;                    /* waits for the socket to take more */
  bool goaway;                     /* shutting down: the first GOAWAY, refusing nothing, went */
  uint64_t goaway_final_ns;        /* when the second, real one goes (0: it has) */
  bool early_data_ok;
  int qlog_fd;                     /* quic.qlog_dir: this connection's qlog, or -1 */
  char peer_ip[64];
  uint16_t peer_port;
  LIST_HEAD(, h3_strm) streams;
  size_t n_streams;
  struct token_bucket cancels;     /* requests the client may cancel (h3_stream_close) */
  LIST_ENTRY(quic_conn) link;
  TAILQ_ENTRY(quic_conn) blocked_link;
};

/* quic_mem.c: counting allocators for the libraries */
struct quic_mem_stats {
  int64_t ngtcp2_bytes;
  int64_t nghttp3_bytes;
};
extern struct quic_mem_stats quic_mem_stats;
const ngtcp2_mem *quic_ngtcp2_mem(void);
const nghttp3_mem *quic_nghttp3_mem(void);

/* quic_tls.c */
/* The certificates of cl for QUIC, or NULL with a message in err. */
struct quic_certs *quic_certs_load(const struct conf_listen *cl, char *err, size_t err_size);
void quic_certs_free(struct quic_certs *certs);
int quic_tls_init(struct quic_tls *t, const uint8_t secret[32], char *err, size_t err_size);
void quic_tls_free(struct quic_tls *t);
int quic_tls_session_new(struct quic_conn *qc, bool early_data, char *err, size_t err_size);

/* quic_endpoint.c */
uint64_t quic_now_ns(void);
int cid_map_put(struct cid_map *m, const uint8_t *cid, size_t len, struct quic_conn *conn);
void cid_map_del(struct cid_map *m, const uint8_t *cid, size_t len);
struct quic_conn *cid_map_get(struct cid_map *m, const uint8_t *cid, size_t len);
/* Sends datagrams of one size (the last may be shorter) to remote. 0, or
 * -EAGAIN when the socket is full (the caller waits in the blocked list). */
int quic_ep_send(struct quic_endpoint *ep, const ngtcp2_addr *remote, const uint8_t *data,
                 size_t len, size_t segment);
void quic_ep_wait_writable(struct quic_endpoint *ep, struct quic_conn *qc);
void quic_generate_cid(struct quic_endpoint *ep, uint8_t *cid, size_t len);
bool quic_rate_allow(struct rate_limit *r, uint32_t per_second);

/* quic_conn.c */
struct quic_conn *quic_conn_accept(struct quic_endpoint *ep, const ngtcp2_pkt_hd *hd,
                                   const ngtcp2_path *path, const ngtcp2_cid *odcid,
                                   bool from_retry, const uint8_t *token, size_t tokenlen);
/* A datagram for this connection. */
void quic_conn_read(struct quic_conn *qc, const ngtcp2_path *path, const ngtcp2_pkt_info *pi,
                    const uint8_t *data, size_t len);
void quic_conn_want_flush(struct quic_conn *qc);
/* Graceful: GOAWAY now, CONNECTION_CLOSE when the streams are done. */
void quic_conn_shutdown(struct quic_conn *qc);
void quic_conn_close_now(struct quic_conn *qc, uint64_t app_error);
/* Credit back for n stream bytes the application took. */
void quic_conn_extend_stream(struct quic_conn *qc, int64_t stream_id, size_t n);
/* Stream-level calls h3_down.c makes on the transport. */
void quic_conn_shutdown_stream(struct quic_conn *qc, int64_t stream_id, uint64_t app_error);
int quic_conn_open_uni(struct quic_conn *qc, int64_t *stream_id);
bool quic_conn_handshake_done(struct quic_conn *qc);

/* h3_down.c: HTTP/3 on a connection. */
int h3_conn_setup(struct quic_conn *qc);
int h3_read_stream(struct quic_conn *qc, int64_t stream_id, const uint8_t *data, size_t len,
                   bool fin);
/* -1 when the client has cancelled too many requests: the connection must
 * close with H3_EXCESSIVE_LOAD. */
int h3_stream_close(struct quic_conn *qc, int64_t stream_id, uint64_t app_error);
void h3_stream_reset(struct quic_conn *qc, int64_t stream_id);
void h3_acked(struct quic_conn *qc, int64_t stream_id, uint64_t n);
void h3_unblock(struct quic_conn *qc, int64_t stream_id);
void h3_set_max_streams(struct quic_conn *qc, uint64_t max);
/* Streams of HTTP/3 frames to write: fills vec, returns count or <0. */
ssize_t h3_writev(struct quic_conn *qc, int64_t *stream_id, int *fin, ngtcp2_vec *vec,
                  size_t veccnt);
void h3_wrote(struct quic_conn *qc, int64_t stream_id, size_t n);
void h3_block(struct quic_conn *qc, int64_t stream_id);
void h3_shutdown_write(struct quic_conn *qc, int64_t stream_id);
/* Graceful shutdown's two GOAWAYs (RFC 9114 5.2): the notice, then the
 * one that names the first stream not taken. */
void h3_goaway_notice(struct quic_conn *qc);
void h3_goaway(struct quic_conn *qc);
bool h3_idle(const struct quic_conn *qc);
void h3_conn_free(struct quic_conn *qc);

/* For the rest of the gateway. */
int quic_listener_open(struct listener *l, const struct gw_conf *conf, int inherit_fd, char *err,
                       size_t err_size);
/* A bound UDP socket for cl's HTTP/3 port (SO_REUSEPORT for the master's
 * per-process sockets), or -1 with a message in err. */
int quic_udp_open(const struct conf_listen *cl, const struct gw_conf *conf, bool reuseport,
                  char *err, size_t err_size);
/* Says why HTTP/3 cannot run on a listen address (the one wording for the
 * lone gateway and the master); TCP keeps serving there. */
void quic_say_http3_off(const char *address, const char *why);
/* Makes the QUIC secret and the 0-RTT anti-replay store now, so processes
 * forked later share them: 0, or -1 when the store could not be mapped. */
int quic_shared_prepare(const struct gw_conf *conf);
/* The anti-replay store (quic_tls.c): 0 or -1 (no memory). */
int quic_replay_prepare(void);
/* Whether this ClientHello (GnuTLS's key for it) was seen in its window;
 * records it if not. True also when the store can't tell (none was made, or
 * the key's neighbourhood is full): no early data. */
bool quic_replay_seen(const uint8_t *client_hello_key, size_t len, time_t expires);
/* For tests: the first word of the store that a key's search looks at. */
size_t quic_replay_home(const uint8_t *client_hello_key, size_t len);
/* quic_replay_seen at second now, with between (unless NULL) run after it
 * looked and before it claims a word: how a test lets another process in
 * there. */
bool quic_replay_seen_at(const uint8_t *client_hello_key, size_t len, time_t expires, time_t now,
                         void (*between)(void *), void *arg);
/* Moves the endpoint (socket and live connections) to the next generation. */
void quic_listener_adopt(struct listener *to, struct listener *from);
void quic_listener_close(struct listener *l);
/* A reload dropped the listener (or its HTTP/3, or moved its port): the
 * endpoint takes no new connections, its connections get the two-step
 * GOAWAY, and it closes once they are gone. */
void quic_listener_retire(struct listener *l);
/* A connection of ep was freed. */
void quic_ep_conn_gone(struct quic_endpoint *ep);
/* Graceful: each connection (or each of an older configuration, which a
 * reload moves on as it does TCP ones) gets the two-step GOAWAY. */
void quic_shutdown_all(bool only_old_generations);
size_t quic_connection_count(void);

#endif
