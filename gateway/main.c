/* h3gate: the gateway. Loads the YAML config, builds a runtime generation
 * (listeners, upstream pools), runs the loop; SIGHUP builds the next
 * generation and hands it the listening sockets; SIGTERM/SIGQUIT/SIGINT
 * stop gracefully. With workers > 1 the master (master.c) binds the sockets
 * and runs one such process per worker.
 *
 *   h3gate -c FILE        run
 *   h3gate -t -c FILE     check the config (and certificates) and exit
 */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "access_log.h"
#include "admin.h"
#include "down.h"
#include "gw.h"
#include "listener.h"
#include "log.h"
#include "master.h"
#include "mem_cache.h"
#include "per_ip.h"
#include "quic.h"
#include "sock.h"
#include "upstream.h"
#include "xchg.h"

enum { WS_CLOSE_GRACE_US = 1000 * 1000 }; /* for the close frames a stop sends */

#define H3GATE_VERSION "0.1.0"

static const char usage_text[] =
    "usage: h3gate [-t] -c FILE\n"
    "  -c, --config FILE   the YAML configuration (see configs/gateway.yaml)\n"
    "  -t, --test          check the configuration and certificates, then exit\n"
    "  -v, --version\n"
    "  -h, --help\n"
    "Signals: TERM/QUIT/INT graceful stop, HUP reload config and certificates.\n";

static struct {
  const char *config_path;
  struct event *stop_check;
  uint64_t stop_deadline_us;
  bool ws_going_away_sent;
  uint64_t generations;
  const struct gw_child *child; /* under a master: the sockets it handed over */
} M;

/* The master's TCP or UDP socket for listen entry i, for the first
 * generation only: later ones carry the sockets over from their predecessor. */
static int inherited_fd(bool udp, size_t i, const struct gw_runtime *old) {
  if (M.child == NULL || old != NULL || M.generations != 0) return -1;
  return udp ? M.child->udp_fds[i] : M.child->tcp_fds[i];
}

/* ---------------------------------------------------------------------------
 * Building a runtime generation.
 */
static void runtime_discard(struct gw_runtime *rt) {
  for (size_t i = 0; i < rt->n_listeners; i++) listener_free(rt->listeners[i]);
  for (size_t i = 0; i < rt->n_pools; i++)
    if (rt->pools[i]) up_pool_free(rt->pools[i]);
  free(rt->listeners);
  free(rt->pools);
  free(rt);
}

/* The listener of the previous generation with the same address, if any. */
static struct listener *find_old(struct gw_runtime *old, const struct conf_listen *cl) {
  if (old == NULL) return NULL;
  for (size_t i = 0; i < old->n_listeners; i++) {
    struct listener *l = old->listeners[i];
    if ((l->fd >= 0 || l->quic) && l->conf->addr.port == cl->addr.port &&
        strcmp(l->conf->addr.host, cl->addr.host) == 0)
      return l;
  }
  return NULL;
}

/* Builds everything that can fail, without touching the running generation. */
static struct gw_runtime *runtime_build(struct gw_conf *conf, struct gw_runtime *old, char *err,
                                        size_t err_size) {
  struct gw_runtime *rt = calloc(1, sizeof *rt);
  rt->conf = conf;
  rt->listeners = calloc(conf->n_listens, sizeof *rt->listeners);
  rt->pools = calloc(conf->n_upstreams, sizeof *rt->pools);
  for (size_t i = 0; i < conf->n_listens; i++) {
    struct listener *l = calloc(1, sizeof *l);
    rt->listeners[rt->n_listeners++] = l;
    if (listener_prepare(l, &conf->listens[i], conf, err, err_size) != 0) goto err;
    l->fd = -1;
    /* Fresh addresses are bound now; shared ones move over at the switch. */
    if (find_old(old, &conf->listens[i]) == NULL &&
        listener_open(l, inherited_fd(false, i, old), err, err_size) != 0)
      goto err;
  }
  for (size_t i = 0; i < conf->n_upstreams; i++) {
    rt->pools[i] = up_pool_new(&conf->upstreams[i], conf);
    rt->n_pools++;
    if (rt->pools[i] == NULL) {
      snprintf(err, err_size, "out of memory");
      goto err;
    }
  }
  return rt;

err:
  rt->conf = NULL;
  runtime_discard(rt);
  return NULL;
}

