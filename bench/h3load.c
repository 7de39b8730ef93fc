/* h3load: an h2load-like HTTP/3 load and test client, on ngtcp2 (GnuTLS)
 * and nghttp3, for sizing deployments and for h3gate's own tests (no
 * packaged load tool speaks HTTP/3 on Debian 12).
 *
 *   h3load [-n N] [-c C] [-m M] [-d FILE | --upload-size BYTES] [--method M]
 *          [--sha256] [--token-file FILE] [--timeout SECONDS] URL
 *
 * Reports req/s, bytes, latency percentiles and status codes; --sha256
 * prints the SHA-256 of response bodies (for integrity tests). --cancel
 * resets each request once the server has its HEADERS (a rapid-reset
 * client, as in CVE-2023-44487) and says how the server closed the
 * connection. --stall-headers sends each request's HEADERS frame but its
 * last byte, and no more (a slow-headers client). The server
 * certificate is not verified: this is a test tool. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <event2/event.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <nghttp3/nghttp3.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>
#include <netinet/in.h>

#include "latency.h"
#include "sock.h"
#include "ws_frame.h"

enum { MAX_UDP = 1452, CIDLEN = 18, GSO_MAX = 32, MAX_EXTRA_HEADERS = 32 };

/* The kernel refused GSO or GRO once: one datagram per system call. */
static bool no_gso;

struct options {
  char host[300], port[8], authority[300], path[2048], method[16];
  int n, c, m, timeout_s;
  uint8_t *body;
  size_t body_len;
  bool sha256, quiet;
  const char *token_file;
  const char *cacert; /* verify the server's certificate against these (PEM) */
  const char *sni;    /* the name sent in SNI (and verified), instead of the URL's host */
  const char *output; /* the body of the last response is written here */
  int hold_s;         /* keep connections open (idle) this long after their requests */
  int pause_ms;       /* between a connection's requests, this long with its socket unread */
  bool cancel;        /* reset each request stream once the server has its HEADERS */
  bool stall_headers; /* each request's HEADERS frame but its last byte */
  int ws_messages;    /* WebSocket mode (RFC 9220): echo this many messages per session */
  size_t ws_size;     /* bytes per message */
  nghttp3_nv extra[MAX_EXTRA_HEADERS]; /* -H "name: value", names lower-cased */
  size_t n_extra;
} O = {.n = 1, .c = 1, .m = 1, .timeout_s = 60, .method = "GET", .ws_size = 64};

struct conn;

struct stream {
  struct conn *c;
  int64_t id;
  uint64_t start_ns;
  int status;
  uint64_t bytes;
  gnutls_hash_hd_t hash;
  size_t body_sent;
  FILE *out;
  struct ws_session *ws; /* WebSocket mode */
};

/* A frame we sent, kept until QUIC acknowledges it (nghttp3 may need the
 * bytes again for a retransmission). */
struct ws_buf {
  struct ws_buf *next;
  size_t len, given, acked;
  uint8_t data[];
};

struct ws_session {
  struct ws_buf *head, *tail; /* unacknowledged frames, oldest first */
  bool open;                  /* the server answered 200 */
  bool close_sent, close_received, bad;
  int echoed;                 /* messages that came back intact */
  uint64_t msg_bytes;         /* of the echo being received */
  uint64_t sent_ns;
  struct ws_reader reader;
};

struct conn {
  int index;
  int fd;
  struct sockaddr_storage local, remote;
  socklen_t local_len, remote_len;
  struct event *ev_read, *timer;
  ngtcp2_conn *q;
  nghttp3_conn *h3;
  gnutls_session_t tls;
  ngtcp2_crypto_conn_ref ref;
  int to_issue, inflight;
  bool paused;   /* --pause: the socket is left unread */
  int64_t qpack_encoder_stream;
  int64_t *to_cancel; /* --cancel: streams whose HEADERS were acknowledged */
  int n_to_cancel;
  bool ready, closed;
  ngtcp2_connection_close_error ccerr;
};

static struct {
  struct event_base *base;
  gnutls_certificate_credentials_t cred;
  struct conn *conns;
  uint64_t *latencies;
  size_t n_lat;
  uint64_t started_ns;
  uint64_t bytes_in, done, failed, errored, retries, ws_echoed, cancelled;
  uint64_t peer_closes, peer_close_code; /* connections the server closed; the last one's code */
  uint64_t request_stream_sent, qpack_encoder_sent; /* first transmissions only */
  uint64_t status_class[6];
  char shas[16][65];
  size_t n_shas;
  int conns_open;
  int held;
} G;

static void rand_bytes(uint8_t *p, size_t n) { gnutls_rnd(GNUTLS_RND_NONCE, p, n); }

static void conn_close(struct conn *c);
static void conn_write(struct conn *c);
static void issue(struct conn *c);
static void hold_then_close(struct conn *c);

/* ---------------------------------------------------------------------------
 * HTTP/3 callbacks.
 */
static int h3_recv_header(nghttp3_conn *h3, int64_t sid, int32_t token, nghttp3_rcbuf *name,
                          nghttp3_rcbuf *value, uint8_t flags, void *user, void *su) {
  (void)h3; (void)sid; (void)token; (void)flags; (void)user;
  struct stream *s = su;
  nghttp3_vec n = nghttp3_rcbuf_get_buf(name), v = nghttp3_rcbuf_get_buf(value);
  if (s && n.len == 7 && memcmp(n.base, ":status", 7) == 0) {
    s->status = 0;
    for (size_t i = 0; i < v.len; i++) s->status = s->status * 10 + (v.base[i] - '0');
  }
  return 0;
}

static void ws_on_data(struct conn *c, struct stream *s, const uint8_t *data, size_t len);

static int h3_recv_data(nghttp3_conn *h3, int64_t sid, const uint8_t *data, size_t len, void *user,
                        void *su) {
  (void)h3;
  struct conn *c = user;
  struct stream *s = su;
  ngtcp2_conn_extend_max_stream_offset(c->q, sid, len);
  ngtcp2_conn_extend_max_offset(c->q, len);
  if (s && s->ws) {
    ws_on_data(c, s, data, len);
  } else if (s) {
    s->bytes += len;
    if (s->hash) gnutls_hash(s->hash, data, len);
    if (s->out) fwrite(data, 1, len, s->out);
  }
  G.bytes_in += len;
  return 0;
}

