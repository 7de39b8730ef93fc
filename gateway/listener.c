/* Listeners and TLS (OpenSSL 3.0): accept, the handshake with ALPN, and
 * the cleartext preface sniff; then the connection belongs to h1 or h2.
 *
 * Table of contents:
 *   TLS context
 *   binding and accepting
 *   connection set-up (handshake, sniffing)
 */
#include "listener.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "down.h"
#include "gw.h"
#include "log.h"
#include "quic.h"
#include "sock.h"

enum { ACCEPT_BATCH = 64, BACKLOG = 4096 };

/* Why accepting is held. Each reason holds every listener until it lifts,
 * and a listener accepts only while none holds. */
enum { HOLD_MAX_CONNECTIONS = 1, HOLD_OUT_OF_FILES = 2 };
static unsigned holds;

static const char H2_PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/* ---------------------------------------------------------------------------
 * TLS.
 */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
  (void)ssl;
  (void)arg;
  /* Our preference order, h2 first; http/1.0 (RFC 7301's registry) as
   * nginx takes it, for old clients and health checks that name it. */
  static const unsigned char ours[] = "\x02h2\x08http/1.1\x08http/1.0";
  if (SSL_select_next_proto((unsigned char **)out, outlen, ours, sizeof ours - 1, in, inlen) ==
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_OK;
  /* None of ours offered (h3 over TCP, another protocol): a fatal
   * no_application_protocol alert (RFC 7301 3.2), as nginx and Go answer,
   * rather than HTTP/1.1 to a client that speaks something else (the
   * ALPACA cross-protocol attacks). A client that offers no ALPN at all
   * gets HTTP/1.1. */
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static void openssl_error(char *err, size_t size, const char *what, const char *file) {
  unsigned long e = ERR_get_error();
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  snprintf(err, size, "%s %s: %s", what, file, e ? buf : strerror(errno));
  ERR_clear_error();
}

/* Session-ticket keys shared by every worker process (made by the master
 * before it forks), so a client resumes its TLS session whichever process
 * the kernel hands its next connection to. Alone, OpenSSL's own per-context
 * keys do. */
static struct {
  unsigned char keys[80]; /* OpenSSL's layout: name 16, HMAC 32, AES 32 */
  bool set;
} Tickets;

int listener_share_ticket_keys(void) {
  if (getrandom(Tickets.keys, sizeof Tickets.keys, 0) != (ssize_t)sizeof Tickets.keys) return -1;
  Tickets.set = true;
  return 0;
}

static SSL_CTX *make_ssl_ctx(const struct conf_listen *conf, const char *certificate, const char *key,
                             char *err, size_t size) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL) {
    openssl_error(err, size, "cannot create a TLS context for", conf->address);
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                               SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  /* No SSL_CTX_set_read_ahead, though it would save a read() per request:
   * data read ahead during the handshake sits inside OpenSSL, and
   * libevent 2.1's TLS bufferevent waits for the socket instead (a request
   * sent with the client's Finished then hangs). */
  if (SSL_CTX_use_certificate_chain_file(ctx, certificate) != 1) {
    openssl_error(err, size, "cannot load certificate", certificate);
    goto err_free;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
    openssl_error(err, size, "cannot load key", key);
    goto err_free;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    openssl_error(err, size, "key does not match certificate", certificate);
    goto err_free;
  }
  SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
  if (Tickets.set && SSL_CTX_set_tlsext_ticket_keys(ctx, Tickets.keys, sizeof Tickets.keys) != 1) {
    openssl_error(err, size, "cannot set the shared session-ticket keys for", conf->address);
    goto err_free;
  }
  return ctx;

err_free:
  SSL_CTX_free(ctx);
  return NULL;
}

/* The contexts of a listener's further certificates, one per certificate,
 * for SNI to choose from. */
struct sni_set {
  size_t n;
  SSL_CTX *ctx[];
};

/* Before the certificate is chosen: the default one if the client names no
 * host or a host it covers, else the first further one that covers it
 * (its subjectAltName or CN, wildcards too), else the default again. */
static int select_certificate(SSL *ssl, int *alert, void *arg) {
  (void)alert;
  const struct sni_set *set = arg;
  const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (name == NULL || X509_check_host(SSL_get_certificate(ssl), name, 0, 0, NULL) == 1)
    return SSL_TLSEXT_ERR_OK;
  for (size_t i = 0; i < set->n; i++) {
    if (X509_check_host(SSL_CTX_get0_certificate(set->ctx[i]), name, 0, 0, NULL) == 1) {
      SSL_set_SSL_CTX(ssl, set->ctx[i]);
      break;
    }
  }
  return SSL_TLSEXT_ERR_OK;
}