/* HTTP/3 on a TLS listener: the previous generation's endpoint (socket and
 * live connections) carries over; a new one is opened otherwise. Failing
 * to open it disables HTTP/3 on that port only, and says why. */
static void start_http3(struct listener *l, struct listener *old, const struct gw_conf *conf,
                        int inherit_fd) {
  if (!l->conf->http3) return; /* the config clears it without TLS */
  if (old && old->quic && old->conf->http3_port == l->conf->http3_port) {
    quic_listener_adopt(l, old);
    return;
  }
  /* Under a master the UDP sockets are the master's (bound in order, for its
   * steering): without one from it, HTTP/3 stays off on this port. */
  if (M.child && inherit_fd < 0) return;
  char err[256] = "";
  if (quic_listener_open(l, conf, inherit_fd, err, sizeof err) != 0)
    quic_say_http3_off(l->conf->address, err);
}

static void runtime_switch(struct gw_runtime *rt, struct gw_runtime *old) {
  for (size_t i = 0; i < rt->n_listeners; i++) {
    struct listener *l = rt->listeners[i];
    struct listener *o = find_old(old, l->conf);
    if (l->fd < 0) {
      char err[256];
      if (listener_open(l, listener_release_fd(o), err, sizeof err) != 0) log_error("%s", err);
    }
    start_http3(l, o, rt->conf, inherited_fd(true, i, old));
  }
  if (old) {
    /* Addresses the new config dropped stop accepting now. */
    for (size_t i = 0; i < old->n_listeners; i++) {
      int fd = listener_release_fd(old->listeners[i]);
      if (fd >= 0) close(fd);
      quic_listener_retire(old->listeners[i]); /* unless the new generation adopted it */
    }
    for (size_t i = 0; i < old->n_pools; i++) up_pool_retire(old->pools[i]);
  }
  rt->refs = 1;
  rt->generation = ++M.generations;
  gw.rt = rt;
  for (size_t i = 0; i < rt->n_listeners; i++) listener_start(rt->listeners[i]);
  for (size_t i = 0; i < rt->n_pools; i++) up_pool_start(rt->pools[i]);
  if (old) gw_runtime_unref(old);
}

static int setup_dns(const struct gw_conf *conf) {
  if (gw.dns == NULL) {
    gw.dns = evdns_base_new(gw.base, 0);
    if (gw.dns == NULL) return -1;
  } else {
    evdns_base_clear_nameservers_and_suspend(gw.dns);
  }
  int rc;
  if (conf->resolver)
    rc = evdns_base_nameserver_ip_add(gw.dns, conf->resolver);
  else
    rc = evdns_base_resolv_conf_parse(gw.dns, DNS_OPTION_NAMESERVERS | DNS_OPTION_MISC,
                                      "/etc/resolv.conf");
  char timeout[32];
  snprintf(timeout, sizeof timeout, "%.3f", (double)conf->resolver_timeout_ms / 1000);
  evdns_base_set_option(gw.dns, "timeout:", timeout);
  evdns_base_set_option(gw.dns, "attempts:", "2");
  evdns_base_load_hosts(gw.dns, NULL);
  evdns_base_resume(gw.dns);
  if (rc != 0) log_warn("resolver: could not set the name server%s%s", conf->resolver ? " " : "",
                        conf->resolver ? conf->resolver : " from /etc/resolv.conf");
  return 0;
}

static int apply_logs(const struct gw_conf *conf) {
  h3g_log_min_level = conf->log_level;
  int rc = h3g_log_open(conf->error_log);
  if (rc != 0) {
    log_error("cannot open error log %s: %s", conf->error_log, strerror(-rc));
    return -1;
  }
  rc = access_log_open(conf);
  if (rc != 0) {
    log_error("cannot open access log %s: %s", conf->access_log, strerror(-rc));
    return -1;
  }
  return 0;
}

