/* HTTP/3 from clients into exchanges, on nghttp3.
 *
 * Backpressure: request body credit goes back to the client (QUIC stream
 * flow control) only as the upstream takes the bytes; connection-level
 * credit at once. Response bytes move from the exchange into this
 * stream's send buffer, which holds them until QUIC acknowledges them
 * (nghttp3 needs them until then); the buffer is bounded by body_buffer, so
 * a slow client slows the backend.
 *
 * Table of contents:
 *   the send buffer
 *   nghttp3 callbacks
 *   exchange callbacks
 *   what quic_conn.c calls
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/buffer.h>

#include "addr.h"
#include "config.h"
#include "http_status.h"
#include "log.h"
#include "quic.h"
#include "xchg.h"

enum {
  BLOCK_SIZE = 16384,
  CANCEL_BURST = 1000, /* requests a client may cancel at once (charge_cancel) */
  CANCEL_RATE = 33,    /* and a second after that */
};

/* ---------------------------------------------------------------------------
 * The send buffer: fixed blocks, so data handed to nghttp3 never moves.
 */
struct block {
  struct block *next;
  size_t len;
  uint8_t data[BLOCK_SIZE];
};

struct sendbuf {
  struct block *head, *tail;
  size_t head_acked;  /* bytes of head already acknowledged */
  struct block *give; /* next block with bytes not yet given to nghttp3 */
  size_t give_off;
  size_t unacked;     /* bytes in the buffer: given or not */
};

static size_t sendbuf_fill(struct sendbuf *sb, struct evbuffer *from, size_t limit) {
  size_t moved = 0;
  while (sb->unacked < limit && evbuffer_get_length(from) > 0) {
    if (sb->tail == NULL || sb->tail->len == BLOCK_SIZE) {
      struct block *b = malloc(sizeof *b);
      if (b == NULL) break;
      b->next = NULL;
      b->len = 0;
      if (sb->tail) sb->tail->next = b;
      else sb->head = b;
      sb->tail = b;
      if (sb->give == NULL) {
        sb->give = b;
        sb->give_off = 0;
      }
    }
    size_t room = BLOCK_SIZE - sb->tail->len;
    if (room > limit - sb->unacked) room = limit - sb->unacked;
    int n = evbuffer_remove(from, sb->tail->data + sb->tail->len, room);
    if (n <= 0) break;
    sb->tail->len += (size_t)n;
    sb->unacked += (size_t)n;
    moved += (size_t)n;
  }
  return moved;
}

/* Vectors for bytes nghttp3 hasn't seen yet. */
static size_t sendbuf_give(struct sendbuf *sb, nghttp3_vec *vec, size_t veccnt) {
  size_t n = 0;
  while (n < veccnt && sb->give) {
    struct block *b = sb->give;
    if (sb->give_off < b->len) {
      vec[n].base = b->data + sb->give_off;
      vec[n].len = b->len - sb->give_off;
      n++;
      sb->give_off = b->len;
    }
    if (b->len < BLOCK_SIZE || b->next == NULL) break; /* more may land in this block */
    sb->give = b->next;
    sb->give_off = 0;
  }
  return n;
}

static bool sendbuf_all_given(const struct sendbuf *sb) {
  return sb->give == NULL || (sb->give == sb->tail && sb->give_off == sb->tail->len);
}

static void sendbuf_ack(struct sendbuf *sb, size_t n) {
  sb->unacked -= n < sb->unacked ? n : sb->unacked;
  while (n > 0 && sb->head) {
    struct block *b = sb->head;
    size_t left = b->len - sb->head_acked;
    if (n < left || (b == sb->tail && b->len < BLOCK_SIZE && n == left)) {
      sb->head_acked += n;
      return; /* the tail block may still grow: keep it */
    }
    n -= left;
    sb->head = b->next;
    if (sb->give == b) {
      sb->give = b->next;
      sb->give_off = 0;
    }
    if (sb->tail == b) sb->tail = NULL;
    sb->head_acked = 0;
    free(b);
  }
}

static void sendbuf_free(struct sendbuf *sb) {
  while (sb->head) {
    struct block *b = sb->head;
    sb->head = b->next;
    free(b);
  }
  memset(sb, 0, sizeof *sb);
}