static int h3_deferred_consume(nghttp3_conn *h3, int64_t sid, size_t n, void *user, void *su) {
  (void)h3; (void)su;
  struct conn *c = user;
  ngtcp2_conn_extend_max_stream_offset(c->q, sid, n);
  ngtcp2_conn_extend_max_offset(c->q, n);
  return 0;
}

static void record_sha(struct stream *s) {
  uint8_t d[32];
  char hex[65];
  gnutls_hash_deinit(s->hash, d);
  s->hash = NULL;
  for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
  for (size_t i = 0; i < G.n_shas; i++)
    if (strcmp(G.shas[i], hex) == 0) return;
  if (G.n_shas < 16) strcpy(G.shas[G.n_shas++], hex);
}

static void ws_session_done(struct stream *s, uint64_t err);

static void resume_after_pause(evutil_socket_t fd, short what, void *arg) {
  (void)fd; (void)what;
  struct conn *c = arg;
  if (c->closed) return;
  c->paused = false;
  issue(c);
  conn_write(c); /* the request leaves before anything that came meanwhile is read */
  event_add(c->ev_read, NULL);
}

/* --pause: the next request goes out after a while in which nothing is
 * read, as a request already on its way when the server's frames (a
 * GOAWAY, say) arrive. Said on stdout, so a test can act in the pause. */
static void pause_then_issue(struct conn *c) {
  printf("h3load: pausing %d ms before the next request, not reading\n", O.pause_ms);
  fflush(stdout);
  c->paused = true; /* on_read stops at once, though it may be in its loop now */
  event_del(c->ev_read);
  struct timeval tv = {O.pause_ms / 1000, (O.pause_ms % 1000) * 1000};
  event_base_once(G.base, -1, EV_TIMEOUT, resume_after_pause, c, &tv);
}

static int h3_stream_close(nghttp3_conn *h3, int64_t sid, uint64_t err, void *user, void *su) {
  (void)h3; (void)sid;
  struct conn *c = user;
  struct stream *s = su;
  if (s == NULL) return 0;
  c->inflight--;
  if (s->ws) {
    ws_session_done(s, err);
  } else if (O.cancel && err == NGHTTP3_H3_REQUEST_CANCELLED) {
    G.cancelled++;
  } else if (s->status && err == NGHTTP3_H3_NO_ERROR) {
    G.done++;
    G.status_class[s->status / 100 < 6 ? s->status / 100 : 0]++;
    if (s->status >= 400) G.failed++;
    G.latencies[G.n_lat++] = latency_now_ns() - s->start_ns;
    if (s->hash) record_sha(s);
  } else {
    G.errored++;
    if (!O.quiet) fprintf(stderr, "stream %lld failed (status %d, H3 error 0x%llx)\n",
                          (long long)sid, s->status, (unsigned long long)err);
  }
  if (s->hash) gnutls_hash_deinit(s->hash, NULL);
  if (s->out) fclose(s->out);
  free(s);
  if (O.pause_ms > 0 && c->to_issue > 0) pause_then_issue(c);
  else issue(c);
  return 0;
}

static void ws_acked(struct ws_session *w, uint64_t n);
static int ws_end_headers(nghttp3_conn *h3, int64_t sid, int fin, void *user, void *su);

static int h3_acked(nghttp3_conn *h3, int64_t sid, uint64_t n, void *user, void *su) {
  (void)h3; (void)sid; (void)user;
  struct stream *s = su;
  if (s && s->ws) ws_acked(s->ws, n);
  return 0; /* request bodies are served from O.body, which lives until exit */
}

static const nghttp3_callbacks h3_cbs = {
    .acked_stream_data = h3_acked,
    .stream_close = h3_stream_close,
    .recv_data = h3_recv_data,
    .deferred_consume = h3_deferred_consume,
    .recv_header = h3_recv_header,
    .end_headers = ws_end_headers,
};

static nghttp3_ssize read_body(nghttp3_conn *h3, int64_t sid, nghttp3_vec *vec, size_t veccnt,
                               uint32_t *pflags, void *user, void *su) {
  (void)h3; (void)sid; (void)veccnt; (void)user;
  struct stream *s = su;
  size_t left = O.body_len - s->body_sent;
  size_t n = left > 1 << 20 ? 1 << 20 : left;
  vec[0].base = O.body + s->body_sent;
  vec[0].len = n;
  s->body_sent += n;
  if (s->body_sent == O.body_len) *pflags |= NGHTTP3_DATA_FLAG_EOF;
  return 1;
}

/* ---------------------------------------------------------------------------
 * WebSocket mode (RFC 9220): each "request" is an extended CONNECT whose
 * session echoes --websocket messages one at a time; latency is the round
 * trip of each message.
 */
static uint8_t ws_pattern(int msg, size_t i) { return (uint8_t)(msg * 31 + (int)i); }

static void ws_queue(struct stream *s, uint8_t opcode, const uint8_t *payload, size_t len) {
  struct ws_session *w = s->ws;
  struct ws_buf *b = malloc(sizeof *b + WS_MAX_HDR + len);
  uint8_t mask[4];
  rand_bytes(mask, 4);
  size_t h = ws_write_header(b->data, true, opcode, len, mask);
  memcpy(b->data + h, payload, len);
  ws_mask(b->data + h, len, mask, 0);
  b->len = h + len;
  b->given = b->acked = 0;
  b->next = NULL;
  if (w->tail) w->tail->next = b;
  else w->head = b;
  w->tail = b;
  nghttp3_conn_resume_stream(s->c->h3, s->id);
}

static void ws_send_next(struct stream *s) {
  struct ws_session *w = s->ws;
  uint8_t *p = malloc(O.ws_size ? O.ws_size : 1);
  for (size_t i = 0; i < O.ws_size; i++) p[i] = ws_pattern(w->echoed, i);
  w->sent_ns = latency_now_ns();
  w->msg_bytes = 0;
  ws_queue(s, WS_BINARY, p, O.ws_size);
  free(p);
}

static void ws_send_close(struct stream *s) {
  static const uint8_t normal[2] = {1000 >> 8, 1000 & 0xff};
  if (s->ws->close_sent) return;
  s->ws->close_sent = true;
  ws_queue(s, WS_CLOSE, normal, 2);
}

