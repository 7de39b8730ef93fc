/* A QUIC connection: ngtcp2 with GnuTLS, one timer re-armed from
 * ngtcp2_conn_get_expiry after every read and write, and the write loop
 * that interleaves nghttp3's stream data with ngtcp2's packets (the shape
 * of ngtcp2's examples/server.cc, in C, with backpressure: HTTP/3 body
 * bytes stay with h3_down.c until acknowledged).
 *
 * Table of contents:
 *   ngtcp2 callbacks (thin: each makes one call)
 *   accept
 *   read, write (GSO batches, pacing), timer
 *   closing, draining, freeing
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/event.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>

#include "addr.h"
#include "config.h"
#include "fastrand.h"
#include "listener.h"
#include "log.h"
#include "per_ip.h"
#include "quic.h"

enum {
  H3_NO_ERROR = 0x100,
  H3_INTERNAL_ERROR = 0x102,
  H3_EXCESSIVE_LOAD = 0x107,
  MAX_SEGMENTS = QUIC_GSO_MAX_SEGMENTS,
};

static void conn_flush(struct flushable *f);
static void on_timer(evutil_socket_t fd, short what, void *arg);
static void start_closing(struct quic_conn *qc);
static void conn_free_later(struct quic_conn *qc);

void quic_conn_want_flush(struct quic_conn *qc) {
  if (!qc->dead) gw_want_flush(&qc->flush);
}

bool quic_conn_handshake_done(struct quic_conn *qc) {
  return ngtcp2_conn_get_handshake_completed(qc->conn) != 0;
}

/* ---------------------------------------------------------------------------
 * Callbacks.
 */
static void rand_cb(uint8_t *dest, size_t destlen, const ngtcp2_rand_ctx *ctx) {
  (void)ctx;
  for (size_t i = 0; i < destlen; i += 8) {
    uint64_t r = fastrand64();
    memcpy(dest + i, &r, destlen - i < 8 ? destlen - i : 8);
  }
}

