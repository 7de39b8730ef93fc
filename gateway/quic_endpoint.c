/* The QUIC endpoint: one UDP socket on a TLS listener's port, the map from
 * connection IDs to connections, and what is answered before a connection
 * exists (Retry, version negotiation, stateless reset).
 *
 * I/O: reads take GRO batches (split by their segment size); writes send
 * GSO batches (UDP_SEGMENT), falling back to one datagram per sendmsg when
 * the kernel answers EIO or EINVAL. Datagrams the socket refuses wait in a
 * bounded queue until it is writable again.
 *
 * Table of contents:
 *   time, rate limits, connection IDs and the CID map
 *   sending
 *   receiving and dispatch (Retry, tokens, VN, stateless reset)
 *   listener glue
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <event2/event.h>

#include "addr.h"
#include "fastrand.h"
#include "listener.h"
#include "log.h"
#include "quic.h"
#include "siphash.h"
#include "sock.h"

enum {
  RECV_BUF = 65536,
  RECV_BATCH = 64,       /* recvmsg calls per readiness event: fairness */
  PENDING_MAX = 1024,    /* datagram batches queued while the socket is full */
  RETRY_TOKEN_TIMEOUT_S = 10,
  REGULAR_TOKEN_TIMEOUT_S = 24 * 3600,
};

struct pending_pkt {
  ngtcp2_sockaddr_union remote;
  ngtcp2_socklen remote_len;
  size_t len, segment;
  uint8_t *data;
};

static struct {
  LIST_HEAD(, quic_endpoint_link) unused;
  struct quic_endpoint *eps[64];
  size_t n_eps;
  uint8_t generated_secret[32];
  bool secret_generated;
} Q;

uint64_t quic_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

bool quic_rate_allow(struct rate_limit *r, uint32_t per_second) {
  uint64_t now = gw_now_us();
  if (r->last_us == 0) r->tokens = per_second;
  else r->tokens += (double)(now - r->last_us) * per_second / 1e6;
  if (r->tokens > per_second) r->tokens = per_second;
  r->last_us = now;
  if (r->tokens < 1) return false;
  r->tokens -= 1;
  return true;
}

/* Our connection IDs: the first byte is the worker index, so a later
 * multi-process gateway can steer packets by connection ID. */
void quic_generate_cid(struct quic_endpoint *ep, uint8_t *cid, size_t len) {
  for (size_t i = 0; i < len; i += 8) {
    uint64_t r = fastrand64();
    memcpy(cid + i, &r, len - i < 8 ? len - i : 8);
  }
  cid[0] = ep->worker_index;
}

/* ---------------------------------------------------------------------------
 * CID map.
 */
enum { SLOT_EMPTY = 0, SLOT_DELETED = 255 };

static size_t slot_of(const struct cid_map *m, const uint8_t *cid, size_t len) {
  return siphash24(m->key, cid, len) & (m->cap - 1);
}

static int cid_map_grow(struct cid_map *m) {
  size_t cap = m->cap ? m->cap * 2 : 256;
  struct cid_entry *slots = calloc(cap, sizeof *slots);
  if (slots == NULL) return -1;
  struct cid_map n = {.slots = slots, .cap = cap, .key = {m->key[0], m->key[1]}};
  for (size_t i = 0; i < m->cap; i++) {
    struct cid_entry *e = &m->slots[i];
    if (e->len == SLOT_EMPTY || e->len == SLOT_DELETED) continue;
    size_t j = slot_of(&n, e->cid, e->len);
    while (n.slots[j].len != SLOT_EMPTY) j = (j + 1) & (cap - 1);
    n.slots[j] = *e;
    n.used++;
  }
  free(m->slots);
  *m = n;
  return 0;
}

int cid_map_put(struct cid_map *m, const uint8_t *cid, size_t len, struct quic_conn *conn) {
  m->last_len = 0;
  if ((m->used + m->tombstones + 1) * 4 >= m->cap * 3 && cid_map_grow(m) != 0) return -1;
  size_t i = slot_of(m, cid, len);
  while (m->slots[i].len != SLOT_EMPTY && m->slots[i].len != SLOT_DELETED)
    i = (i + 1) & (m->cap - 1);
  if (m->slots[i].len == SLOT_DELETED) m->tombstones--;
  m->slots[i].len = (uint8_t)len;
  memcpy(m->slots[i].cid, cid, len);
  m->slots[i].conn = conn;
  m->used++;
  return 0;
}