static void ws_acked(struct ws_session *w, uint64_t n) {
  while (n > 0 && w->head) {
    struct ws_buf *b = w->head;
    size_t k = b->len - b->acked < n ? b->len - b->acked : (size_t)n;
    b->acked += k;
    n -= k;
    if (b->acked < b->len) break;
    w->head = b->next;
    if (w->head == NULL) w->tail = NULL;
    free(b);
  }
}

static nghttp3_ssize ws_read_frames(nghttp3_conn *h3, int64_t sid, nghttp3_vec *vec, size_t veccnt,
                                    uint32_t *pflags, void *user, void *su) {
  (void)h3; (void)sid; (void)user;
  struct stream *s = su;
  size_t n = 0;
  for (struct ws_buf *b = s->ws->head; b && n < veccnt; b = b->next) {
    if (b->given == b->len) continue;
    vec[n].base = b->data + b->given;
    vec[n].len = b->len - b->given;
    b->given = b->len;
    n++;
  }
  if (s->ws->close_sent) {
    bool all_given = true;
    for (struct ws_buf *b = s->ws->head; b; b = b->next) all_given &= b->given == b->len;
    if (all_given) *pflags |= NGHTTP3_DATA_FLAG_EOF; /* our close frame ends our side */
  }
  if (n == 0 && !(*pflags & NGHTTP3_DATA_FLAG_EOF)) return NGHTTP3_ERR_WOULDBLOCK;
  return (nghttp3_ssize)n;
}

/* A request field from C strings (nghttp3 copies them on submit). */
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP3_NV_FLAG_NONE}

/* Appends the -H headers after the n fields of nva; returns the count. */
static size_t with_extra_headers(nghttp3_nv *nva, size_t n) {
  memcpy(nva + n, O.extra, O.n_extra * sizeof *nva);
  return n + O.n_extra;
}

static int ws_submit(struct conn *c, struct stream *s) {
  nghttp3_nv nva[7 + MAX_EXTRA_HEADERS] = {
      NV(":method", "CONNECT"), NV(":protocol", "websocket"), NV(":scheme", "https"),
      NV(":authority", O.authority), NV(":path", O.path), NV("sec-websocket-version", "13"),
      NV("user-agent", "h3load")};
  size_t n = with_extra_headers(nva, 7);
  s->ws = calloc(1, sizeof *s->ws);
  ws_reader_init(&s->ws->reader, false, 1u << 30);
  static const nghttp3_data_reader reader = {ws_read_frames};
  return nghttp3_conn_submit_request(c->h3, s->id, nva, n, &reader, s);
}

static int ws_end_headers(nghttp3_conn *h3, int64_t sid, int fin, void *user, void *su) {
  (void)h3; (void)sid; (void)fin; (void)user;
  struct stream *s = su;
  if (s == NULL || s->ws == NULL || s->ws->open) return 0;
  if (s->status != 200) {
    /* Refused: end our side too (no frames), so the stream can close. */
    s->ws->close_sent = true;
    nghttp3_conn_resume_stream(s->c->h3, s->id);
    return 0;
  }
  s->ws->open = true;
  if (O.ws_messages > 0) ws_send_next(s);
  return 0;
}

static void ws_event(struct stream *s, const struct ws_event *ev) {
  struct ws_session *w = s->ws;
  switch (ev->type) {
  case WS_EV_DATA:
    for (size_t i = 0; i < ev->len; i++)
      if (ev->data[i] != ws_pattern(w->echoed, w->msg_bytes + i)) w->bad = true;
    w->msg_bytes += ev->len;
    break;
  case WS_EV_MESSAGE_END:
    if (w->msg_bytes != O.ws_size) w->bad = true;
    if (w->bad) break;
    G.latencies[G.n_lat++] = latency_now_ns() - w->sent_ns;
    G.ws_echoed++;
    if (++w->echoed < O.ws_messages) ws_send_next(s);
    else ws_send_close(s);
    break;
  case WS_EV_CLOSE:
    w->close_received = true;
    ws_send_close(s);
    break;
  case WS_EV_ERROR:
    w->bad = true;
    break;
  default:
    break;
  }
}

static void ws_on_data(struct conn *c, struct stream *s, const uint8_t *data, size_t len) {
  (void)c;
  s->bytes += len; /* G.bytes_in is counted by the caller, as for any response body */
  uint8_t scratch[16384]; /* the reader works in place; nghttp3's buffer is not ours */
  while (len > 0) {
    size_t n = len < sizeof scratch ? len : sizeof scratch;
    memcpy(scratch, data, n);
    uint8_t *p = scratch;
    size_t left = n;
    for (;;) {
      struct ws_event ev;
      size_t used = ws_reader_next(&s->ws->reader, p, left, &ev);
      p += used;
      left -= used;
      if (ev.type == WS_EV_NONE && used == 0) break;
      ws_event(s, &ev);
    }
    data += n;
    len -= n;
  }
}

static void ws_session_done(struct stream *s, uint64_t err) {
  struct ws_session *w = s->ws;
  bool ok = w->open && !w->bad && w->echoed == O.ws_messages && w->close_received &&
            err == NGHTTP3_H3_NO_ERROR;
  if (s->status) {
    G.done++;
    G.status_class[s->status / 100 < 6 ? s->status / 100 : 0]++;
    if (!ok) G.failed++;
  } else {
    G.errored++;
  }
  if (!ok && !O.quiet)
    fprintf(stderr, "websocket on stream %lld: status %d, %d of %d echoed%s%s, H3 error 0x%llx\n",
            (long long)s->id, s->status, w->echoed, O.ws_messages, w->bad ? ", corrupted" : "",
            w->close_received ? "" : ", no close frame", (unsigned long long)err);
  while (w->head) {
    struct ws_buf *b = w->head;
    w->head = b->next;
    free(b);
  }
  free(w);
}

static int request_submit(struct conn *c, struct stream *s) {
  char len[24];
  snprintf(len, sizeof len, "%zu", O.body_len);
  nghttp3_nv nva[6 + MAX_EXTRA_HEADERS] = {
      NV(":method", O.method), NV(":scheme", "https"), NV(":authority", O.authority),
      NV(":path", O.path), NV("user-agent", "h3load"), NV("content-length", len)};
  static const nghttp3_data_reader reader = {read_body};
  size_t n = with_extra_headers(nva, O.body ? 6 : 5);
  return nghttp3_conn_submit_request(c->h3, s->id, nva, n, O.body ? &reader : NULL, s);
}