static int get_new_connection_id(ngtcp2_conn *conn, ngtcp2_cid *cid, uint8_t *token, size_t cidlen,
                                 void *user) {
  (void)conn;
  struct quic_conn *qc = user;
  quic_generate_cid(qc->ep, cid->data, cidlen);
  cid->datalen = cidlen;
  if (ngtcp2_crypto_generate_stateless_reset_token(token, qc->ep->secret, sizeof qc->ep->secret,
                                                   cid) != 0)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  return cid_map_put(&qc->ep->cids, cid->data, cidlen, qc) == 0 ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int remove_connection_id(ngtcp2_conn *conn, const ngtcp2_cid *cid, void *user) {
  (void)conn;
  struct quic_conn *qc = user;
  cid_map_del(&qc->ep->cids, cid->data, cid->datalen);
  return 0;
}

static int handshake_completed(ngtcp2_conn *conn, void *user) {
  struct quic_conn *qc = user;
  /* A session ticket (for resumption and 0-RTT) and an address token for
   * the next connection, which then skips Retry. */
  if (gnutls_session_ticket_send(qc->tls, 1, 0) < 0) log_debug("quic: no session ticket sent");
  uint8_t token[NGTCP2_CRYPTO_MAX_REGULAR_TOKENLEN];
  const ngtcp2_path *path = ngtcp2_conn_get_path(conn);
  ngtcp2_ssize n = ngtcp2_crypto_generate_regular_token(token, qc->ep->secret, sizeof qc->ep->secret,
                                                        path->remote.addr, path->remote.addrlen,
                                                        quic_now_ns());
  if (n > 0) ngtcp2_conn_submit_new_token(conn, token, (size_t)n);
  return 0;
}

static int recv_stream_data(ngtcp2_conn *conn, uint32_t flags, int64_t stream_id, uint64_t offset,
                            const uint8_t *data, size_t datalen, void *user, void *stream_user) {
  (void)offset;
  (void)stream_user;
  struct quic_conn *qc = user;
  int consumed = h3_read_stream(qc, stream_id, data, datalen, flags & NGTCP2_STREAM_DATA_FLAG_FIN);
  if (consumed < 0) return NGTCP2_ERR_CALLBACK_FAILURE;
  /* What nghttp3 consumed (frames, QPACK) is credit at once; body bytes
   * come back as the upstream takes them (quic_conn_extend_stream). */
  ngtcp2_conn_extend_max_stream_offset(conn, stream_id, (uint64_t)consumed);
  ngtcp2_conn_extend_max_offset(conn, (uint64_t)consumed);
  return 0;
}

static int acked_stream_data_offset(ngtcp2_conn *conn, int64_t stream_id, uint64_t offset,
                                    uint64_t datalen, void *user, void *stream_user) {
  (void)conn;
  (void)offset;
  (void)stream_user;
  h3_acked(user, stream_id, datalen);
  return 0;
}

static int stream_close(ngtcp2_conn *conn, uint32_t flags, int64_t stream_id,
                        uint64_t app_error_code, void *user, void *stream_user) {
  (void)stream_user;
  if (!(flags & NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET)) app_error_code = H3_NO_ERROR;
  if (h3_stream_close(user, stream_id, app_error_code) != 0) {
    /* too many cancelled requests; handle_error keeps this code */
    struct quic_conn *qc = user;
    ngtcp2_connection_close_error_set_application_error(&qc->ccerr, H3_EXCESSIVE_LOAD, NULL, 0);
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  /* ngtcp2 0.12 does not give stream credit back by itself: one closed
   * client stream, one more the client may open. */
  if (!ngtcp2_conn_is_local_stream(conn, stream_id)) {
    if (ngtcp2_is_bidi_stream(stream_id)) ngtcp2_conn_extend_max_streams_bidi(conn, 1);
    else ngtcp2_conn_extend_max_streams_uni(conn, 1);
  }
  return 0;
}

static int stream_reset(ngtcp2_conn *conn, int64_t stream_id, uint64_t final_size,
                        uint64_t app_error_code, void *user, void *stream_user) {
  (void)conn;
  (void)final_size;
  (void)app_error_code;
  (void)stream_user;
  h3_stream_reset(user, stream_id);
  return 0;
}

static int stream_stop_sending(ngtcp2_conn *conn, int64_t stream_id, uint64_t app_error_code,
                               void *user, void *stream_user) {
  (void)conn;
  (void)app_error_code;
  (void)stream_user;
  h3_stream_reset(user, stream_id);
  return 0;
}

static int extend_max_remote_streams_bidi(ngtcp2_conn *conn, uint64_t max_streams, void *user) {
  (void)conn;
  h3_set_max_streams(user, max_streams);
  return 0;
}

static int extend_max_stream_data(ngtcp2_conn *conn, int64_t stream_id, uint64_t max_data,
                                  void *user, void *stream_user) {
  (void)conn;
  (void)max_data;
  (void)stream_user;
  h3_unblock(user, stream_id);
  return 0;
}

/* Application keys are in: HTTP/3 can open its control and QPACK streams. */
static int recv_tx_key(ngtcp2_conn *conn, ngtcp2_crypto_level level, void *user) {
  (void)conn;
  if (level != NGTCP2_CRYPTO_LEVEL_APPLICATION) return 0;
  return h3_conn_setup(user) == 0 ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
}

static const ngtcp2_callbacks callbacks = {
    .recv_client_initial = ngtcp2_crypto_recv_client_initial_cb,
    .recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb,
    .handshake_completed = handshake_completed,
    .encrypt = ngtcp2_crypto_encrypt_cb,
    .decrypt = ngtcp2_crypto_decrypt_cb,
    .hp_mask = ngtcp2_crypto_hp_mask_cb,
    .recv_stream_data = recv_stream_data,
    .acked_stream_data_offset = acked_stream_data_offset,
    .stream_close = stream_close,
    .rand = rand_cb,
    .get_new_connection_id = get_new_connection_id,
    .remove_connection_id = remove_connection_id,
    .update_key = ngtcp2_crypto_update_key_cb,
    .stream_reset = stream_reset,
    .extend_max_remote_streams_bidi = extend_max_remote_streams_bidi,
    .extend_max_stream_data = extend_max_stream_data,
    .delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb,
    .delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb,
    .get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb,
    .stream_stop_sending = stream_stop_sending,
    .version_negotiation = ngtcp2_crypto_version_negotiation_cb,
    .recv_tx_key = recv_tx_key,
};

/* ---------------------------------------------------------------------------
 * Accept.
 */
/* H3GATE_NGTCP2_DEBUG=1: ngtcp2's own trace on stderr. Debugging only: it
 * prints connection internals for every packet. */
static void debug_printf(void *user, const char *fmt, ...) {
  (void)user;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

/* quic.qlog_dir (debugging only): ngtcp2's qlog for each connection, in
 * DIR/ODCID.sqlog (JSON text sequences, as ngtcp2's own examples write).
 * The writes are plain blocking file writes on the event loop, which is
 * why it is never on unless configured. */
static void qlog_write(void *user, uint32_t flags, const void *data, size_t len) {
  struct quic_conn *qc = user;
  if (qc->qlog_fd < 0) return;
  while (len > 0) {
    ssize_t n = write(qc->qlog_fd, data, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    data = (const uint8_t *)data + n;
    len -= (size_t)n;
  }
  if (flags & NGTCP2_QLOG_WRITE_FLAG_FIN) {
    close(qc->qlog_fd);
    qc->qlog_fd = -1;
  }
}

static void qlog_open(struct quic_conn *qc, const char *dir, const ngtcp2_cid *odcid,
                      ngtcp2_settings *settings) {
  static bool warned;
  char path[4096], hex[2 * NGTCP2_MAX_CIDLEN + 1];
  for (size_t i = 0; i < odcid->datalen; i++) snprintf(hex + 2 * i, 3, "%02x", odcid->data[i]);
  hex[2 * odcid->datalen] = '\0';
  snprintf(path, sizeof path, "%s/%s.sqlog", dir, hex);
  qc->qlog_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (qc->qlog_fd < 0) {
    if (!warned) log_warn("quic: cannot write qlog %s: %s (said once)", path, strerror(errno));
    warned = true;
    return;
  }
  settings->qlog.odcid = *odcid;
  settings->qlog.write = qlog_write;
}

static ngtcp2_cc_algo cc_algo(enum quic_cc cc) {
  switch (cc) {
  case CC_RENO: return NGTCP2_CC_ALGO_RENO;
  case CC_BBR: return NGTCP2_CC_ALGO_BBR;
  default: return NGTCP2_CC_ALGO_CUBIC;
  }
}

struct quic_conn *quic_conn_accept(struct quic_endpoint *ep, const ngtcp2_pkt_hd *hd,
                                   const ngtcp2_path *path, const ngtcp2_cid *odcid,
                                   bool from_retry, const uint8_t *token, size_t tokenlen) {
  (void)token;
  (void)tokenlen;
  const struct conf_quic *q = &gw.rt->conf->quic;
  struct quic_conn *qc = calloc(1, sizeof *qc);
  if (qc == NULL) return NULL;
  qc->id = ++gw.next_id;
  qc->ep = ep;
  qc->qlog_fd = -1;
  qc->flush.flush = conn_flush;
  LIST_INIT(&qc->streams);
  ngtcp2_connection_close_error_default(&qc->ccerr);
  h3g_sockaddr_host((const struct sockaddr *)path->remote.addr, qc->peer_ip, sizeof qc->peer_ip);
  qc->peer_port = h3g_sockaddr_port((const struct sockaddr *)path->remote.addr);
  if (!per_ip_admit(qc->peer_ip, gw.rt->conf->max_connections_per_ip)) {
    free(qc);
    return NULL; /* its Initial goes unanswered, as above max_connections */
  }

  ngtcp2_cid scid;
  scid.datalen = QUIC_SCID_LEN;
  quic_generate_cid(ep, scid.data, scid.datalen);

  ngtcp2_settings settings;
  ngtcp2_settings_default(&settings);
  settings.initial_ts = quic_now_ns();
  settings.cc_algo = cc_algo(q->congestion_control);
  settings.max_window = q->connection_window * 2;
  settings.max_stream_window = q->stream_window * 2;
  settings.handshake_timeout = q->handshake_timeout_ms * NGTCP2_MILLISECONDS;
  settings.max_tx_udp_payload_size = QUIC_MAX_UDP_PAYLOAD;
  if (getenv("H3GATE_NGTCP2_DEBUG")) settings.log_printf = debug_printf;

  ngtcp2_transport_params params;
  ngtcp2_transport_params_default(&params);
  params.initial_max_stream_data_bidi_local = q->stream_window;
  params.initial_max_stream_data_bidi_remote = q->stream_window;
  params.initial_max_stream_data_uni = 256 * 1024;
  params.initial_max_data = q->connection_window;
  params.initial_max_streams_bidi = q->max_streams_bidi;
  params.initial_max_streams_uni = 3;
  params.max_idle_timeout = q->idle_timeout_ms * NGTCP2_MILLISECONDS;
  params.active_connection_id_limit = 7;
  params.stateless_reset_token_present = 1;
  if (ngtcp2_crypto_generate_stateless_reset_token(params.stateless_reset_token, ep->secret,
                                                   sizeof ep->secret, &scid) != 0)
    goto err_free;
  if (from_retry) {
    params.original_dcid = *odcid;
    params.retry_scid = hd->dcid;
    params.retry_scid_present = 1;
  } else {
    params.original_dcid = hd->dcid;
  }
  if (q->qlog_dir) qlog_open(qc, q->qlog_dir, &params.original_dcid, &settings);
  int rc = ngtcp2_conn_server_new(&qc->conn, &hd->scid, &scid, path, hd->version, &callbacks,
                                  &settings, &params, quic_ngtcp2_mem(), qc);
  if (rc != 0) {
    log_debug("quic: ngtcp2_conn_server_new: %s", ngtcp2_strerror(rc));
    goto err_free;
  }
  char err[256] = "";
  qc->certs = ep->listener->h3_certs; /* the current generation's, as qc->rt below */
  if (quic_tls_session_new(qc, q->early_data, err, sizeof err) != 0) {
    log_warn("quic: %s", err);
    goto err_conn;
  }
  /* Until the client switches to our ID it addresses us by its original DCID. */
  if (cid_map_put(&ep->cids, scid.data, scid.datalen, qc) != 0 ||
      cid_map_put(&ep->cids, hd->dcid.data, hd->dcid.datalen, qc) != 0)
    goto err_tls;
  qc->timer = evtimer_new(gw.base, on_timer, qc);
  qc->rt = gw_runtime_ref(gw.rt);
  LIST_INSERT_HEAD(&ep->conns, qc, link);
  ep->n_conns++;
  log_debug("quic conn %llu from %s:%u%s", (unsigned long long)qc->id, qc->peer_ip, qc->peer_port,
            from_retry ? " (after Retry)" : "");
  return qc;

err_tls:
  cid_map_del(&ep->cids, scid.data, scid.datalen);
  gnutls_deinit(qc->tls);
err_conn:
  ngtcp2_conn_del(qc->conn);
err_free:
  if (qc->qlog_fd >= 0) close(qc->qlog_fd);
  per_ip_leave(qc->peer_ip);
  free(qc);
  return NULL;
}

/* ---------------------------------------------------------------------------
 * Read.
 */
static void handle_error(struct quic_conn *qc, int rv) {
  switch (rv) {
  case NGTCP2_ERR_DRAINING:
    qc->draining = true;
    start_closing(qc);
    return;
  case NGTCP2_ERR_DROP_CONN:
  case NGTCP2_ERR_IDLE_CLOSE:
    conn_free_later(qc);
    return;
  case NGTCP2_ERR_CRYPTO:
    if (!qc->ccerr.error_code)
      ngtcp2_connection_close_error_set_transport_error_tls_alert(
          &qc->ccerr, ngtcp2_conn_get_tls_alert(qc->conn), NULL, 0);
    break;
  default:
    if (!qc->ccerr.error_code)
      ngtcp2_connection_close_error_set_transport_error_liberr(&qc->ccerr, rv, NULL, 0);
    break;
  }
  log_debug("quic conn %llu: %s", (unsigned long long)qc->id, ngtcp2_strerror(rv));
  start_closing(qc);
}

void quic_conn_read(struct quic_conn *qc, const ngtcp2_path *path, const ngtcp2_pkt_info *pi,
                    const uint8_t *data, size_t len) {
  if (qc->dead || qc->draining) return;
  if (qc->closing) {
    /* Whatever comes now gets our CONNECTION_CLOSE again (RFC 9000 10.2.1). */
    if (qc->close_pkt) quic_ep_send(qc->ep, &path->remote, qc->close_pkt, qc->close_pkt_len, qc->close_pkt_len);
    return;
  }
  int rv = ngtcp2_conn_read_pkt(qc->conn, path, pi, data, len, quic_now_ns());
  if (rv != 0) {
    handle_error(qc, rv);
    return;
  }
  quic_conn_want_flush(qc);
}

/* ---------------------------------------------------------------------------
 * Write.
 */
static void update_timer(struct quic_conn *qc) {
  ngtcp2_tstamp expiry = ngtcp2_conn_get_expiry(qc->conn);
  if (qc->goaway_final_ns && qc->goaway_final_ns < expiry) expiry = qc->goaway_final_ns;
  uint64_t now = quic_now_ns();
  uint64_t ns = expiry > now ? expiry - now : 0;
  struct timeval tv = {(time_t)(ns / 1000000000ull), (suseconds_t)(ns % 1000000000ull / 1000)};
  evtimer_add(qc->timer, &tv);
}

struct batch {
  uint8_t buf[MAX_SEGMENTS * QUIC_MAX_UDP_PAYLOAD];
  size_t len, segment, count;
  ngtcp2_sockaddr_union remote;
  ngtcp2_socklen remote_len;
};

/* Sends what the batch holds. -EAGAIN: queued at the endpoint, wait. */
static int send_batch(struct quic_conn *qc, struct batch *b) {
  if (b->len == 0) return 0;
  ngtcp2_addr remote = {&b->remote.sa, b->remote_len};
  int rc = quic_ep_send(qc->ep, &remote, b->buf, b->len, b->segment);
  b->len = b->count = b->segment = 0;
  return rc;
}

static bool same_remote(const struct batch *b, const ngtcp2_addr *a) {
  return b->remote_len == a->addrlen && memcmp(&b->remote, a->addr, a->addrlen) == 0;
}

/* Pacing: no more packets now than the congestion controller's quantum;
 * the expiry timer brings us back for the rest. */
static size_t packets_allowed_now(struct quic_conn *qc, size_t max_udp) {
  size_t max_pkts = ngtcp2_conn_get_send_quantum(qc->conn) / max_udp;
  if (max_pkts < 1) max_pkts = 1;
  if (max_pkts > MAX_SEGMENTS) max_pkts = MAX_SEGMENTS;
  return max_pkts;
}

/* Writes the next packet into dest, with as much HTTP/3 stream data as
 * fits. Returns its size, 0 when there is nothing to send, or -1 when the
 * connection failed (closing has started). */
static ngtcp2_ssize write_packet(struct quic_conn *qc, ngtcp2_path_storage *ps, uint8_t *dest,
                                 size_t max_udp, uint64_t ts) {
  ngtcp2_pkt_info pi;
  for (;;) {
    int64_t stream_id = -1;
    int fin = 0;
    ngtcp2_vec vec[16];
    ssize_t vcnt = 0;
    if (qc->h3 && ngtcp2_conn_get_max_data_left(qc->conn)) {
      vcnt = h3_writev(qc, &stream_id, &fin, vec, 16);
      if (vcnt < 0) {
        ngtcp2_connection_close_error_set_application_error(&qc->ccerr, H3_INTERNAL_ERROR, NULL, 0);
        start_closing(qc);
        return -1;
      }
    }
    ngtcp2_ssize ndatalen;
    uint32_t flags = NGTCP2_WRITE_STREAM_FLAG_MORE | (fin ? NGTCP2_WRITE_STREAM_FLAG_FIN : 0);
    ngtcp2_ssize n = ngtcp2_conn_writev_stream(qc->conn, &ps->path, &pi, dest, max_udp, &ndatalen,
                                               flags, stream_id, vec, (size_t)vcnt, ts);
    if (n == NGTCP2_ERR_STREAM_DATA_BLOCKED) {
      h3_block(qc, stream_id);
    } else if (n == NGTCP2_ERR_STREAM_SHUT_WR) {
      h3_shutdown_write(qc, stream_id);
    } else if (n == NGTCP2_ERR_WRITE_MORE) {
      h3_wrote(qc, stream_id, (size_t)ndatalen); /* room left: coalesce another stream */
    } else if (n < 0) {
      ngtcp2_connection_close_error_set_transport_error_liberr(&qc->ccerr, (int)n, NULL, 0);
      start_closing(qc);
      return -1;
    } else {
      if (ndatalen >= 0) h3_wrote(qc, stream_id, (size_t)ndatalen);
      return n;
    }
  }
}

/* Adds the packet of n bytes just written at b->buf + b->len to the batch,
 * sending the batch first or after as GSO needs. -EAGAIN: the endpoint
 * queued it, wait for the socket. */
static int batch_packet(struct quic_conn *qc, struct batch *b, const ngtcp2_path *path, size_t n) {
  if (b->count > 0 && !same_remote(b, &path->remote)) {
    /* The packet belongs to another path: send what came before it, then
     * start a new batch with it. */
    uint8_t keep[QUIC_MAX_UDP_PAYLOAD];
    memcpy(keep, b->buf + b->len, n);
    if (send_batch(qc, b) == -EAGAIN) return -EAGAIN;
    memcpy(b->buf, keep, n);
  }
  if (b->count == 0) {
    memcpy(&b->remote, path->remote.addr, path->remote.addrlen);
    b->remote_len = path->remote.addrlen;
    b->segment = n;
  }
  b->len += n;
  b->count++;
  /* A GSO batch is segments of one size; a shorter one ends it. */
  if (n < b->segment || b->count == MAX_SEGMENTS) return send_batch(qc, b);
  return 0;
}

static void conn_flush(struct flushable *f) {
  struct quic_conn *qc = (struct quic_conn *)f;
  if (qc->dead || qc->closing || qc->draining || qc->blocked) return;
  static struct batch b;
  b.len = b.count = b.segment = 0;
  uint64_t ts = quic_now_ns();
  size_t max_udp = ngtcp2_conn_get_path_max_tx_udp_payload_size(qc->conn);
  if (max_udp > QUIC_MAX_UDP_PAYLOAD) max_udp = QUIC_MAX_UDP_PAYLOAD;
  size_t max_pkts = packets_allowed_now(qc, max_udp);
  ngtcp2_path_storage ps;
  ngtcp2_path_storage_zero(&ps);
  bool blocked = false;
  for (size_t pkts = 0; pkts < max_pkts && !blocked; pkts++) {
    ngtcp2_ssize n = write_packet(qc, &ps, b.buf + b.len, max_udp, ts);
    if (n < 0) return;
    if (n == 0) break;
    blocked = batch_packet(qc, &b, &ps.path, (size_t)n) == -EAGAIN;
  }
  if (!blocked) blocked = send_batch(qc, &b) == -EAGAIN;
  ngtcp2_conn_update_pkt_tx_time(qc->conn, ts);
  if (blocked) quic_ep_wait_writable(qc->ep, qc);
  update_timer(qc);
  if (!blocked && qc->goaway && qc->goaway_final_ns == 0 && h3_idle(qc)) start_closing(qc);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct quic_conn *qc = arg;
  if (qc->closing || qc->draining) {
    conn_free_later(qc); /* the closing/draining period is over */
    return;
  }
  uint64_t now = quic_now_ns();
  if (qc->goaway_final_ns && now >= qc->goaway_final_ns) {
    qc->goaway_final_ns = 0;
    h3_goaway(qc);
  }
  int rv = ngtcp2_conn_handle_expiry(qc->conn, now);
  if (rv != 0) {
    handle_error(qc, rv);
    return;
  }
  conn_flush(&qc->flush);
}

/* How long the first GOAWAY stands before the second: a few round trips
 * (RFC 9114 5.2), and a second at least, as HTTP/2 waits, so requests
 * already on their way arrive and are served. */
static uint64_t goaway_grace_ns(struct quic_conn *qc) {
  ngtcp2_conn_stat stat;
  ngtcp2_conn_get_conn_stat(qc->conn, &stat);
  uint64_t grace = 3 * stat.smoothed_rtt;
  return grace > NGTCP2_SECONDS ? grace : NGTCP2_SECONDS;
}

/* ---------------------------------------------------------------------------
 * Stream-level services for h3_down.c.
 */
void quic_conn_extend_stream(struct quic_conn *qc, int64_t stream_id, size_t n) {
  if (qc->dead || qc->closing || qc->draining) return;
  ngtcp2_conn_extend_max_stream_offset(qc->conn, stream_id, n);
  quic_conn_want_flush(qc);
}

void quic_conn_shutdown_stream(struct quic_conn *qc, int64_t stream_id, uint64_t app_error) {
  if (qc->dead || qc->closing || qc->draining) return;
  ngtcp2_conn_shutdown_stream(qc->conn, stream_id, app_error);
  quic_conn_want_flush(qc);
}

int quic_conn_open_uni(struct quic_conn *qc, int64_t *stream_id) {
  return ngtcp2_conn_open_uni_stream(qc->conn, stream_id, NULL) == 0 ? 0 : -1;
}

/* ---------------------------------------------------------------------------
 * Closing.
 */
/* Writes CONNECTION_CLOSE once, keeps it for the closing period (3 PTO). */
static void start_closing(struct quic_conn *qc) {
  if (qc->dead || qc->closing) return;
  if (!qc->draining && !ngtcp2_conn_is_in_closing_period(qc->conn) &&
      !ngtcp2_conn_is_in_draining_period(qc->conn)) {
    uint8_t buf[QUIC_MAX_UDP_PAYLOAD];
    ngtcp2_path_storage ps;
    ngtcp2_path_storage_zero(&ps);
    ngtcp2_pkt_info pi;
    ngtcp2_ssize n = ngtcp2_conn_write_connection_close(qc->conn, &ps.path, &pi, buf, sizeof buf,
                                                        &qc->ccerr, quic_now_ns());
    if (n > 0) {
      qc->close_pkt = malloc((size_t)n);
      if (qc->close_pkt) {
        memcpy(qc->close_pkt, buf, (size_t)n);
        qc->close_pkt_len = (size_t)n;
        quic_ep_send(qc->ep, &ps.path.remote, buf, (size_t)n, (size_t)n);
      }
    }
  }
  qc->closing = true;
  ngtcp2_duration pto = ngtcp2_conn_get_pto(qc->conn);
  uint64_t ns = 3 * pto;
  struct timeval tv = {(time_t)(ns / 1000000000ull), (suseconds_t)(ns % 1000000000ull / 1000)};
  evtimer_add(qc->timer, &tv);
}

void quic_conn_close_now(struct quic_conn *qc, uint64_t app_error) {
  if (qc->dead) return;
  if (!qc->closing && !qc->draining) {
    ngtcp2_connection_close_error_set_application_error(&qc->ccerr, app_error, NULL, 0);
    start_closing(qc);
  }
  conn_free_later(qc);
}

void quic_conn_shutdown(struct quic_conn *qc) {
  if (qc->dead || qc->closing || qc->draining || qc->goaway) return;
  qc->goaway = true;
  qc->goaway_final_ns = quic_now_ns() + goaway_grace_ns(qc);
  if (qc->h3) h3_goaway_notice(qc);
  ngtcp2_connection_close_error_set_application_error(&qc->ccerr, H3_NO_ERROR, NULL, 0);
  quic_conn_want_flush(qc);
}

static void conn_free(void *p) {
  struct quic_conn *qc = p;
  if (qc->timer) event_free(qc->timer);
  ngtcp2_conn_del(qc->conn);
  gnutls_deinit(qc->tls);
  if (qc->qlog_fd >= 0) close(qc->qlog_fd); /* ngtcp2 ended it without a final write */
  free(qc->close_pkt);
  free(qc);
}

static void conn_free_later(struct quic_conn *qc) {
  if (qc->dead) return;
  qc->dead = true;
  struct quic_endpoint *ep = qc->ep;
  /* Our connection IDs stop pointing here. */
  size_t n = ngtcp2_conn_get_num_scid(qc->conn);
  ngtcp2_cid *scids = calloc(n ? n : 1, sizeof *scids);
  if (scids) {
    n = ngtcp2_conn_get_scid(qc->conn, scids);
    for (size_t i = 0; i < n; i++) cid_map_del(&ep->cids, scids[i].data, scids[i].datalen);
    free(scids);
  }
  const ngtcp2_cid *odcid = ngtcp2_conn_get_client_initial_dcid(qc->conn);
  if (odcid && cid_map_get(&ep->cids, odcid->data, odcid->datalen) == qc)
    cid_map_del(&ep->cids, odcid->data, odcid->datalen);
  if (qc->blocked) TAILQ_REMOVE(&ep->blocked, qc, blocked_link);
  evtimer_del(qc->timer);
  gw_flush_cancel(&qc->flush);
  h3_conn_free(qc);
  LIST_REMOVE(qc, link);
  ep->n_conns--;
  per_ip_leave(qc->peer_ip);
  gw_runtime_unref(qc->rt);
  gw_defer_free(conn_free, qc);
  quic_ep_conn_gone(ep);
}