static struct cid_entry *cid_map_find(const struct cid_map *m, const uint8_t *cid, size_t len) {
  if (m->cap == 0 || len == 0 || len > NGTCP2_MAX_CIDLEN) return NULL;
  size_t i = slot_of(m, cid, len);
  for (size_t probes = 0; probes < m->cap; probes++, i = (i + 1) & (m->cap - 1)) {
    struct cid_entry *e = &m->slots[i];
    if (e->len == SLOT_EMPTY) return NULL;
    if (e->len == len && memcmp(e->cid, cid, len) == 0) return e;
  }
  return NULL;
}

struct quic_conn *cid_map_get(struct cid_map *m, const uint8_t *cid, size_t len) {
  if (len != 0 && len == m->last_len && memcmp(cid, m->last_cid, len) == 0) return m->last_conn;
  struct cid_entry *e = cid_map_find(m, cid, len);
  if (e == NULL) return NULL;
  memcpy(m->last_cid, cid, len);
  m->last_len = len;
  m->last_conn = e->conn;
  return e->conn;
}

void cid_map_del(struct cid_map *m, const uint8_t *cid, size_t len) {
  m->last_len = 0;
  struct cid_entry *e = cid_map_find(m, cid, len);
  if (e == NULL) return;
  e->len = SLOT_DELETED;
  e->conn = NULL;
  m->used--;
  m->tombstones++;
}

/* ---------------------------------------------------------------------------
 * Sending.
 */
static ssize_t send_one(struct quic_endpoint *ep, const struct sockaddr *to, socklen_t to_len,
                        const uint8_t *data, size_t len, size_t segment) {
  struct iovec iov = {(void *)data, len};
  union h3g_udp_segment_ctrl ctrl;
  struct msghdr msg = {.msg_name = (void *)to, .msg_namelen = to_len, .msg_iov = &iov, .msg_iovlen = 1};
  if (segment && len > segment) h3g_udp_set_segment(&msg, &ctrl, (uint16_t)segment);
  ssize_t n;
  do n = sendmsg(ep->fd, &msg, 0);
  while (n < 0 && errno == EINTR);
  return n;
}

static int queue_pending(struct quic_endpoint *ep, const ngtcp2_addr *remote, const uint8_t *data,
                         size_t len, size_t segment) {
  if (ep->n_pending == PENDING_MAX) return -ENOBUFS; /* dropped: QUIC will retransmit */
  if (ep->n_pending == ep->cap_pending) {
    size_t cap = ep->cap_pending ? ep->cap_pending * 2 : 16;
    struct pending_pkt *p = realloc(ep->pending, cap * sizeof *p);
    if (p == NULL) return -ENOMEM;
    ep->pending = p;
    ep->cap_pending = cap;
  }
  struct pending_pkt *p = &ep->pending[ep->n_pending];
  p->data = malloc(len);
  if (p->data == NULL) return -ENOMEM;
  memcpy(p->data, data, len);
  memcpy(&p->remote, remote->addr, remote->addrlen);
  p->remote_len = remote->addrlen;
  p->len = len;
  p->segment = segment;
  ep->n_pending++;
  event_add(ep->ev_write, NULL);
  return -EAGAIN;
}

int quic_ep_send(struct quic_endpoint *ep, const ngtcp2_addr *remote, const uint8_t *data,
                 size_t len, size_t segment) {
  if (ep->n_pending > 0) return queue_pending(ep, remote, data, len, segment); /* keep order */
  if (!ep->gso && len > segment) {
    for (size_t off = 0; off < len; off += segment) {
      size_t n = len - off < segment ? len - off : segment;
      if (send_one(ep, remote->addr, remote->addrlen, data + off, n, 0) < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
          return queue_pending(ep, remote, data + off, len - off, segment);
        log_debug("quic: sendmsg: %s", strerror(errno));
        return 0;
      }
    }
    return 0;
  }
  if (send_one(ep, remote->addr, remote->addrlen, data, len, segment) >= 0) return 0;
  if (errno == EAGAIN || errno == EWOULDBLOCK) return queue_pending(ep, remote, data, len, segment);
  if ((errno == EIO || errno == EINVAL) && len > segment) {
    log_warn("quic: the kernel refused UDP GSO (%s): sending datagrams one by one", strerror(errno));
    ep->gso = false;
    return quic_ep_send(ep, remote, data, len, segment);
  }
  log_debug("quic: sendmsg: %s", strerror(errno));
  return 0;
}