/* Opens streams up to -m in flight while requests remain. */
static void issue(struct conn *c) {
  while (c->ready && c->to_issue > 0 && c->inflight < O.m) {
    int64_t sid;
    if (ngtcp2_conn_open_bidi_stream(c->q, &sid, NULL) != 0) break; /* wait for MAX_STREAMS */
    struct stream *s = calloc(1, sizeof *s);
    s->c = c;
    s->id = sid;
    s->start_ns = latency_now_ns();
    if (O.sha256) gnutls_hash_init(&s->hash, GNUTLS_DIG_SHA256);
    if (O.output) s->out = fopen(O.output, "wb");
    int rc = O.ws_messages ? ws_submit(c, s) : request_submit(c, s);
    if (rc != 0) {
      free(s);
      G.errored++;
      c->to_issue--;
      continue;
    }
    c->to_issue--;
    c->inflight++;
  }
  if (c->ready && c->to_issue == 0 && c->inflight == 0 && !c->closed) {
    if (O.hold_s > 0) hold_then_close(c);
    else conn_close(c);
  }
}

static int setup_h3(struct conn *c) {
  nghttp3_settings settings;
  nghttp3_settings_default(&settings);
  settings.qpack_max_dtable_capacity = 4096;
  settings.qpack_blocked_streams = 100;
  if (nghttp3_conn_client_new(&c->h3, &h3_cbs, &settings, NULL, c) != 0) return -1;
  int64_t ctrl, qenc, qdec;
  if (ngtcp2_conn_open_uni_stream(c->q, &ctrl, NULL) || nghttp3_conn_bind_control_stream(c->h3, ctrl) ||
      ngtcp2_conn_open_uni_stream(c->q, &qenc, NULL) || ngtcp2_conn_open_uni_stream(c->q, &qdec, NULL) ||
      nghttp3_conn_bind_qpack_streams(c->h3, qenc, qdec))
    return -1;
  c->qpack_encoder_stream = qenc;
  return 0;
}

/* ---------------------------------------------------------------------------
 * QUIC callbacks.
 */
static void cb_rand(uint8_t *dest, size_t len, const ngtcp2_rand_ctx *ctx) {
  (void)ctx;
  rand_bytes(dest, len);
}

static int cb_new_cid(ngtcp2_conn *q, ngtcp2_cid *cid, uint8_t *token, size_t len, void *user) {
  (void)q; (void)user;
  rand_bytes(cid->data, len);
  cid->datalen = len;
  rand_bytes(token, NGTCP2_STATELESS_RESET_TOKENLEN);
  return 0;
}