/* ---------------------------------------------------------------------------
 * Streams.
 */
struct h3_strm {
  struct quic_conn *qc;
  int64_t id;
  struct xchg *x;
  int error;        /* status to answer with once the head is in */
  size_t field_bytes; /* the head's size as RFC 9114 counts it (+32 per field) */
  bool deferred;    /* read_data said WOULDBLOCK */
  bool reset_by_us; /* its error code at close is ours, not a client's cancel */
  bool stopped_reading; /* answered before the request ended: STOP_SENDING asked */
  struct sendbuf out;
  LIST_ENTRY(h3_strm) link;
};

static const struct xchg_down_ops xchg_ops;

static void strm_free(struct h3_strm *s) {
  LIST_REMOVE(s, link);
  s->qc->n_streams--;
  if (s->x) xchg_down_detach(s->x);
  sendbuf_free(&s->out);
  free(s);
}

static void strm_reset(struct h3_strm *s) {
  s->reset_by_us = true;
  quic_conn_shutdown_stream(s->qc, s->id, NGHTTP3_H3_INTERNAL_ERROR);
}

static size_t out_limit(const struct h3_strm *s) { return s->qc->rt->conf->body_buffer; }

/* ---------------------------------------------------------------------------
 * nghttp3 callbacks.
 */
static int cb_begin_headers(nghttp3_conn *conn, int64_t stream_id, void *user, void *stream_user) {
  (void)stream_user;
  struct quic_conn *qc = user;
  struct h3_strm *s = calloc(1, sizeof *s);
  if (s == NULL) return NGHTTP3_ERR_CALLBACK_FAILURE;
  s->qc = qc;
  s->id = stream_id;
  s->x = xchg_new(qc->rt, XCHG_HTTP_3, &xchg_ops, s);
  if (s->x == NULL) {
    free(s);
    return NGHTTP3_ERR_CALLBACK_FAILURE;
  }
  s->x->tls = true;
  h3g_copy_str(s->x->client_ip, sizeof s->x->client_ip, qc->peer_ip);
  s->x->client_port = qc->peer_port;
  xchg_arm_head_timer(s->x);
  LIST_INSERT_HEAD(&qc->streams, s, link);
  qc->n_streams++;
  nghttp3_conn_set_stream_user_data(conn, stream_id, s);
  return 0;
}

static int cb_recv_header(nghttp3_conn *conn, int64_t stream_id, int32_t token, nghttp3_rcbuf *name,
                          nghttp3_rcbuf *value, uint8_t flags, void *user, void *stream_user) {
  (void)conn;
  (void)stream_id;
  (void)token;
  (void)flags;
  (void)user;
  struct h3_strm *s = stream_user;
  if (s == NULL || s->error) return 0;
  nghttp3_vec n = nghttp3_rcbuf_get_buf(name), v = nghttp3_rcbuf_get_buf(value);
  /* nghttp3 0.8 only advertises SETTINGS_MAX_FIELD_SECTION_SIZE; the limit
   * is ours to hold. */
  s->field_bytes += n.len + v.len + 32;
  if (s->field_bytes > s->qc->rt->conf->quic.max_field_section_size) {
    s->error = 431;
    return 0;
  }
  s->error = xchg_req_field(s->x, (const char *)n.base, n.len, (const char *)v.base, v.len);
  return 0;
}

static bool early_data_method_ok(const struct conf_quic *q, const char *method) {
  static const char *const safe[] = {"GET", "HEAD", "OPTIONS"};
  if (q->early_data_methods == NULL) {
    for (size_t i = 0; i < 3; i++)
      if (strcmp(method, safe[i]) == 0) return true;
    return false;
  }
  for (size_t i = 0; i < q->n_early_data_methods; i++)
    if (strcmp(method, q->early_data_methods[i]) == 0) return true;
  return false;
}