void quic_ep_wait_writable(struct quic_endpoint *ep, struct quic_conn *qc) {
  if (!qc->blocked) {
    qc->blocked = true;
    TAILQ_INSERT_TAIL(&ep->blocked, qc, blocked_link);
  }
  event_add(ep->ev_write, NULL);
}

static void on_writable(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct quic_endpoint *ep = arg;
  size_t done = 0;
  for (; done < ep->n_pending; done++) {
    struct pending_pkt *p = &ep->pending[done];
    if (send_one(ep, &p->remote.sa, p->remote_len, p->data, p->len, ep->gso ? p->segment : 0) < 0 &&
        (errno == EAGAIN || errno == EWOULDBLOCK))
      break;
    free(p->data);
  }
  memmove(ep->pending, ep->pending + done, (ep->n_pending - done) * sizeof *ep->pending);
  ep->n_pending -= done;
  if (ep->n_pending > 0) {
    event_add(ep->ev_write, NULL);
    return;
  }
  struct quic_conn *qc;
  while ((qc = TAILQ_FIRST(&ep->blocked)) != NULL) {
    TAILQ_REMOVE(&ep->blocked, qc, blocked_link);
    qc->blocked = false;
    quic_conn_want_flush(qc);
  }
}

/* ---------------------------------------------------------------------------
 * Receiving.
 */
static void send_version_negotiation(struct quic_endpoint *ep, const ngtcp2_version_cid *vc,
                                     const ngtcp2_addr *remote) {
  if (!quic_rate_allow(&ep->vn_rate, gw.rt->conf->quic.version_negotiation_rate)) return;
  uint8_t buf[1280];
  uint32_t versions[] = {NGTCP2_PROTO_VER_V1};
  ngtcp2_ssize n = ngtcp2_pkt_write_version_negotiation(
      buf, sizeof buf, (uint8_t)fastrand64(), vc->scid, vc->scidlen, vc->dcid, vc->dcidlen,
      versions, 1);
  if (n > 0) quic_ep_send(ep, remote, buf, (size_t)n, (size_t)n);
}

/* An unknown connection ID on a short header: tell the peer the state is
 * gone, so it stops (RFC 9000 10.3). Smaller than what came in, rate-limited. */
static void send_stateless_reset(struct quic_endpoint *ep, const uint8_t *dcid, size_t dcidlen,
                                 size_t in_len, const ngtcp2_addr *remote) {
  if (in_len < 22 || !quic_rate_allow(&ep->reset_rate, gw.rt->conf->quic.stateless_reset_rate))
    return;
  ngtcp2_cid cid;
  ngtcp2_cid_init(&cid, dcid, dcidlen);
  uint8_t token[NGTCP2_STATELESS_RESET_TOKENLEN];
  if (ngtcp2_crypto_generate_stateless_reset_token(token, ep->secret, sizeof ep->secret, &cid) != 0)
    return;
  uint8_t rand[64];
  size_t randlen = in_len - 1 - NGTCP2_STATELESS_RESET_TOKENLEN;
  if (randlen > sizeof rand) randlen = sizeof rand;
  for (size_t i = 0; i < randlen; i++) rand[i] = (uint8_t)fastrand64();
  uint8_t buf[128];
  ngtcp2_ssize n = ngtcp2_pkt_write_stateless_reset(buf, sizeof buf, token, rand, randlen);
  if (n > 0) quic_ep_send(ep, remote, buf, (size_t)n, (size_t)n);
}