/* ---------------------------------------------------------------------------
 * Signals.
 */
static void on_stop_check(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
  if (down_count() == 0 && quic_connection_count() == 0) {
    log_info("all connections closed: exiting");
    event_base_loopexit(gw.base, NULL);
    return;
  }
  if (gw_now_us() >= M.stop_deadline_us && !M.ws_going_away_sent) {
    /* WebSockets never end by themselves: say goodbye (1001) and give the
     * close frames a moment to leave. */
    M.ws_going_away_sent = true;
    size_t n = xchg_websockets_going_away();
    if (n > 0) {
      log_info("graceful timeout: closing %zu WebSockets with 1001 (going away)", n);
      M.stop_deadline_us = gw_now_us() + WS_CLOSE_GRACE_US;
      return;
    }
  }
  if (gw_now_us() >= M.stop_deadline_us) {
    log_warn("graceful timeout: closing %zu TCP and %zu HTTP/3 connections", down_count(),
             quic_connection_count());
    event_base_loopexit(gw.base, NULL);
  }
}

static void begin_stop(int sig) {
  if (gw.stopping) {
    if (sig == SIGINT || sig == SIGQUIT) event_base_loopexit(gw.base, NULL); /* again: now */
    return;
  }
  gw.stopping = true;
  log_info("%s: stopping; %zu TCP and %zu HTTP/3 connections finish within %.1fs", strsignal(sig),
           down_count(), quic_connection_count(), (double)gw.rt->conf->graceful_timeout_ms / 1000);
  for (size_t i = 0; i < gw.rt->n_listeners; i++) {
    int lfd = listener_release_fd(gw.rt->listeners[i]);
    if (lfd >= 0) close(lfd);
  }
  admin_stop();
  down_shutdown_all(false);
  quic_shutdown_all(false);
  M.stop_deadline_us = gw_now_us() + gw.rt->conf->graceful_timeout_ms * 1000;
  struct timeval tv = {0, 100000};
  M.stop_check = event_new(gw.base, -1, EV_PERSIST, on_stop_check, NULL);
  event_add(M.stop_check, &tv);
}

static void reload(void) {
  char err[1024];
  struct gw_conf *conf = conf_load(M.config_path, err, sizeof err);
  if (conf == NULL) {
    log_error("reload failed, keeping the running configuration: %s", err);
    return;
  }
  struct gw_runtime *rt = runtime_build(conf, gw.rt, err, sizeof err);
  if (rt == NULL) {
    log_error("reload failed, keeping the running configuration: %s", err);
    conf_free(conf);
    return;
  }
  apply_logs(conf);
  setup_dns(conf);
  if (M.child == NULL && admin_start(conf, err, sizeof err) != 0) log_error("%s", err);
  runtime_switch(rt, gw.rt);
  /* Old-generation connections finish what they are doing, then close:
   * their clients come back to the new routes, servers and certificates. */
  down_shutdown_all(true);
  quic_shutdown_all(true);
  log_info("configuration reloaded (generation %llu)", (unsigned long long)rt->generation);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)what;
  (void)arg;
  if (sig == SIGHUP) {
    if (!gw.stopping) reload();
  } else {
    begin_stop((int)sig);
  }
}

/* ---------------------------------------------------------------------------
 * main.
 */
/* Steady traffic grows and shrinks the heap's top by a few hundred KB over
 * and over; glibc would hand it back to the kernel each time (trim) and
 * fault it in again (measured: 2.4% of the CPU of an HTTP/3 upload in page
 * faults under malloc). Keep what was needed once, and serve buffers below
 * 4 MiB from the heap rather than from fresh mmaps. */
static void tune_malloc(void) {
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  mallopt(M_TOP_PAD, 1 << 20);
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
}