static int prepare_sni(struct listener *l, const struct conf_listen *conf, char *err, size_t err_size) {
  l->sni = calloc(1, sizeof *l->sni + conf->n_sni_certs * sizeof l->sni->ctx[0]);
  if (l->sni == NULL) {
    snprintf(err, err_size, "listen %s: out of memory", conf->address);
    return -1;
  }
  for (size_t i = 0; i < conf->n_sni_certs; i++) {
    const struct conf_cert *cert = &conf->sni_certs[i];
    if ((l->sni->ctx[i] = make_ssl_ctx(conf, cert->certificate, cert->key, err, err_size)) == NULL)
      return -1;
    l->sni->n++;
  }
  SSL_CTX_set_tlsext_servername_callback(l->ssl_ctx, select_certificate);
  SSL_CTX_set_tlsext_servername_arg(l->ssl_ctx, l->sni);
  return 0;
}

void listener_free_tls(struct listener *l) {
  if (l->ssl_ctx) SSL_CTX_free(l->ssl_ctx);
  l->ssl_ctx = NULL;
  for (size_t i = 0; l->sni && i < l->sni->n; i++) SSL_CTX_free(l->sni->ctx[i]);
  free(l->sni);
  l->sni = NULL;
  quic_certs_free(l->h3_certs);
  l->h3_certs = NULL;
}

int listener_prepare(struct listener *l, const struct conf_listen *conf, const struct gw_conf *gconf,
                     char *err, size_t err_size) {
  memset(l, 0, sizeof *l);
  l->conf = conf;
  l->fd = -1;
  if (conf->tls) {
    l->ssl_ctx = make_ssl_ctx(conf, conf->certificate, conf->key, err, err_size);
    if (l->ssl_ctx == NULL) return -1;
    if ((conf->n_sni_certs > 0 && prepare_sni(l, conf, err, err_size) != 0) ||
        (conf->http3 && (l->h3_certs = quic_certs_load(conf, err, err_size)) == NULL)) {
      listener_free_tls(l);
      return -1;
    }
  }
  if (gconf->alt_svc && conf->alt_svc && conf->http3) {
    unsigned port = conf->http3_port ? conf->http3_port : conf->addr.port;
    snprintf(l->alt_svc, sizeof l->alt_svc, "h3=\":%u\"; ma=%llu", port,
             (unsigned long long)(gconf->alt_svc_max_age / 1000));
  }
  return 0;
}

/* ---------------------------------------------------------------------------
 * Accepting.
 */
static void on_accept(evutil_socket_t fd, short what, void *arg);

int listener_bind(const struct conf_listen *conf, bool reuseport, char *err, size_t err_size) {
  struct sockaddr_storage ss;
  socklen_t len;
  if (h3g_hostport_to_sockaddr(&conf->addr, &ss, &len) != 0) {
    snprintf(err, err_size, "listen %s: the host must be a numeric address", conf->address);
    return -1;
  }
  int fd = h3g_listen((struct sockaddr *)&ss, len, BACKLOG, reuseport);
  if (fd < 0) {
    snprintf(err, err_size, "cannot listen on %s: %s", conf->address, strerror(-fd));
    return -1;
  }
  return fd;
}

int listener_open(struct listener *l, int inherit_fd, char *err, size_t err_size) {
  l->fd = inherit_fd >= 0 ? inherit_fd : listener_bind(l->conf, false, err, err_size);
  if (l->fd < 0) return -1;
  l->ev = event_new(gw.base, l->fd, EV_READ | EV_PERSIST, on_accept, l);
  return l->ev ? 0 : -1;
}

void listener_start(struct listener *l) {
  if (l->ev == NULL) return;
  l->paused = holds != 0; /* a new generation's listeners wait as the old ones do */
  if (l->paused) event_del(l->ev);
  else event_add(l->ev, NULL);
}

int listener_release_fd(struct listener *l) {
  if (l->ev) {
    event_free(l->ev);
    l->ev = NULL;
  }
  int fd = l->fd;
  l->fd = -1;
  return fd;
}

void listener_free(struct listener *l) {
  if (l == NULL) return;
  if (l->quic) quic_listener_close(l);
  if (l->ev) event_free(l->ev);
  if (l->fd >= 0) close(l->fd);
  listener_free_tls(l);
  free(l);
}

static void apply_holds(void) {
  struct gw_runtime *rt = gw.rt;
  bool paused = holds != 0;
  for (size_t i = 0; i < rt->n_listeners; i++) {
    struct listener *l = rt->listeners[i];
    if (l->paused == paused || l->ev == NULL) continue;
    l->paused = paused;
    if (paused) event_del(l->ev);
    else event_add(l->ev, NULL);
  }
}