static void send_retry(struct quic_endpoint *ep, const ngtcp2_pkt_hd *hd, const ngtcp2_addr *remote) {
  uint8_t token[NGTCP2_CRYPTO_MAX_RETRY_TOKENLEN];
  ngtcp2_cid scid;
  scid.datalen = QUIC_SCID_LEN;
  quic_generate_cid(ep, scid.data, scid.datalen);
  ngtcp2_ssize tlen = ngtcp2_crypto_generate_retry_token(
      token, ep->secret, sizeof ep->secret, hd->version, remote->addr, remote->addrlen, &scid,
      &hd->dcid, quic_now_ns());
  if (tlen < 0) return;
  uint8_t buf[1280];
  ngtcp2_ssize n = ngtcp2_crypto_write_retry(buf, sizeof buf, hd->version, &hd->scid, &scid,
                                             &hd->dcid, token, (size_t)tlen);
  if (n > 0) quic_ep_send(ep, remote, buf, (size_t)n, (size_t)n);
}

static bool retry_wanted(struct quic_endpoint *ep) {
  const struct conf_quic *q = &gw.rt->conf->quic;
  if (q->retry == RETRY_ALWAYS) return true;
  if (q->retry == RETRY_NEVER) return false;
  uint64_t second = gw_now_us() / 1000000;
  if (second != ep->handshake_second) {
    ep->handshake_second = second;
    ep->handshakes_this_second = 0;
  }
  return ++ep->handshakes_this_second > q->retry_threshold;
}

/* A first packet from someone new: address validation, then a connection. */
static void accept_new(struct quic_endpoint *ep, const uint8_t *data, size_t len,
                       const ngtcp2_path *path, const ngtcp2_pkt_info *pi) {
  ngtcp2_pkt_hd hd;
  if (ngtcp2_accept(&hd, data, len) != 0) return; /* not an acceptable Initial */
  if (ep->n_conns >= gw.rt->conf->quic.max_connections || gw.stopping || ep->retiring) return;
  const ngtcp2_addr *remote = &path->remote;
  ngtcp2_cid odcid;
  bool from_retry = false, validated = false;
  if (hd.token.len > 0) {
    if (hd.token.base[0] == NGTCP2_CRYPTO_TOKEN_MAGIC_RETRY) {
      if (ngtcp2_crypto_verify_retry_token(&odcid, hd.token.base, hd.token.len, ep->secret,
                                           sizeof ep->secret, hd.version, remote->addr,
                                           remote->addrlen, &hd.dcid,
                                           RETRY_TOKEN_TIMEOUT_S * NGTCP2_SECONDS,
                                           quic_now_ns()) != 0) {
        log_debug("quic: invalid Retry token from %s: dropped", "client");
        return;
      }
      from_retry = validated = true;
    } else if (hd.token.base[0] == NGTCP2_CRYPTO_TOKEN_MAGIC_REGULAR) {
      validated = ngtcp2_crypto_verify_regular_token(
                      hd.token.base, hd.token.len, ep->secret, sizeof ep->secret, remote->addr,
                      remote->addrlen, REGULAR_TOKEN_TIMEOUT_S * NGTCP2_SECONDS,
                      quic_now_ns()) == 0;
    }
  }
  if (!validated && retry_wanted(ep)) {
    send_retry(ep, &hd, remote);
    return;
  }
  struct quic_conn *qc = quic_conn_accept(ep, &hd, path, from_retry ? &odcid : NULL, from_retry,
                                          hd.token.base, hd.token.len);
  if (qc) quic_conn_read(qc, path, pi, data, len);
}

static void dispatch(struct quic_endpoint *ep, const uint8_t *data, size_t len,
                     const ngtcp2_path *path, const ngtcp2_pkt_info *pi) {
  ngtcp2_version_cid vc;
  int rv = ngtcp2_pkt_decode_version_cid(&vc, data, len, QUIC_SCID_LEN);
  if (rv == NGTCP2_ERR_VERSION_NEGOTIATION) {
    send_version_negotiation(ep, &vc, &path->remote);
    return;
  }
  if (rv != 0) return;
  struct quic_conn *qc = cid_map_get(&ep->cids, vc.dcid, vc.dcidlen);
  if (qc) {
    quic_conn_read(qc, path, pi, data, len);
    return;
  }
  if (data[0] & 0x80)
    accept_new(ep, data, len, path, pi);
  else
    send_stateless_reset(ep, vc.dcid, vc.dcidlen, len, &path->remote);
}