static int cb_recv_stream_data(ngtcp2_conn *q, uint32_t flags, int64_t sid, uint64_t off,
                               const uint8_t *data, size_t len, void *user, void *su) {
  (void)off; (void)su;
  struct conn *c = user;
  nghttp3_ssize n = nghttp3_conn_read_stream(c->h3, sid, data, len, flags & NGTCP2_STREAM_DATA_FLAG_FIN);
  if (n < 0) {
    ngtcp2_connection_close_error_set_application_error(
        &c->ccerr, nghttp3_err_infer_quic_app_error_code((int)n), NULL, 0);
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  ngtcp2_conn_extend_max_stream_offset(q, sid, (uint64_t)n);
  ngtcp2_conn_extend_max_offset(q, (uint64_t)n);
  return 0;
}

static int cb_acked(ngtcp2_conn *q, int64_t sid, uint64_t off, uint64_t len, void *user, void *su) {
  (void)q; (void)su;
  struct conn *c = user;
  /* The server has the request's HEADERS (its first bytes, acknowledged
   * once): --cancel resets it at the next write, outside this call. */
  if (O.cancel && (sid & 3) == 0 && off == 0 && c->n_to_cancel < O.m) c->to_cancel[c->n_to_cancel++] = sid;
  return nghttp3_conn_add_ack_offset(c->h3, sid, len) == 0 ? 0 : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int cb_stream_close(ngtcp2_conn *q, uint32_t flags, int64_t sid, uint64_t err, void *user,
                           void *su) {
  (void)q; (void)su;
  struct conn *c = user;
  if (!(flags & NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET)) err = NGHTTP3_H3_NO_ERROR;
  if (c->h3) nghttp3_conn_close_stream(c->h3, sid, err);
  return 0;
}

static int cb_reset(ngtcp2_conn *q, int64_t sid, uint64_t fs, uint64_t err, void *user, void *su) {
  (void)q; (void)fs; (void)err; (void)su;
  struct conn *c = user;
  if (c->h3) nghttp3_conn_shutdown_stream_read(c->h3, sid);
  return 0;
}

static int cb_extend_stream(ngtcp2_conn *q, int64_t sid, uint64_t max, void *user, void *su) {
  (void)q; (void)max; (void)su;
  struct conn *c = user;
  if (O.stall_headers && (sid & 3) == 0) return 0; /* stays stalled */
  if (c->h3) nghttp3_conn_unblock_stream(c->h3, sid);
  return 0;
}

static int cb_extend_streams(ngtcp2_conn *q, uint64_t max, void *user) {
  (void)q; (void)max;
  issue(user);
  return 0;
}

static int cb_handshake_completed(ngtcp2_conn *q, void *user) {
  (void)q;
  struct conn *c = user;
  if (setup_h3(c) != 0) return NGTCP2_ERR_CALLBACK_FAILURE;
  c->ready = true;
  issue(c);
  return 0;
}

static int cb_new_token(ngtcp2_conn *q, const ngtcp2_vec *token, void *user) {
  (void)q; (void)user;
  if (O.token_file == NULL) return 0;
  FILE *f = fopen(O.token_file, "wb");
  if (f) {
    fwrite(token->base, 1, token->len, f);
    fclose(f);
  }
  return 0;
}

static int cb_recv_retry(ngtcp2_conn *q, const ngtcp2_pkt_hd *hd, void *user) {
  G.retries++;
  return ngtcp2_crypto_recv_retry_cb(q, hd, user);
}

static const ngtcp2_callbacks q_cbs = {
    .client_initial = ngtcp2_crypto_client_initial_cb,
    .recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb,
    .handshake_completed = cb_handshake_completed,
    .encrypt = ngtcp2_crypto_encrypt_cb,
    .decrypt = ngtcp2_crypto_decrypt_cb,
    .hp_mask = ngtcp2_crypto_hp_mask_cb,
    .recv_stream_data = cb_recv_stream_data,
    .acked_stream_data_offset = cb_acked,
    .stream_close = cb_stream_close,
    .recv_retry = cb_recv_retry,
    .extend_max_local_streams_bidi = cb_extend_streams,
    .rand = cb_rand,
    .get_new_connection_id = cb_new_cid,
    .update_key = ngtcp2_crypto_update_key_cb,
    .stream_reset = cb_reset,
    .extend_max_stream_data = cb_extend_stream,
    .recv_new_token = cb_new_token,
    .delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb,
    .delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb,
    .get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb,
    .version_negotiation = ngtcp2_crypto_version_negotiation_cb,
};

/* ---------------------------------------------------------------------------
 * I/O.
 */
static void update_timer(struct conn *c) {
  ngtcp2_tstamp exp = ngtcp2_conn_get_expiry(c->q), now = latency_now_ns();
  uint64_t ns = exp > now ? exp - now : 0;
  struct timeval tv = {(time_t)(ns / 1000000000ull), (suseconds_t)(ns % 1000000000ull / 1000)};
  evtimer_add(c->timer, &tv);
}

/* Sends len bytes of equal-sized datagrams (the last may be shorter) in
 * one sendmsg with UDP_SEGMENT, as the gateway does, so the client is not
 * what limits a bulk transfer. */
static void send_batch(struct conn *c, const uint8_t *buf, size_t len, size_t seg) {
  if (len == 0) return;
  if (!no_gso && len > seg) {
    struct iovec iov = {(void *)buf, len};
    union h3g_udp_segment_ctrl ctrl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    h3g_udp_set_segment(&mh, &ctrl, (uint16_t)seg);
    if (sendmsg(c->fd, &mh, 0) >= 0 || errno == EAGAIN || errno == ECONNREFUSED) return;
    if (errno != EIO && errno != EINVAL) {
      fprintf(stderr, "sendmsg: %s\n", strerror(errno));
      return;
    }
    no_gso = true;
  }
  for (size_t off = 0; off < len; off += seg) {
    size_t n = len - off < seg ? len - off : seg;
    if (send(c->fd, buf + off, n, 0) < 0 && errno != EAGAIN && errno != ECONNREFUSED) {
      fprintf(stderr, "send: %s\n", strerror(errno));
      return;
    }
  }
}

/* What the header compression cost: the bytes of our request streams
 * (HEADERS, and DATA when uploading) and of the QPACK encoder stream, where
 * dynamic table insertions go, counted as nghttp3 hands them over (ngtcp2
 * retransmits by itself, so each byte once). nghttp3 learns how far the
 * stream got. */
static void stream_data_sent(struct conn *c, int64_t sid, ngtcp2_ssize n) {
  if (sid < 0 || n < 0) return;
  if ((sid & 3) == 0) G.request_stream_sent += (uint64_t)n;
  else if (sid == c->qpack_encoder_stream) G.qpack_encoder_sent += (uint64_t)n;
  nghttp3_conn_add_write_offset(c->h3, sid, (uint64_t)n);
}

static void conn_write(struct conn *c) {
  if (c->closed) return;
  for (int i = 0; i < c->n_to_cancel; i++)
    ngtcp2_conn_shutdown_stream(c->q, c->to_cancel[i], NGHTTP3_H3_REQUEST_CANCELLED);
  c->n_to_cancel = 0;
  static uint8_t batch[GSO_MAX * MAX_UDP];
  size_t blen = 0, seg = 0;
  ngtcp2_path_storage ps;
  ngtcp2_path_storage_zero(&ps);
  ngtcp2_pkt_info pi;
  uint64_t ts = latency_now_ns();
  /* Only finished packets count: leaving while ngtcp2 still builds one
   * (after NGTCP2_ERR_WRITE_MORE) would trip its next read. */
  for (int pkts = 0; pkts < 256;) {
    int64_t sid = -1;
    int fin = 0;
    nghttp3_vec vec[16];
    nghttp3_ssize vcnt = 0;
    if (c->h3 && ngtcp2_conn_get_max_data_left(c->q)) {
      vcnt = nghttp3_conn_writev_stream(c->h3, &sid, &fin, vec, 16);
      if (vcnt < 0) {
        conn_close(c);
        return;
      }
    }
    bool stall = O.stall_headers && sid >= 0 && (sid & 3) == 0 && vcnt > 0;
    if (stall) { /* a request's HEADERS frame (its only frame): all but its last byte */
      vcnt = 1;
      vec[0].len -= 1;
      fin = 0;
    }
    ngtcp2_ssize ndatalen;
    uint32_t flags = NGTCP2_WRITE_STREAM_FLAG_MORE | (fin ? NGTCP2_WRITE_STREAM_FLAG_FIN : 0);
    uint8_t *buf = batch + blen;
    ngtcp2_ssize n = ngtcp2_conn_writev_stream(c->q, &ps.path, &pi, buf, MAX_UDP, &ndatalen, flags,
                                               sid, (const ngtcp2_vec *)vec, (size_t)vcnt, ts);
    if (n < 0) {
      if (n == NGTCP2_ERR_STREAM_DATA_BLOCKED) {
        nghttp3_conn_block_stream(c->h3, sid);
        continue;
      }
      if (n == NGTCP2_ERR_STREAM_SHUT_WR) {
        nghttp3_conn_shutdown_stream_write(c->h3, sid);
        continue;
      }
      if (n == NGTCP2_ERR_WRITE_MORE) {
        stream_data_sent(c, sid, ndatalen);
        if (stall) nghttp3_conn_block_stream(c->h3, sid); /* the rest never goes */
        continue;
      }
      fprintf(stderr, "connection %d: %s\n", c->index, ngtcp2_strerror((int)n));
      conn_close(c);
      return;
    }
    if (c->h3) stream_data_sent(c, sid, ndatalen);
    if (stall && ndatalen >= 0) nghttp3_conn_block_stream(c->h3, sid);
    if (n == 0) break;
    pkts++;
    size_t pkt = (size_t)n;
    if (blen == 0) {
      seg = pkt;
    } else if (pkt > seg) { /* a bigger datagram can't join: send what came before */
      send_batch(c, batch, blen, seg);
      memmove(batch, buf, pkt);
      blen = 0;
      seg = pkt;
    }
    blen += pkt;
    /* A shorter datagram ends a batch, as does a full one. */
    if (pkt < seg || blen + MAX_UDP > sizeof batch) {
      send_batch(c, batch, blen, seg);
      blen = 0;
    }
  }
  send_batch(c, batch, blen, seg);
  ngtcp2_conn_update_pkt_tx_time(c->q, ts);
  update_timer(c);
}

/* The server closed the connection: its error code, for the summary. */
static void note_peer_close(struct conn *c) {
  ngtcp2_connection_close_error e;
  ngtcp2_conn_get_connection_close_error(c->q, &e);
  G.peer_closes++;
  G.peer_close_code = e.error_code;
}

static void on_read(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  struct conn *c = arg;
  static uint8_t buf[65536];
  for (int i = 0; i < 64 && !c->closed && !c->paused; i++) {
    struct iovec iov = {buf, sizeof buf};
    char ctrl[CMSG_SPACE(sizeof(int))];
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl,
                        .msg_controllen = sizeof ctrl};
    ssize_t n = recvmsg(fd, &mh, 0);
    if (n < 0) break;
    size_t seg = (size_t)n; /* GRO: several datagrams of seg bytes (the last may be shorter) */
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
      if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
        int gso;
        memcpy(&gso, CMSG_DATA(cm), sizeof gso);
        if (gso > 0) seg = (size_t)gso;
      }
    }
    ngtcp2_path path = {{(ngtcp2_sockaddr *)&c->local, c->local_len},
                        {(ngtcp2_sockaddr *)&c->remote, c->remote_len}, NULL};
    for (size_t off = 0; off < (size_t)n && !c->closed; off += seg) {
      size_t len = (size_t)n - off < seg ? (size_t)n - off : seg;
      ngtcp2_pkt_info pi = {0};
      int rv = ngtcp2_conn_read_pkt(c->q, &path, &pi, buf + off, len, latency_now_ns());
      if (rv != 0) {
        if (!O.quiet && rv != NGTCP2_ERR_DRAINING)
          fprintf(stderr, "connection %d: %s\n", c->index, ngtcp2_strerror(rv));
        if (rv == NGTCP2_ERR_DRAINING) note_peer_close(c);
        conn_close(c);
        return;
      }
    }
  }
  conn_write(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd; (void)what;
  struct conn *c = arg;
  if (c->closed) return;
  if (ngtcp2_conn_handle_expiry(c->q, latency_now_ns()) != 0) {
    conn_close(c);
    return;
  }
  conn_write(c);
}