static void set_hold(unsigned reason, bool on) {
  holds = on ? holds | reason : holds & ~reason;
  apply_holds();
}

void listeners_pause_all(bool paused) { set_hold(HOLD_MAX_CONNECTIONS, paused); }

/* Out of file descriptors (EMFILE, ENFILE) or kernel memory: the pending
 * connection stays in the backlog and the listening socket stays readable,
 * so retrying at once spun a CPU and wrote a warning per try (1.7 million
 * lines in 5 s). Accepting rests instead, as nginx's does, and the warning
 * comes once per rest. */
enum { OUT_OF_FILES_REST_MS = 500 };
static struct event out_of_files_timer;
static bool out_of_files_timer_ready;

static void out_of_files_rest_over(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what, (void)arg;
  set_hold(HOLD_OUT_OF_FILES, false);
}

static void rest_out_of_files(int err) {
  if (holds & HOLD_OUT_OF_FILES) return;
  log_warn("accept: %s: pausing accept for %d ms (raise the open-files limit: LimitNOFILE= in "
           "systemd, ulimit -n)", strerror(err), OUT_OF_FILES_REST_MS);
  if (!out_of_files_timer_ready) {
    evtimer_assign(&out_of_files_timer, gw.base, out_of_files_rest_over, NULL);
    out_of_files_timer_ready = true;
  }
  set_hold(HOLD_OUT_OF_FILES, true);
  struct timeval tv = {0, OUT_OF_FILES_REST_MS * 1000};
  evtimer_add(&out_of_files_timer, &tv);
}

/* ---------------------------------------------------------------------------
 * Connection set-up.
 */
static void start_protocol(struct down_conn *c, const struct down_proto *proto) {
  c->proto = proto;
  c->state = DC_OPEN;
  if (proto->start(c) != 0) {
    down_conn_fail(c, "out of memory");
    return;
  }
  down_conn_opened(c);
  if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0) c->proto->on_read(c);
  down_want_flush(c);
}

static void sniff_read(struct bufferevent *bev, void *arg) {
  struct down_conn *c = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  size_t have = evbuffer_get_length(in), want = sizeof H2_PREFACE - 1;
  size_t n = have < want ? have : want;
  unsigned char *p = evbuffer_pullup(in, (ev_ssize_t)n);
  bool h2 = p && memcmp(p, H2_PREFACE, n) == 0;
  if (h2 && have < want) return; /* the rest of the preface is on its way */
  start_protocol(c, h2 ? &h2_down_proto : &h1_down_proto);
}

static void handshake_event(struct bufferevent *bev, short what, void *arg) {
  struct down_conn *c = arg;
  if (what & BEV_EVENT_CONNECTED) {
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    const unsigned char *alpn = NULL;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    bool h2 = alpn_len == 2 && memcmp(alpn, "h2", 2) == 0;
    start_protocol(c, h2 ? &h2_down_proto : &h1_down_proto);
    return;
  }
  unsigned long e = bufferevent_get_openssl_error(bev);
  char buf[160] = "connection closed";
  if (e) ERR_error_string_n(e, buf, sizeof buf);
  down_conn_fail(c, buf);
}

static void setup(struct listener *l, int fd, const struct sockaddr *peer) {
  struct down_conn *c = down_conn_new(l, fd, peer);
  if (c == NULL) {
    close(fd);
    return;
  }
  if (l->ssl_ctx) {
    SSL *ssl = SSL_new(l->ssl_ctx);
    c->bev = ssl ? bufferevent_openssl_socket_new(gw.base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                  BEV_OPT_CLOSE_ON_FREE)
                 : NULL;
    if (c->bev == NULL) {
      if (ssl) SSL_free(ssl);
      close(fd);
      down_conn_fail(c, "cannot start TLS");
      return;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
    c->tls = true;
    c->state = DC_HANDSHAKE;
    bufferevent_setcb(c->bev, NULL, NULL, handshake_event, c);
  } else {
    c->bev = bufferevent_socket_new(gw.base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
      close(fd);
      down_conn_fail(c, "out of memory");
      return;
    }
    c->state = DC_SNIFF;
    bufferevent_setcb(c->bev, sniff_read, NULL, handshake_event, c);
  }
  bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg) {
  (void)what;
  struct listener *l = arg;
  for (int i = 0; i < ACCEPT_BATCH; i++) {
    if (down_count() >= gw.rt->conf->max_connections) {
      log_warn("max_connections (%u) reached: pausing accept", gw.rt->conf->max_connections);
      listeners_pause_all(true);
      return;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int fd = accept4(lfd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (h3g_out_of_files(errno)) rest_out_of_files(errno);
      return;
    }
    h3g_set_nodelay(fd);
    setup(l, fd, (struct sockaddr *)&ss);
  }
}