static int cb_end_headers(nghttp3_conn *conn, int64_t stream_id, int fin, void *user, void *stream_user) {
  (void)conn;
  (void)stream_id;
  (void)user;
  struct h3_strm *s = stream_user;
  if (s == NULL) return 0;
  struct xchg *x = s->x;
  if (s->error) {
    xchg_respond_local(x, s->error, xchg_field_refusal(x, s->error));
    return 0;
  }
  if (!quic_conn_handshake_done(s->qc)) {
    /* 0-RTT: replayable by an attacker; only safe methods go on (RFC 8470). */
    x->early_data = true;
    if (x->i_method >= 0 && !early_data_method_ok(&s->qc->rt->conf->quic, hdr_value(&x->req, x->i_method))) {
      xchg_respond_local(x, 425, "this method is not accepted in early data");
      return 0;
    }
  }
  log_debug("quic conn %llu stream %lld: %s %s%s", (unsigned long long)s->qc->id,
            (long long)s->id, x->i_method >= 0 ? hdr_value(&x->req, x->i_method) : "-",
            x->i_path >= 0 ? hdr_value(&x->req, x->i_path) : "-", x->early_data ? " (early data)" : "");
  if (fin) x->req_end = true;
  xchg_req_head_done(x);
  return 0;
}

static int cb_recv_data(nghttp3_conn *conn, int64_t stream_id, const uint8_t *data, size_t len,
                        void *user, void *stream_user) {
  (void)conn;
  struct quic_conn *qc = user;
  struct h3_strm *s = stream_user;
  /* Connection credit now; the stream's as the upstream takes the bytes. */
  ngtcp2_conn_extend_max_offset(qc->conn, len);
  if (s == NULL || s->x == NULL || s->x->state == XS_DONE ||
      xchg_req_body(s->x, data, len) != 0)
    quic_conn_extend_stream(qc, stream_id, len); /* nobody will read it */
  return 0;
}

static int cb_deferred_consume(nghttp3_conn *conn, int64_t stream_id, size_t consumed, void *user,
                               void *stream_user) {
  (void)conn;
  (void)stream_user;
  struct quic_conn *qc = user;
  ngtcp2_conn_extend_max_offset(qc->conn, consumed);
  quic_conn_extend_stream(qc, stream_id, consumed);
  return 0;
}

static int cb_end_stream(nghttp3_conn *conn, int64_t stream_id, void *user, void *stream_user) {
  (void)conn;
  (void)stream_id;
  (void)user;
  struct h3_strm *s = stream_user;
  if (s && s->x) xchg_req_end(s->x);
  return 0;
}

static int cb_stream_close(nghttp3_conn *conn, int64_t stream_id, uint64_t app_error_code,
                           void *user, void *stream_user) {
  (void)conn;
  (void)stream_id;
  (void)app_error_code;
  (void)user;
  struct h3_strm *s = stream_user;
  if (s) strm_free(s); /* detaches the exchange: an unfinished one is cancelled upstream */
  return 0;
}

/* nghttp3 asks for STOP_SENDING: we stop reading (ngtcp2 sends it). */
static int cb_stop_sending(nghttp3_conn *conn, int64_t stream_id, uint64_t app_error_code,
                           void *user, void *stream_user) {
  (void)conn;
  (void)stream_user;
  struct quic_conn *qc = user;
  ngtcp2_conn_shutdown_stream_read(qc->conn, stream_id, app_error_code);
  return 0;
}

/* nghttp3 asks for RESET_STREAM: we stop writing (ngtcp2 sends it). */
static int cb_reset_stream(nghttp3_conn *conn, int64_t stream_id, uint64_t app_error_code,
                           void *user, void *stream_user) {
  (void)conn;
  (void)stream_user;
  struct quic_conn *qc = user;
  ngtcp2_conn_shutdown_stream_write(qc->conn, stream_id, app_error_code);
  return 0;
}

static int cb_acked_stream_data(nghttp3_conn *conn, int64_t stream_id, uint64_t datalen, void *user,
                                void *stream_user) {
  (void)conn;
  (void)stream_id;
  (void)user;
  struct h3_strm *s = stream_user;
  if (s == NULL) return 0;
  sendbuf_ack(&s->out, (size_t)datalen);
  /* All of a finished response acknowledged: its memory goes now, not when
   * the stream is finally closed (an idle connection may keep it long). */
  if (s->out.unacked == 0 && s->x && s->x->resp_end && evbuffer_get_length(s->x->resp_body) == 0)
    sendbuf_free(&s->out);
  /* Room again: more of the response may come in. */
  if (s->x && evbuffer_get_length(s->x->resp_body) > 0 && s->deferred) {
    s->deferred = false;
    nghttp3_conn_resume_stream(conn, s->id);
  }
  return 0;
}