int main(int argc, char **argv) {
  h3g_log_init("h3gate");
  tune_malloc();
  mem_cache_install();
  static const struct option opts[] = {
      {"config", required_argument, NULL, 'c'}, {"test", no_argument, NULL, 't'},
      {"version", no_argument, NULL, 'v'},      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  bool test_only = false;
  int opt;
  while ((opt = getopt_long(argc, argv, "c:tvh", opts, NULL)) != -1) {
    switch (opt) {
    case 'c': M.config_path = optarg; break;
    case 't': test_only = true; break;
    case 'v': printf("h3gate %s\n", H3GATE_VERSION); return 0;
    case 'h': fputs(usage_text, stdout); return 0;
    default: fputs(usage_text, stderr); return 2;
    }
  }
  if (M.config_path == NULL || optind != argc) {
    fputs(usage_text, stderr);
    return 2;
  }
  char err[1024];
  struct gw_conf *conf = conf_load(M.config_path, err, sizeof err);
  if (conf == NULL) {
    fprintf(stderr, "h3gate: %s\n", err);
    return 1;
  }
  if (test_only) {
    for (size_t i = 0; i < conf->n_listens; i++) {
      struct listener l;
      if (listener_prepare(&l, &conf->listens[i], conf, err, sizeof err) != 0) {
        fprintf(stderr, "h3gate: %s\n", err);
        return 1;
      }
      listener_free_tls(&l);
    }
    printf("h3gate: configuration file %s test is successful\n", M.config_path);
    conf_free(conf);
    return 0;
  }
  signal(SIGPIPE, SIG_IGN);
  /* Every client connection holds a file; so do backend connections, QUIC
   * sockets and logs. nginx warns likewise about worker_connections. */
  unsigned long nofile = h3g_raise_nofile_limit();
  if (nofile < (unsigned long)conf->max_connections + 256)
    log_warn("the open-files limit (%lu) is below what max_connections (%u) needs: accepting will rest "
             "when it runs out (raise LimitNOFILE= or ulimit -Hn, or lower limits.max_connections)",
             nofile, conf->max_connections);
  if (conf->workers > 1) return master_run(conf);
  return gateway_serve(conf, NULL);
}

static void on_master_gone(void) {
  log_error("the master process is gone: stopping");
  begin_stop(SIGTERM);
}

int gateway_serve(struct gw_conf *conf, const struct gw_child *child) {
  char err[1024];
  M.child = child;
  if (child) gw.worker_index = child->slot;
  if (gw_loop_init() != 0 || apply_logs(conf) != 0 || setup_dns(conf) != 0) return 1;
  /* Under a master, the master made the tables, one per process. */
  if (child == NULL && per_ip_prepare(1, conf) != 0) return 1;
  per_ip_attach(child ? (uint32_t)child->slot : 0);
  struct gw_runtime *rt = runtime_build(conf, NULL, err, sizeof err);
  if (rt == NULL) {
    log_error("%s", err);
    return 1;
  }
  /* Under a master, the master serves the admin listener for all. */
  if (child == NULL && admin_start(conf, err, sizeof err) != 0) {
    log_error("%s", err);
    return 1;
  }
  runtime_switch(rt, NULL);
  int sigs[] = {SIGTERM, SIGINT, SIGQUIT, SIGHUP};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
    struct event *ev = evsignal_new(gw.base, sigs[i], on_signal, NULL);
    evsignal_add(ev, NULL);
  }
  if (child) {
    master_link_start(child->ctl_fd, on_master_gone);
    log_info("worker %d serving", child->slot);
  } else {
    for (size_t i = 0; i < conf->n_listens; i++)
      log_info("listening on %s (%s)", conf->listens[i].address,
               conf->listens[i].tls ? "TLS: HTTP/2, HTTP/1.1" : "cleartext: HTTP/1.1, h2c");
    log_info("h3gate %s ready", H3GATE_VERSION);
  }
  event_base_dispatch(gw.base);
  log_info("stopped");
  return 0;
}
