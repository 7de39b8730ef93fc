/* TCP listeners (TLS with ALPN h2/http/1.1, or cleartext HTTP/1.1 + h2c). */
#ifndef H3G_GATEWAY_LISTENER_H
#define H3G_GATEWAY_LISTENER_H

#include <stdbool.h>
#include <openssl/ssl.h>

#include "config.h"

struct listener {
  const struct conf_listen *conf;
  int fd;
  SSL_CTX *ssl_ctx;      /* the default certificate's */
  struct sni_set *sni;   /* the further certificates', chosen by SNI; NULL: none */
  struct event *ev;
  bool paused;          /* accepting held: max_connections reached, or out of files */
  bool h3_running;      /* a QUIC endpoint serves this port: advertise it */
  struct quic_endpoint *quic;
  struct quic_certs *h3_certs; /* the certificates again, for QUIC (GnuTLS); NULL without HTTP/3 */
  char alt_svc[96];
};

/* Builds the TLS context (certificates checked here: -t fails on a bad one).
 * 0, or -1 with a message in err. */
int listener_prepare(struct listener *l, const struct conf_listen *conf, const struct gw_conf *gconf,
                     char *err, size_t err_size);
/* Frees what listener_prepare made for TLS. */
void listener_free_tls(struct listener *l);
/* In the master, before forking: TLS contexts made from now on share one
 * set of session-ticket keys. 0 or -1. */
int listener_share_ticket_keys(void);
/* A listening socket for conf (SO_REUSEPORT for the master's per-process
 * sockets), or -1 with a message in err. */
int listener_bind(const struct conf_listen *conf, bool reuseport, char *err, size_t err_size);
/* Binds, or adopts fd from the previous generation (-1: bind anew). */
int listener_open(struct listener *l, int inherit_fd, char *err, size_t err_size);
/* Starts accepting. */
void listener_start(struct listener *l);
/* Stops accepting and gives the fd away (for the next generation); returns it. */
int listener_release_fd(struct listener *l);
void listener_free(struct listener *l);
/* max_connections reached (or no longer): every listener stops accepting
 * (or may start again, unless it rests for want of file descriptors). */
void listeners_pause_all(bool paused);

#endif