static const nghttp3_callbacks h3_callbacks = {
    .acked_stream_data = cb_acked_stream_data,
    .stream_close = cb_stream_close,
    .recv_data = cb_recv_data,
    .deferred_consume = cb_deferred_consume,
    .begin_headers = cb_begin_headers,
    .recv_header = cb_recv_header,
    .end_headers = cb_end_headers,
    .stop_sending = cb_stop_sending,
    .end_stream = cb_end_stream,
    .reset_stream = cb_reset_stream,
};

/* ---------------------------------------------------------------------------
 * Exchange callbacks.
 */
static int submit_trailers(struct h3_strm *s) {
  struct xchg *x = s->x;
  nghttp3_nv *nva = gw_nv_scratch(x->resp_trailers.n, sizeof *nva);
  if (nva == NULL) return -1;
  size_t n = 0;
  for (uint32_t i = 0; i < x->resp_trailers.n; i++) {
    const struct hdr *f = &x->resp_trailers.v[i];
    nva[n++] = (nghttp3_nv){(uint8_t *)x->resp_trailers.arena + f->name_off,
                            (uint8_t *)x->resp_trailers.arena + f->value_off, f->name_len,
                            f->value_len, NGHTTP3_NV_FLAG_NONE};
  }
  return nghttp3_conn_submit_trailers(s->qc->h3, s->id, nva, n);
}

static nghttp3_ssize read_data(nghttp3_conn *conn, int64_t stream_id, nghttp3_vec *vec,
                               size_t veccnt, uint32_t *pflags, void *user, void *stream_user) {
  (void)conn;
  (void)stream_id;
  (void)user;
  struct h3_strm *s = stream_user;
  struct xchg *x = s->x;
  size_t moved = sendbuf_fill(&s->out, x->resp_body, out_limit(s));
  if (moved) xchg_resp_consumed(x, moved);
  size_t n = sendbuf_give(&s->out, vec, veccnt);
  if (x->resp_end && evbuffer_get_length(x->resp_body) == 0 && sendbuf_all_given(&s->out)) {
    *pflags |= NGHTTP3_DATA_FLAG_EOF;
    xchg_resp_out(x);
    if (x->resp_trailers.n > 0) {
      *pflags |= NGHTTP3_DATA_FLAG_NO_END_STREAM;
      if (submit_trailers(s) != 0) return NGHTTP3_ERR_CALLBACK_FAILURE;
    }
    return (nghttp3_ssize)n;
  }
  if (n == 0) {
    s->deferred = true;
    return NGHTTP3_ERR_WOULDBLOCK;
  }
  return (nghttp3_ssize)n;
}

/* A whole response to a request still coming (a 408 or 413 of ours, or a
 * backend's answer before the body): the rest is not wanted, and RFC 9114
 * 4.1 says to ask for STOP_SENDING with H3_NO_ERROR. Else the stream stays
 * half open on both sides until the client sends the rest, perhaps never.
 * Asked here, outside the libraries' calls: from nghttp3's read_data the
 * frame did not always go out. */
static void stop_reading_if_answered(struct h3_strm *s) {
  if (s->stopped_reading || !s->x->resp_end || s->x->req_end) return;
  s->stopped_reading = true;
  ngtcp2_conn_shutdown_stream_read(s->qc->conn, s->id, NGHTTP3_H3_NO_ERROR);
}