static void on_readable(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  struct quic_endpoint *ep = arg;
  static uint8_t buf[RECV_BUF];
  for (int batch = 0; batch < RECV_BATCH; batch++) {
    ngtcp2_sockaddr_union remote;
    union {
      char buf[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(uint16_t)) + 64];
      struct cmsghdr align;
    } ctrl;
    struct iovec iov = {buf, sizeof buf};
    struct msghdr msg = {.msg_name = &remote, .msg_namelen = sizeof remote, .msg_iov = &iov,
                         .msg_iovlen = 1, .msg_control = ctrl.buf, .msg_controllen = sizeof ctrl.buf};
    ssize_t n = recvmsg(fd, &msg, 0);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        log_debug("quic: recvmsg: %s", strerror(errno));
      return;
    }
    size_t segment = (size_t)n;
    ngtcp2_pkt_info pi = {.ecn = NGTCP2_ECN_NOT_ECT};
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
        int gso_size;
        memcpy(&gso_size, CMSG_DATA(cm), sizeof gso_size);
        if (gso_size > 0) segment = (size_t)gso_size;
      } else if ((cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_TOS) ||
                 (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_TCLASS)) {
        int tos = 0;
        memcpy(&tos, CMSG_DATA(cm), cm->cmsg_len - CMSG_LEN(0) >= sizeof(int) ? sizeof(int) : 1);
        pi.ecn = (uint32_t)tos & NGTCP2_ECN_MASK;
      }
    }
    ngtcp2_path path = {
        .local = {(ngtcp2_sockaddr *)&ep->local, ep->local_len},
        .remote = {&remote.sa, msg.msg_namelen},
    };
    /* A GRO batch holds datagrams of one size; the last may be shorter. */
    for (size_t off = 0; off < (size_t)n; off += segment) {
      size_t len = (size_t)n - off < segment ? (size_t)n - off : segment;
      dispatch(ep, buf + off, len, &path, &pi);
    }
  }
}

/* ---------------------------------------------------------------------------
 * Listener glue.
 */
static const uint8_t *endpoint_secret(const struct gw_conf *conf) {
  if (conf->quic.secret_set) return conf->quic.secret_bytes;
  if (!Q.secret_generated) {
    /* From the kernel, not fastrand64: its state can be worked out from
     * outputs that clients see (request IDs), and with it this secret. */
    if (getrandom(Q.generated_secret, sizeof Q.generated_secret, 0) != (ssize_t)sizeof Q.generated_secret) {
      /* No entropy at all: nothing safe to key tokens with. */
      log_error("quic: getrandom: %s: cannot generate a secret (set quic.secret)", strerror(errno));
      abort();
    }
    Q.secret_generated = true;
    log_warn("quic: no secret in the config: generated one for this run; Retry tokens, "
             "NEW_TOKENs and stateless resets won't survive a restart or match other "
             "gateways (set quic.secret)");
  }
  return Q.generated_secret;
}

void quic_say_http3_off(const char *address, const char *why) {
  log_error("HTTP/3 is off on %s: %s (HTTP/1.1 and HTTP/2 keep serving)", address, why);
}

int quic_shared_prepare(const struct gw_conf *conf) {
  bool any_h3 = false;
  for (size_t i = 0; i < conf->n_listens; i++) any_h3 |= conf->listens[i].http3;
  if (!any_h3) return 0;
  (void)endpoint_secret(conf);
  return quic_replay_prepare();
}