static void conn_close(struct conn *c) {
  if (c->closed) return;
  c->closed = true;
  if (!ngtcp2_conn_is_in_draining_period(c->q)) {
    uint8_t buf[MAX_UDP];
    ngtcp2_path_storage ps;
    ngtcp2_path_storage_zero(&ps);
    ngtcp2_pkt_info pi;
    if (c->ccerr.error_code == 0)
      ngtcp2_connection_close_error_set_application_error(&c->ccerr, NGHTTP3_H3_NO_ERROR, NULL, 0);
    ngtcp2_ssize n = ngtcp2_conn_write_connection_close(c->q, &ps.path, &pi, buf, sizeof buf,
                                                        &c->ccerr, latency_now_ns());
    if (n > 0) (void)!send(c->fd, buf, (size_t)n, 0);
  }
  G.errored += (uint64_t)(c->inflight + c->to_issue);
  c->inflight = c->to_issue = 0;
  event_del(c->ev_read);
  event_del(c->timer);
  if (--G.conns_open == 0) event_base_loopbreak(G.base);
}

static void on_hold_over(evutil_socket_t fd, short what, void *arg) {
  (void)fd; (void)what;
  conn_close(arg);
}

/* --hold: an idle connection stays (answering PINGs and keep-alives through
 * its timer) until the hold is over, for measuring idle connection cost. */
static void hold_then_close(struct conn *c) {
  static bool announced;
  if (!announced && ++G.held == G.conns_open) {
    announced = true;
    printf("holding %d idle connections for %ds\n", G.conns_open, O.hold_s);
    fflush(stdout);
  }
  struct timeval tv = {O.hold_s, 0};
  event_base_once(G.base, -1, EV_TIMEOUT, on_hold_over, c, &tv);
}

static ngtcp2_conn *get_conn(ngtcp2_crypto_conn_ref *ref) { return ((struct conn *)ref->user_data)->q; }

static bool is_address(const char *host) {
  unsigned char a[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

static int conn_open(struct conn *c, const struct addrinfo *ai) {
  c->fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0 || connect(c->fd, ai->ai_addr, ai->ai_addrlen) != 0) return -1;
  int one = 1, buf_size = 4 << 20;
  setsockopt(c->fd, SOL_UDP, UDP_GRO, &one, sizeof one); /* best effort: plain datagrams otherwise */
  setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &buf_size, sizeof buf_size);
  setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &buf_size, sizeof buf_size);
  memcpy(&c->remote, ai->ai_addr, ai->ai_addrlen);
  c->remote_len = ai->ai_addrlen;
  c->local_len = sizeof c->local;
  getsockname(c->fd, (struct sockaddr *)&c->local, &c->local_len);
  ngtcp2_cid dcid, scid;
  dcid.datalen = scid.datalen = CIDLEN;
  rand_bytes(dcid.data, CIDLEN);
  rand_bytes(scid.data, CIDLEN);
  ngtcp2_settings settings;
  ngtcp2_settings_default(&settings);
  settings.initial_ts = latency_now_ns();
  settings.max_window = 64u << 20;
  settings.max_stream_window = 16u << 20;
  static uint8_t token[512];
  if (O.token_file) {
    FILE *f = fopen(O.token_file, "rb");
    if (f) {
      settings.token.len = fread(token, 1, sizeof token, f);
      settings.token.base = token;
      fclose(f);
    }
  }
  ngtcp2_transport_params params;
  ngtcp2_transport_params_default(&params);
  params.initial_max_stream_data_bidi_local = 4u << 20;
  params.initial_max_stream_data_uni = 1u << 20;
  params.initial_max_data = 32u << 20;
  params.initial_max_streams_uni = 3;
  params.max_idle_timeout = 30 * NGTCP2_SECONDS;
  ngtcp2_path path = {{(ngtcp2_sockaddr *)&c->local, c->local_len},
                      {(ngtcp2_sockaddr *)&c->remote, c->remote_len}, NULL};
  if (ngtcp2_conn_client_new(&c->q, &dcid, &scid, &path, NGTCP2_PROTO_VER_V1, &q_cbs, &settings,
                             &params, NULL, c) != 0)
    return -1;
  if (gnutls_init(&c->tls, GNUTLS_CLIENT | GNUTLS_NO_END_OF_EARLY_DATA) < 0) return -1;
  gnutls_priority_set_direct(c->tls, "NORMAL:-VERS-ALL:+VERS-TLS1.3:%DISABLE_TLS13_COMPAT_MODE", NULL);
  gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, G.cred);
  const char *name = O.sni ? O.sni : O.host;
  /* RFC 6066 3: an address is no HostName (GnuTLS servers refuse "::1");
   * --cacert still checks the certificate against it. */
  if (O.sni || !is_address(O.host)) gnutls_server_name_set(c->tls, GNUTLS_NAME_DNS, name, strlen(name));
  if (O.cacert) gnutls_session_set_verify_cert(c->tls, name, 0); /* the handshake fails otherwise */
  static const gnutls_datum_t h3 = {(unsigned char *)"h3", 2};
  gnutls_alpn_set_protocols(c->tls, &h3, 1, GNUTLS_ALPN_MANDATORY);
  if (ngtcp2_crypto_gnutls_configure_client_session(c->tls) != 0) return -1;
  c->ref.get_conn = get_conn;
  c->ref.user_data = c;
  gnutls_session_set_ptr(c->tls, &c->ref);
  ngtcp2_conn_set_tls_native_handle(c->q, c->tls);
  c->ev_read = event_new(G.base, c->fd, EV_READ | EV_PERSIST, on_read, c);
  c->timer = evtimer_new(G.base, on_timer, c);
  event_add(c->ev_read, NULL);
  conn_write(c);
  return 0;
}