static void on_resp_head(struct xchg *x) {
  struct h3_strm *s = x->down_ctx;
  nghttp3_nv *nva = gw_nv_scratch(x->resp.n + 1, sizeof *nva); /* + :status */
  if (nva == NULL) {
    strm_reset(s);
    quic_conn_want_flush(s->qc);
    return;
  }
  char status[4];
  http_status_digits(x->status, status);
  size_t n = 0;
  nva[n++] = (nghttp3_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP3_NV_FLAG_NONE};
  for (uint32_t i = 0; i < x->resp.n; i++) {
    const struct hdr *f = &x->resp.v[i];
    const char *name = x->resp.arena + f->name_off;
    if ((f->flags & HDR_DROPPED) || name[0] == ':') continue;
    nva[n++] = (nghttp3_nv){(uint8_t *)name, (uint8_t *)x->resp.arena + f->value_off, f->name_len,
                            f->value_len, NGHTTP3_NV_FLAG_NONE};
  }
  bool ends = x->resp_end && evbuffer_get_length(x->resp_body) == 0 && x->resp_trailers.n == 0;
  static const nghttp3_data_reader reader = {read_data};
  if (ends) xchg_resp_out(x);
  int rc = nghttp3_conn_submit_response(s->qc->h3, s->id, nva, n, ends ? NULL : &reader);
  if (rc != 0) {
    log_debug("quic conn %llu: submit response: %s", (unsigned long long)s->qc->id,
              nghttp3_strerror(rc));
    strm_reset(s);
  }
  stop_reading_if_answered(s);
  quic_conn_want_flush(s->qc);
}

static void on_resp_body(struct xchg *x) {
  struct h3_strm *s = x->down_ctx;
  stop_reading_if_answered(s);
  if (s->deferred && s->out.unacked < out_limit(s)) {
    s->deferred = false;
    nghttp3_conn_resume_stream(s->qc->h3, s->id);
  }
  quic_conn_want_flush(s->qc);
}

static void on_req_credit(struct xchg *x, size_t n) {
  struct h3_strm *s = x->down_ctx;
  quic_conn_extend_stream(s->qc, s->id, n);
}

static void on_abort(struct xchg *x) { strm_reset(x->down_ctx); }

static const struct xchg_down_ops xchg_ops = {on_resp_head, on_resp_body, on_req_credit, on_abort};

/* ---------------------------------------------------------------------------
 * For quic_conn.c.
 */
int h3_conn_setup(struct quic_conn *qc) {
  if (qc->h3) return 0;
  const struct conf_quic *q = &qc->rt->conf->quic;
  nghttp3_settings settings;
  nghttp3_settings_default(&settings);
  settings.max_field_section_size = q->max_field_section_size;
  settings.qpack_max_dtable_capacity = q->qpack_table_capacity;
  settings.qpack_blocked_streams = q->qpack_blocked_streams;
  settings.enable_connect_protocol = 1; /* WebSockets over HTTP/3 (RFC 9220) */
  if (nghttp3_conn_server_new(&qc->h3, &h3_callbacks, &settings, quic_nghttp3_mem(), qc) != 0) return -1;
  token_bucket_init(&qc->cancels, CANCEL_BURST);
  nghttp3_conn_set_max_client_streams_bidi(qc->h3, q->max_streams_bidi);
  int64_t ctrl, qenc, qdec;
  if (quic_conn_open_uni(qc, &ctrl) != 0 || nghttp3_conn_bind_control_stream(qc->h3, ctrl) != 0 ||
      quic_conn_open_uni(qc, &qenc) != 0 || quic_conn_open_uni(qc, &qdec) != 0 ||
      nghttp3_conn_bind_qpack_streams(qc->h3, qenc, qdec) != 0)
    return -1;
  if (qc->goaway) nghttp3_conn_submit_shutdown_notice(qc->h3);
  if (qc->goaway && qc->goaway_final_ns == 0) nghttp3_conn_shutdown(qc->h3);
  return 0;
}

int h3_read_stream(struct quic_conn *qc, int64_t stream_id, const uint8_t *data, size_t len,
                   bool fin) {
  if (qc->h3 == NULL) return (int)len; /* 0-RTT before keys: nothing to parse yet */
  nghttp3_ssize n = nghttp3_conn_read_stream(qc->h3, stream_id, data, len, fin);
  if (n < 0) {
    log_debug("quic conn %llu: HTTP/3: %s", (unsigned long long)qc->id, nghttp3_strerror((int)n));
    ngtcp2_connection_close_error_set_application_error(
        &qc->ccerr, nghttp3_err_infer_quic_app_error_code((int)n), NULL, 0);
    return -1;
  }
  return (int)n;
}