static void set_buffer(int fd, int opt, uint64_t want, const char *name, const char *sysctl,
                       const char *where) {
  int v = want > INT32_MAX / 2 ? INT32_MAX / 2 : (int)want;
  setsockopt(fd, SOL_SOCKET, opt, &v, sizeof v);
  int got = 0;
  socklen_t len = sizeof got;
  getsockopt(fd, SOL_SOCKET, opt, &got, &len);
  /* Linux reports twice what it grants. Said once: the master opens a
   * socket per worker process. */
  static bool warned[2];
  bool *said = &warned[opt == SO_SNDBUF];
  if ((uint64_t)got / 2 >= want || *said) return;
  *said = true;
  log_warn("quic %s: the kernel caps the UDP %s buffer at %d bytes (asked for %llu); raise "
           "%s on the host (Docker: on the host, not in the container)",
           where, name, got / 2, (unsigned long long)want, sysctl);
}

int quic_udp_open(const struct conf_listen *cl, const struct gw_conf *conf, bool reuseport,
                  char *err, size_t err_size) {
  struct sockaddr_storage ss;
  socklen_t len;
  struct h3g_hostport hp = cl->addr;
  if (cl->http3_port) hp.port = (uint16_t)cl->http3_port;
  if (h3g_hostport_to_sockaddr(&hp, &ss, &len) != 0) {
    snprintf(err, err_size, "the address must be numeric");
    return -1;
  }
  int fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, err_size, "socket: %s", strerror(errno));
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (reuseport) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (ss.ss_family == AF_INET6) {
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    setsockopt(fd, IPPROTO_IPV6, IPV6_RECVTCLASS, &one, sizeof one);
  } else {
    setsockopt(fd, IPPROTO_IP, IP_RECVTOS, &one, sizeof one);
  }
  if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
    snprintf(err, err_size, "UDP port %u: %s", hp.port, strerror(errno));
    close(fd);
    return -1;
  }
  char where[80];
  snprintf(where, sizeof where, "%s", cl->address);
  set_buffer(fd, SO_RCVBUF, conf->quic.socket_receive_buffer, "receive", "net.core.rmem_max", where);
  set_buffer(fd, SO_SNDBUF, conf->quic.socket_send_buffer, "send", "net.core.wmem_max", where);
  return fd;
}

/* The endpoint takes fd (bound by quic_udp_open, here or in the master). */
static int adopt_socket(struct quic_endpoint *ep, int fd, const struct gw_conf *conf, char *err,
                        size_t err_size) {
  socklen_t len = sizeof ep->local;
  if (getsockname(fd, (struct sockaddr *)&ep->local, &len) != 0) {
    snprintf(err, err_size, "getsockname: %s", strerror(errno));
    return -1;
  }
  int one = 1;
  ep->gro = setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) == 0;
  ep->gso = conf->quic.gso;
  ep->fd = fd;
  ep->family = ep->local.ss_family;
  ep->local_len = len;
  ep->port = h3g_sockaddr_port((struct sockaddr *)&ep->local);
  return 0;
}

int quic_listener_open(struct listener *l, const struct gw_conf *conf, int inherit_fd, char *err,
                       size_t err_size) {
  const struct conf_listen *cl = l->conf;
  if (!cl->http3) return 0; /* the config clears it without TLS */
  if (Q.n_eps == sizeof Q.eps / sizeof Q.eps[0]) {
    snprintf(err, err_size, "HTTP/3 runs on at most %zu ports (with those still draining)",
             sizeof Q.eps / sizeof Q.eps[0]);
    if (inherit_fd >= 0) close(inherit_fd);
    return -1;
  }
  int fd = inherit_fd >= 0 ? inherit_fd : quic_udp_open(cl, conf, false, err, err_size);
  if (fd < 0) return -1;
  struct quic_endpoint *ep = calloc(1, sizeof *ep);
  if (ep == NULL) {
    snprintf(err, err_size, "out of memory");
    close(fd);
    return -1;
  }
  ep->fd = -1;
  ep->worker_index = (uint8_t)gw.worker_index;
  LIST_INIT(&ep->conns);
  TAILQ_INIT(&ep->blocked);
  memcpy(ep->secret, endpoint_secret(conf), sizeof ep->secret);
  ep->cids.key[0] = fastrand64();
  ep->cids.key[1] = fastrand64();
  if (quic_tls_init(&ep->tls, ep->secret, err, err_size) != 0) goto err_free;
  if (adopt_socket(ep, fd, conf, err, err_size) != 0) goto err_tls;
  fd = -1; /* the endpoint's now */
  ep->ev_read = event_new(gw.base, ep->fd, EV_READ | EV_PERSIST, on_readable, ep);
  ep->ev_write = event_new(gw.base, ep->fd, EV_WRITE, on_writable, ep);
  if (ep->ev_read == NULL || ep->ev_write == NULL) goto err_tls;
  event_add(ep->ev_read, NULL);
  ep->listener = l;
  l->quic = ep;
  l->h3_running = true;
  Q.eps[Q.n_eps++] = ep;
  log_info("HTTP/3 on udp %s%s%s", cl->address,
           cl->http3_port ? " (port " : "", cl->http3_port ? "from http3_port)" : "");
  return 0;

err_tls:
  if (ep->fd >= 0) close(ep->fd);
  quic_tls_free(&ep->tls);
err_free:
  if (fd >= 0) close(fd);
  free(ep);
  return -1;
}