/* ---------------------------------------------------------------------------
 * main.
 */
static double pct(double p) { return latency_ms(G.latencies, G.n_lat, p); }

static int parse_url(const char *url) {
  const char *p = strncmp(url, "https://", 8) == 0 ? url + 8 : NULL;
  if (p == NULL) return -1;
  const char *slash = strchr(p, '/');
  size_t alen = slash ? (size_t)(slash - p) : strlen(p);
  if (alen >= sizeof O.authority) return -1;
  memcpy(O.authority, p, alen);
  O.authority[alen] = '\0';
  snprintf(O.path, sizeof O.path, "%s", slash ? slash : "/");
  const char *colon = strrchr(O.authority, ':');
  const char *bracket = strchr(O.authority, ']');
  if (colon && (!bracket || colon > bracket)) {
    snprintf(O.port, sizeof O.port, "%s", colon + 1);
    size_t hlen = (size_t)(colon - O.authority);
    if (O.authority[0] == '[') snprintf(O.host, sizeof O.host, "%.*s", (int)hlen - 2, O.authority + 1);
    else snprintf(O.host, sizeof O.host, "%.*s", (int)hlen, O.authority);
  } else {
    snprintf(O.port, sizeof O.port, "443");
    snprintf(O.host, sizeof O.host, "%s", O.authority);
  }
  return 0;
}

static int load_body(const char *file) {
  FILE *f = fopen(file, "rb");
  if (f == NULL) return -1;
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  O.body = malloc(size > 0 ? (size_t)size : 1);
  O.body_len = fread(O.body, 1, (size_t)size, f);
  fclose(f);
  return 0;
}

/* -H "Name: value": kept for every request, the name lower-cased as
 * HTTP/3 requires. */
static int add_extra_header(const char *arg) {
  const char *colon = strchr(arg, ':');
  if (colon == NULL || colon == arg || O.n_extra == MAX_EXTRA_HEADERS) return -1;
  char *name = strndup(arg, (size_t)(colon - arg));
  for (char *p = name; *p; p++) *p = (char)tolower((unsigned char)*p);
  const char *value = colon + 1;
  while (*value == ' ') value++;
  O.extra[O.n_extra++] = (nghttp3_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                                      NGHTTP3_NV_FLAG_NONE};
  return 0;
}