static struct h3_strm *strm_find(struct quic_conn *qc, int64_t stream_id) {
  struct h3_strm *s;
  LIST_FOREACH(s, &qc->streams, link) {
    if (s->id == stream_id) return s;
  }
  return NULL;
}

/* A request the client cancelled before its response was in: it cost the
 * backend its work all the same, and its stream is free again at once. A
 * rapid-reset client (CVE-2023-44487) opens and cancels streams as fast
 * as MAX_STREAMS comes back, past max_streams_bidi, each one a request
 * upstream. Clients cancel now and then; the budget is nghttp2's for
 * HTTP/2: a burst of CANCEL_BURST, then CANCEL_RATE a second. False when
 * it is spent. */
static bool charge_cancel(struct quic_conn *qc, const struct h3_strm *s) {
  if (s == NULL || s->reset_by_us || s->x == NULL || s->x->state == XS_DONE) return true;
  if (token_bucket_take(&qc->cancels, quic_now_ns() / 1000000, CANCEL_RATE, CANCEL_BURST)) return true;
  log_warn("quic conn %llu %s: too many cancelled requests: closing with H3_EXCESSIVE_LOAD",
           (unsigned long long)qc->id, qc->peer_ip);
  return false;
}

/* A stream closes with an error code when the client reset it or sent
 * STOP_SENDING (ngtcp2 has no callback for the latter: it answers it
 * itself), or when we reset it. */
int h3_stream_close(struct quic_conn *qc, int64_t stream_id, uint64_t app_error) {
  if (qc->h3 == NULL) return 0;
  bool within = app_error == NGHTTP3_H3_NO_ERROR || charge_cancel(qc, strm_find(qc, stream_id));
  nghttp3_conn_close_stream(qc->h3, stream_id, app_error);
  return within ? 0 : -1;
}

void h3_stream_reset(struct quic_conn *qc, int64_t stream_id) {
  if (qc->h3) nghttp3_conn_shutdown_stream_read(qc->h3, stream_id);
}

void h3_acked(struct quic_conn *qc, int64_t stream_id, uint64_t n) {
  if (qc->h3) nghttp3_conn_add_ack_offset(qc->h3, stream_id, n);
}

void h3_unblock(struct quic_conn *qc, int64_t stream_id) {
  if (qc->h3) nghttp3_conn_unblock_stream(qc->h3, stream_id);
}

void h3_set_max_streams(struct quic_conn *qc, uint64_t max) {
  if (qc->h3) nghttp3_conn_set_max_client_streams_bidi(qc->h3, max);
}

ssize_t h3_writev(struct quic_conn *qc, int64_t *stream_id, int *fin, ngtcp2_vec *vec,
                  size_t veccnt) {
  /* ngtcp2_vec and nghttp3_vec are both {uint8_t *base; size_t len;}. */
  return nghttp3_conn_writev_stream(qc->h3, stream_id, fin, (nghttp3_vec *)vec, veccnt);
}

void h3_wrote(struct quic_conn *qc, int64_t stream_id, size_t n) {
  if (qc->h3 && stream_id >= 0) nghttp3_conn_add_write_offset(qc->h3, stream_id, n);
}

void h3_block(struct quic_conn *qc, int64_t stream_id) {
  if (qc->h3) nghttp3_conn_block_stream(qc->h3, stream_id);
}

void h3_shutdown_write(struct quic_conn *qc, int64_t stream_id) {
  if (qc->h3) nghttp3_conn_shutdown_stream_write(qc->h3, stream_id);
}

void h3_goaway_notice(struct quic_conn *qc) {
  if (qc->h3) nghttp3_conn_submit_shutdown_notice(qc->h3);
}

void h3_goaway(struct quic_conn *qc) {
  if (qc->h3) nghttp3_conn_shutdown(qc->h3);
}

bool h3_idle(const struct quic_conn *qc) { return qc->n_streams == 0; }

void h3_conn_free(struct quic_conn *qc) {
  struct h3_strm *s;
  while ((s = LIST_FIRST(&qc->streams)) != NULL) strm_free(s);
  if (qc->h3) nghttp3_conn_del(qc->h3);
  qc->h3 = NULL;
}