void quic_listener_adopt(struct listener *to, struct listener *from) {
  if (from == NULL || from->quic == NULL || to->quic != NULL) return;
  to->quic = from->quic;
  to->quic->listener = to;
  to->h3_running = true;
  from->quic = NULL;
  from->h3_running = false;
}

static void unregister(struct quic_endpoint *ep) {
  for (size_t i = 0; i < Q.n_eps; i++)
    if (Q.eps[i] == ep) Q.eps[i] = Q.eps[--Q.n_eps];
}

static void endpoint_free(void *p) {
  struct quic_endpoint *ep = p;
  event_free(ep->ev_read);
  event_free(ep->ev_write);
  close(ep->fd);
  for (size_t i = 0; i < ep->n_pending; i++) free(ep->pending[i].data);
  free(ep->pending);
  free(ep->cids.slots);
  quic_tls_free(&ep->tls);
  free(ep);
}

static void detach_listener(struct listener *l) {
  l->quic = NULL;
  l->h3_running = false;
}

void quic_listener_close(struct listener *l) {
  struct quic_endpoint *ep = l->quic;
  if (ep == NULL) return;
  struct quic_conn *qc, *next;
  for (qc = LIST_FIRST(&ep->conns); qc; qc = next) {
    next = LIST_NEXT(qc, link);
    quic_conn_close_now(qc, 0x100 /* H3_NO_ERROR */);
  }
  /* Connections were freed at the flush point; the socket goes now. */
  unregister(ep);
  detach_listener(l);
  endpoint_free(ep);
}

void quic_listener_retire(struct listener *l) {
  struct quic_endpoint *ep = l->quic;
  if (ep == NULL) return;
  detach_listener(l);
  ep->listener = NULL; /* it takes no new connections */
  ep->retiring = true;
  if (ep->n_conns > 0)
    log_info("HTTP/3 on udp port %u leaves the configuration: %zu connections finish first", ep->port,
             ep->n_conns);
  struct quic_conn *qc, *next;
  for (qc = LIST_FIRST(&ep->conns); qc; qc = next) {
    next = LIST_NEXT(qc, link);
    quic_conn_shutdown(qc);
  }
  quic_ep_conn_gone(ep);
}

void quic_ep_conn_gone(struct quic_endpoint *ep) {
  if (!ep->retiring || ep->n_conns > 0 || ep->freeing) return;
  ep->freeing = true;
  log_info("HTTP/3 on udp port %u: closed", ep->port);
  unregister(ep);
  event_del(ep->ev_read);
  event_del(ep->ev_write);
  /* Not now: the caller may be reading its socket. */
  gw_defer_free(endpoint_free, ep);
}

void quic_shutdown_all(bool only_old_generations) {
  for (size_t i = 0; i < Q.n_eps; i++) {
    struct quic_conn *qc, *next;
    for (qc = LIST_FIRST(&Q.eps[i]->conns); qc; qc = next) {
      next = LIST_NEXT(qc, link);
      if (!only_old_generations || qc->rt != gw.rt) quic_conn_shutdown(qc);
    }
  }
}

size_t quic_connection_count(void) {
  size_t n = 0;
  for (size_t i = 0; i < Q.n_eps; i++) n += Q.eps[i]->n_conns;
  return n;
}