static void usage(void) {
  fputs("usage: h3load [-n N] [-c C] [-m M] [-d FILE | --upload-size BYTES] [--method M]\n"
        "              [-H 'Name: value']... [--sha256] [-o FILE] [--token-file FILE]\n"
        "              [--timeout SECONDS] [--hold SECONDS] [--pause MS] [-q] [--cacert PEM] [--sni NAME]\n"
        "              [--websocket MESSAGES [--ws-size BYTES]]   (RFC 9220 echo sessions)\n"
        "              [--cancel]   (reset each request once the server has its HEADERS)\n"
        "              [--stall-headers]   (send each HEADERS frame but its last byte)\n"
        "              https://HOST:PORT/PATH\n",
        stderr);
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"requests", required_argument, NULL, 'n'}, {"clients", required_argument, NULL, 'c'},
      {"max-concurrent-streams", required_argument, NULL, 'm'}, {"data", required_argument, NULL, 'd'},
      {"upload-size", required_argument, NULL, 'U'}, {"method", required_argument, NULL, 'M'},
      {"sha256", no_argument, NULL, 'S'}, {"token-file", required_argument, NULL, 'T'},
      {"timeout", required_argument, NULL, 't'}, {"quiet", no_argument, NULL, 'q'},
      {"output", required_argument, NULL, 'o'}, {"hold", required_argument, NULL, 'L'},
      {"header", required_argument, NULL, 'H'},
      {"websocket", required_argument, NULL, 'W'}, {"ws-size", required_argument, NULL, 'Z'},
      {"cacert", required_argument, NULL, 'A'}, {"sni", required_argument, NULL, 'N'},
      {"pause", required_argument, NULL, 'P'}, {"cancel", no_argument, NULL, 'X'},
      {"stall-headers", no_argument, NULL, 'Y'},
      {NULL, 0, NULL, 0}};
  int o;
  while ((o = getopt_long(argc, argv, "n:c:m:d:qt:o:H:", opts, NULL)) != -1) {
    switch (o) {
    case 'n': O.n = atoi(optarg); break;
    case 'c': O.c = atoi(optarg); break;
    case 'm': O.m = atoi(optarg); break;
    case 'd':
      if (load_body(optarg) != 0) { perror(optarg); return 2; }
      if (strcmp(O.method, "GET") == 0) strcpy(O.method, "POST");
      break;
    case 'U':
      O.body_len = strtoull(optarg, NULL, 10);
      O.body = malloc(O.body_len ? O.body_len : 1);
      for (size_t i = 0; i < O.body_len; i++) O.body[i] = (uint8_t)(i * 7 + (i >> 16));
      if (strcmp(O.method, "GET") == 0) strcpy(O.method, "POST");
      break;
    case 'M': snprintf(O.method, sizeof O.method, "%s", optarg); break;
    case 'S': O.sha256 = true; break;
    case 'T': O.token_file = optarg; break;
    case 't': O.timeout_s = atoi(optarg); break;
    case 'q': O.quiet = true; break;
    case 'o': O.output = optarg; break;
    case 'L': O.hold_s = atoi(optarg); break;
    case 'H':
      if (add_extra_header(optarg) != 0) {
        fprintf(stderr, "h3load: -H wants \"Name: value\" (at most %d): %s\n", MAX_EXTRA_HEADERS, optarg);
        return 2;
      }
      break;
    case 'W': O.ws_messages = atoi(optarg); break;
    case 'Z': O.ws_size = strtoull(optarg, NULL, 10); break;
    case 'A': O.cacert = optarg; break;
    case 'N': O.sni = optarg; break;
    case 'P': O.pause_ms = atoi(optarg); break;
    case 'X': O.cancel = true; break;
    case 'Y': O.stall_headers = true; break;
    default: usage(); return 2;
    }
  }
  if (optind != argc - 1 || parse_url(argv[optind]) != 0 || O.n < 1 || O.c < 1 || O.m < 1) {
    usage();
    return 2;
  }
  if (O.c > O.n) O.c = O.n;
  /* Thousands of connections need as many sockets. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)O.c + 64) {
    rl.rlim_cur = rl.rlim_max < (rlim_t)O.c + 64 ? rl.rlim_max : (rlim_t)O.c + 64;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  G.base = event_base_new();
  gnutls_certificate_allocate_credentials(&G.cred);
  if (O.cacert && gnutls_certificate_set_x509_trust_file(G.cred, O.cacert, GNUTLS_X509_FMT_PEM) <= 0) {
    fprintf(stderr, "h3load: no certificate to trust in %s\n", O.cacert);
    return 2;
  }
  G.latencies = calloc((size_t)O.n * (size_t)(O.ws_messages > 0 ? O.ws_messages : 1),
                       sizeof *G.latencies);
  G.conns = calloc((size_t)O.c, sizeof *G.conns);
  struct addrinfo hints = {.ai_socktype = SOCK_DGRAM}, *ai;
  if (getaddrinfo(O.host, O.port, &hints, &ai) != 0) {
    fprintf(stderr, "cannot resolve %s\n", O.host);
    return 2;
  }
  G.started_ns = latency_now_ns();
  for (int i = 0; i < O.c; i++) {
    struct conn *c = &G.conns[i];
    c->index = i;
    c->to_issue = O.n / O.c + (i < O.n % O.c);
    if (O.cancel && (c->to_cancel = calloc((size_t)O.m, sizeof *c->to_cancel)) == NULL) { /* -m open at most */
      fprintf(stderr, "h3load: out of memory\n");
      return 2;
    }
    ngtcp2_connection_close_error_default(&c->ccerr);
    if (conn_open(c, ai) != 0) {
      fprintf(stderr, "connection %d: set-up failed\n", i);
      G.errored += (uint64_t)c->to_issue;
      continue;
    }
    G.conns_open++;
  }
  freeaddrinfo(ai);
  struct timeval limit = {O.timeout_s + O.hold_s, 0};
  if (G.conns_open) {
    event_base_loopexit(G.base, &limit);
    event_base_dispatch(G.base);
  }
  double secs = (double)(latency_now_ns() - G.started_ns) / 1e9;
  /* Out of time: what is still open is closed properly (CONNECTION_CLOSE),
   * as a client that gives up does, and its requests count as errored. */
  for (int i = 0; i < O.c; i++)
    if (!G.conns[i].closed && G.conns[i].q) conn_close(&G.conns[i]);
  latency_sort(G.latencies, G.n_lat);
  uint64_t ok = G.done - G.failed;
  printf("finished in %.2fs, %.2f req/s, %.2fMB/s\n", secs, (double)G.done / secs,
         (double)G.bytes_in / secs / 1048576.0);
  printf("requests: %d total, %llu done, %llu succeeded, %llu failed, %llu errored\n", O.n,
         (unsigned long long)G.done, (unsigned long long)ok, (unsigned long long)G.failed,
         (unsigned long long)G.errored);
  printf("status codes: %llu 2xx, %llu 3xx, %llu 4xx, %llu 5xx\n", (unsigned long long)G.status_class[2],
         (unsigned long long)G.status_class[3], (unsigned long long)G.status_class[4],
         (unsigned long long)G.status_class[5]);
  printf("traffic: %llu bytes of response bodies, %zu bytes uploaded per request\n",
         (unsigned long long)G.bytes_in, O.body_len);
  printf("request streams: %llu bytes sent (HEADERS and DATA frames), %llu on the QPACK encoder stream\n",
         (unsigned long long)G.request_stream_sent, (unsigned long long)G.qpack_encoder_sent);
  printf("latency ms: min %.2f p50 %.2f p90 %.2f p99 %.2f max %.2f\n", pct(0), pct(0.5), pct(0.9),
         pct(0.99), pct(1));
  if (O.ws_messages > 0)
    printf("websocket: %llu messages of %zu bytes echoed, %.2f msg/s (latency above: per message)\n",
           (unsigned long long)G.ws_echoed, O.ws_size, (double)G.ws_echoed / secs);
  for (size_t i = 0; i < G.n_shas; i++) printf("body sha256: %s\n", G.shas[i]);
  printf("retries: %llu\n", (unsigned long long)G.retries);
  if (O.cancel) printf("cancelled: %llu\n", (unsigned long long)G.cancelled);
  if (G.peer_closes)
    printf("closed by the server: %llu connections, the last with error 0x%llx\n",
           (unsigned long long)G.peer_closes, (unsigned long long)G.peer_close_code);
  if (O.cancel) return G.cancelled == (uint64_t)O.n ? 0 : 1;
  return ok == (uint64_t)O.n ? 0 : 1;
}
