/* The master: with workers > 1, binds every listening socket once per worker
 * slot, forks one gateway process per slot, keeps them alive, and serves the
 * admin listener with the sum of their /metrics.
 *
 * Each slot owns its sockets for the master's whole life, as in the
 * backend's supervisor: a restarted process gets the same ones, so the
 * kernel's SO_REUSEPORT groups never change order. HTTP/3 depends on that
 * order: a classic BPF program on each UDP group picks the socket whose
 * index is the first byte of the datagram's destination connection ID, and
 * every process starts its connection IDs with its slot
 * (quic_generate_cid). A client that changes address or port (migration,
 * NAT rebinding) still reaches the process that holds its connection.
 *
 * Signals: TERM/INT/QUIT are passed on, and the master leaves when every
 * worker has; HUP checks the file and passes it on (each worker reloads as a
 * lone gateway does); a worker that dies is restarted with back-off.
 *
 * The master and a worker talk over a socketpair, in lines:
 *   worker -> master  "R"                  ready to serve
 *   master -> worker  "M<seq>"             send your /metrics
 *   worker -> master  "<seq> <len>" + text the metrics text
 */
#include "master.h"

#include <errno.h>
#include <linux/filter.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "admin.h"
#include "fastrand.h"
#include "gw.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "per_ip.h"
#include "quic.h"

enum {
  BACKOFF_MIN_MS = 100,
  BACKOFF_MAX_MS = 10000,
  STABLE_AFTER_MS = 5000,  /* a worker that lived this long resets its back-off */
  KILL_GRACE_MS = 5000,    /* after the graceful timeout, before SIGKILL */
  METRICS_WAIT_MS = 1000,  /* a scrape answers with whoever replied by then */
  MAX_SCRAPES = 64,        /* scrapes waiting at once */
};

struct slot {
  int idx;
  int *tcp, *udp;          /* per listen entry; the master keeps them open */
  pid_t pid;               /* 0: not running */
  bool ready;
  struct bufferevent *ctl; /* to the running process */
  uint64_t started_ms, backoff_ms;
  struct event *restart;
  struct evbuffer *metrics; /* its reply to the current scrape round */
  bool replied;
};

static struct {
  struct gw_conf *conf;     /* the latest checked config: restarted workers get it */
  uint32_t n;
  struct slot slots[GW_MAX_WORKERS];
  bool *udp_off;            /* per listen entry: HTTP/3 could not start there (see bind_slots) */
  sigset_t old_mask;
  int sigfd;
  struct event *sig_ev, *kill_timer;
  bool stopping, all_ready_logged;
  int exit_code;
  /* the current /metrics round */
  uint64_t seq;
  bool gathering;
  uint32_t asked, replied;
  struct event *gather_timer;
  struct bufferevent *scrapes[MAX_SCRAPES];
  bool scrape_head[MAX_SCRAPES];
  size_t n_scrapes;
} V = {.sigfd = -1};

static uint64_t now_ms(void) { return gw_now_us() / 1000; }

/* ---------------------------------------------------------------------------
 * Sockets.
 */
/* Classic BPF for each UDP group: the socket index is the first byte of the
 * destination connection ID, modulo the number of workers. Short header:
 * the DCID starts at byte 1; long header: at byte 6 (flags, version, DCID
 * length). A client's first Initial carries a DCID of its own choosing, so
 * a random but steady worker gets it; that worker's connection IDs name it
 * from then on. A load past the end of a datagram ends the program with 0. */
static int attach_cid_steering(int fd, uint32_t workers) {
  struct sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 0),
      BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x80, 2, 0),
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 1),
      BPF_JUMP(BPF_JMP | BPF_JA, 1, 0, 0),
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 6),
      BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, workers),
      BPF_STMT(BPF_RET | BPF_A, 0),
  };
  struct sock_fprog prog = {.len = sizeof code / sizeof code[0], .filter = code};
  return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof prog);
}

/* HTTP/3 cannot run on listen entry i (a UDP problem, never a TCP one):
 * said once, by the master; the workers get no UDP socket for it and serve
 * TCP only. */
static void http3_off(size_t i, const char *address, const char *why) {
  quic_say_http3_off(address, why);
  V.udp_off[i] = true;
}

/* With SO_REUSEPORT alone, a stale gateway of the same user would silently
 * share the port: bind once without it first, so that fails clearly. A UDP
 * port that is taken turns HTTP/3 off there, as for a lone gateway. */
static int probe_ports(const struct gw_conf *conf) {
  char err[256];
  for (size_t i = 0; i < conf->n_listens; i++) {
    const struct conf_listen *cl = &conf->listens[i];
    int fd = listener_bind(cl, false, err, sizeof err);
    if (fd < 0) {
      log_error("%s", err);
      return -1;
    }
    close(fd);
    if (!cl->http3 || V.udp_off[i]) continue;
    fd = quic_udp_open(cl, conf, false, err, sizeof err);
    if (fd < 0) {
      http3_off(i, cl->address, err);
      continue;
    }
    close(fd);
  }
  return 0;
}

/* Without the shared 0-RTT anti-replay store, each process would map one
 * of its own, and a ClientHello replayed to another process would be
 * accepted again. As with a lone gateway, HTTP/3 is off and TCP serves. */
static void http3_off_everywhere(const struct gw_conf *conf, const char *error) {
  char why[256];
  snprintf(why, sizeof why, "no memory for the shared 0-RTT anti-replay store: %s", error);
  for (size_t i = 0; i < conf->n_listens; i++)
    if (conf->listens[i].http3) http3_off(i, conf->listens[i].address, why);
}

/* Slot s's UDP socket for listen entry i. Slot 0's carries the steering
 * program, which counts on all V.n sockets being there: if one cannot be
 * had, the ones bound so far are closed and HTTP/3 is off on that entry. */
static void bind_slot_udp(uint32_t s, size_t i, const struct gw_conf *conf) {
  const struct conf_listen *cl = &conf->listens[i];
  char why[256];
  int fd = quic_udp_open(cl, conf, true, why, sizeof why);
  V.slots[s].udp[i] = fd;
  bool ok = fd >= 0;
  /* Without steering, a connection's datagrams reach whichever process the
   * kernel hashes their addresses to, and a migrated client would land on
   * a process that does not know it. */
  if (ok && s == 0 && attach_cid_steering(fd, V.n) != 0) {
    snprintf(why, sizeof why, "cannot steer datagrams to worker processes by connection ID: %s",
             strerror(errno));
    ok = false;
  }
  if (ok) return;
  for (uint32_t k = 0; k <= s; k++) {
    if (V.slots[k].udp[i] >= 0) close(V.slots[k].udp[i]);
    V.slots[k].udp[i] = -1;
  }
  http3_off(i, cl->address, why);
}

static int bind_slots(const struct gw_conf *conf) {
  char err[256];
  for (uint32_t s = 0; s < V.n; s++) {
    struct slot *sl = &V.slots[s];
    sl->idx = (int)s;
    sl->tcp = calloc(conf->n_listens, sizeof *sl->tcp);
    sl->udp = calloc(conf->n_listens, sizeof *sl->udp);
    if (sl->tcp == NULL || sl->udp == NULL) {
      log_error("out of memory for the listening sockets");
      return -1;
    }
    for (size_t i = 0; i < conf->n_listens; i++) sl->tcp[i] = sl->udp[i] = -1; /* not fd 0 */
    for (size_t i = 0; i < conf->n_listens; i++) {
      const struct conf_listen *cl = &conf->listens[i];
      sl->tcp[i] = listener_bind(cl, true, err, sizeof err);
      if (sl->tcp[i] < 0) {
        log_error("%s", err); /* TCP is what the gateway is for: stop */
        return -1;
      }
      if (cl->http3 && !V.udp_off[i]) bind_slot_udp(s, i, conf);
    }
  }
  return 0;
}

static void close_slot_sockets(struct slot *sl, size_t n_listens) {
  for (size_t i = 0; sl->tcp && i < n_listens; i++) {
    if (sl->tcp[i] >= 0) close(sl->tcp[i]);
    if (sl->udp[i] >= 0) close(sl->udp[i]);
    sl->tcp[i] = sl->udp[i] = -1;
  }
}

/* ---------------------------------------------------------------------------
 * Worker processes.
 */
static void ctl_read(struct bufferevent *bev, void *arg);
static void ctl_event(struct bufferevent *bev, short what, void *arg);
static void gather_maybe_done(void);

/* In the forked process: drop everything of the master's, then serve. */
static void run_worker(struct slot *sl, int ctl_fd) {
  sigprocmask(SIG_SETMASK, &V.old_mask, NULL);
  close(V.sigfd);
  admin_forget();
  for (uint32_t s = 0; s < V.n; s++) {
    struct slot *o = &V.slots[s];
    if (o->ctl) close(bufferevent_getfd(o->ctl)); /* the master's loop is not ours to touch */
    if (o != sl) close_slot_sockets(o, V.conf->n_listens);
  }
  fastrand_reseed();
  struct gw_child child = {.slot = sl->idx, .tcp_fds = sl->tcp, .udp_fds = sl->udp, .ctl_fd = ctl_fd};
  int rc = gateway_serve(V.conf, &child);
  fflush(NULL);
  _exit(rc);
}

/* Starts the slot again after its back-off, which then doubles (to 10 s). */
static void restart_later(struct slot *sl) {
  struct timeval tv = {(time_t)(sl->backoff_ms / 1000), (suseconds_t)(sl->backoff_ms % 1000) * 1000};
  evtimer_add(sl->restart, &tv);
  sl->backoff_ms = sl->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : sl->backoff_ms * 2;
}

/* A worker could not even be forked: the slot must not stay empty. */
static void retry_later(struct slot *sl, const char *what) {
  log_error("worker %d: %s: %s; trying again in %.1fs", sl->idx, what, strerror(errno),
            (double)sl->backoff_ms / 1000);
  restart_later(sl);
}

static void spawn(struct slot *sl) {
  int sp[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) {
    retry_later(sl, "socketpair");
    return;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    retry_later(sl, "fork");
    close(sp[0]);
    close(sp[1]);
    return;
  }
  if (pid == 0) {
    close(sp[0]);
    run_worker(sl, sp[1]);
  }
  close(sp[1]);
  evutil_make_socket_nonblocking(sp[0]);
  sl->pid = pid;
  sl->ready = false;
  sl->started_ms = now_ms();
  sl->ctl = bufferevent_socket_new(gw.base, sp[0], BEV_OPT_CLOSE_ON_FREE);
  bufferevent_setcb(sl->ctl, ctl_read, NULL, ctl_event, sl);
  bufferevent_enable(sl->ctl, EV_READ | EV_WRITE);
  log_debug("worker %d started (pid %d)", sl->idx, (int)pid);
}

static void on_restart(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct slot *sl = arg;
  if (!V.stopping && sl->pid == 0) spawn(sl);
}

static void drop_ctl(struct slot *sl) {
  if (sl->ctl) bufferevent_free(sl->ctl);
  sl->ctl = NULL;
  if (V.gathering && !sl->replied) { /* it will not answer this round */
    sl->replied = true;
    V.replied++;
    gather_maybe_done();
  }
}

static void begin_stop(int sig);

static void worker_exited(struct slot *sl, int status) {
  char how[96];
  h3g_describe_exit(status, how, sizeof how);
  pid_t pid = sl->pid;
  bool was_ready = sl->ready;
  uint64_t lived = now_ms() - sl->started_ms;
  sl->pid = 0;
  sl->ready = false;
  drop_ctl(sl);
  if (V.stopping) {
    log_debug("worker %d (pid %d) %s", sl->idx, (int)pid, how);
    return;
  }
  if (!was_ready && !V.all_ready_logged) {
    log_error("worker %d (pid %d) could not start (%s): stopping", sl->idx, (int)pid, how);
    V.exit_code = 1;
    begin_stop(SIGTERM);
    return;
  }
  if (lived > STABLE_AFTER_MS) sl->backoff_ms = BACKOFF_MIN_MS;
  log_error("worker %d (pid %d) %s; restarting in %.1fs", sl->idx, (int)pid, how,
            (double)sl->backoff_ms / 1000);
  restart_later(sl);
}

static bool any_running(void) {
  for (uint32_t s = 0; s < V.n; s++)
    if (V.slots[s].pid) return true;
  return false;
}

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
    for (uint32_t s = 0; s < V.n; s++)
      if (V.slots[s].pid == pid) worker_exited(&V.slots[s], status);
  if (V.stopping && !any_running()) event_base_loopexit(gw.base, NULL);
}

static void worker_ready(struct slot *sl) {
  sl->ready = true;
  if (V.all_ready_logged) {
    log_info("worker %d (pid %d) serving again", sl->idx, (int)sl->pid);
    return;
  }
  for (uint32_t s = 0; s < V.n; s++)
    if (!V.slots[s].ready) return;
  V.all_ready_logged = true;
  for (size_t i = 0; i < V.conf->n_listens; i++)
    log_info("listening on %s (%s)", V.conf->listens[i].address,
             V.conf->listens[i].tls ? "TLS: HTTP/2, HTTP/1.1" : "cleartext: HTTP/1.1, h2c");
  log_info("h3gate ready: %u worker processes", V.n);
}

/* ---------------------------------------------------------------------------
 * /metrics: ask every worker, answer with the sum.
 */
static void gather_finish(void) {
  const char *texts[GW_MAX_WORKERS];
  size_t lens[GW_MAX_WORKERS], n = 0;
  for (uint32_t s = 0; s < V.n; s++) {
    struct slot *sl = &V.slots[s];
    if (sl->metrics == NULL) continue;
    lens[n] = evbuffer_get_length(sl->metrics);
    texts[n++] = (const char *)evbuffer_pullup(sl->metrics, -1);
  }
  struct evbuffer *body = evbuffer_new();
  evbuffer_add_printf(body,
                      "# HELP h3gate_workers Gateway worker processes: configured, and answering this scrape.\n"
                      "# TYPE h3gate_workers gauge\n"
                      "h3gate_workers{state=\"configured\"} %u\nh3gate_workers{state=\"answered\"} %zu\n",
                      V.n, n);
  metrics_merge(body, texts, lens, n);
  for (size_t i = 0; i < V.n_scrapes; i++) {
    struct evbuffer *copy = evbuffer_new();
    evbuffer_add(copy, evbuffer_pullup(body, -1), evbuffer_get_length(body));
    admin_reply_metrics(V.scrapes[i], V.scrape_head[i], copy);
    evbuffer_free(copy);
  }
  evbuffer_free(body);
  V.n_scrapes = 0;
  for (uint32_t s = 0; s < V.n; s++) {
    if (V.slots[s].metrics) evbuffer_free(V.slots[s].metrics);
    V.slots[s].metrics = NULL;
  }
  V.gathering = false;
  evtimer_del(V.gather_timer);
}

static void gather_maybe_done(void) {
  if (V.gathering && V.replied >= V.asked) gather_finish();
}

static void on_gather_timeout(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
  log_warn("/metrics: %u of %u workers answered within %d ms", V.replied, V.asked, METRICS_WAIT_MS);
  gather_finish();
}

static void fetch_metrics(struct bufferevent *bev, bool head) {
  if (V.n_scrapes == MAX_SCRAPES) {
    bufferevent_free(bev); /* a scrape storm: the excess is dropped */
    return;
  }
  V.scrapes[V.n_scrapes] = bev;
  V.scrape_head[V.n_scrapes++] = head;
  if (V.gathering) return; /* joins the round in progress */
  V.gathering = true;
  V.seq++;
  V.asked = V.replied = 0;
  for (uint32_t s = 0; s < V.n; s++) {
    struct slot *sl = &V.slots[s];
    sl->replied = true;
    if (sl->ctl == NULL || !sl->ready) continue;
    sl->replied = false;
    V.asked++;
    evbuffer_add_printf(bufferevent_get_output(sl->ctl), "M%llu\n", (unsigned long long)V.seq);
  }
  struct timeval tv = {0, METRICS_WAIT_MS * 1000};
  evtimer_add(V.gather_timer, &tv);
  gather_maybe_done();
}

/* One line or one metrics reply from a worker; false when more bytes are needed. */
static bool ctl_take_message(struct slot *sl, struct evbuffer *in) {
  struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_LF);
  if (eol.pos < 0) return false;
  char line[64] = "";
  size_t line_len = (size_t)eol.pos < sizeof line - 1 ? (size_t)eol.pos : sizeof line - 1;
  evbuffer_copyout(in, line, line_len);
  if (strcmp(line, "R") == 0) {
    evbuffer_drain(in, (size_t)eol.pos + 1);
    worker_ready(sl);
    return true;
  }
  unsigned long long seq;
  size_t len;
  if (sscanf(line, "%llu %zu", &seq, &len) != 2) {
    log_error("worker %d: unexpected message on the control socket", sl->idx);
    evbuffer_drain(in, evbuffer_get_length(in));
    return false;
  }
  if (evbuffer_get_length(in) < (size_t)eol.pos + 1 + len) return false;
  evbuffer_drain(in, (size_t)eol.pos + 1);
  if (!V.gathering || seq != V.seq || sl->replied) { /* a late answer to an old round */
    evbuffer_drain(in, len);
    return true;
  }
  sl->metrics = evbuffer_new();
  evbuffer_remove_buffer(in, sl->metrics, len);
  sl->replied = true;
  V.replied++;
  gather_maybe_done();
  return true;
}

static void ctl_read(struct bufferevent *bev, void *arg) {
  struct slot *sl = arg;
  while (sl->ctl == bev && ctl_take_message(sl, bufferevent_get_input(bev))) {
  }
}

static void ctl_event(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  (void)what;
  drop_ctl(arg); /* the process is going; SIGCHLD tells how */
}

/* ---------------------------------------------------------------------------
 * Signals.
 */
static void signal_workers(int sig) {
  for (uint32_t s = 0; s < V.n; s++)
    if (V.slots[s].pid) kill(V.slots[s].pid, sig);
}

static void on_kill_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
  for (uint32_t s = 0; s < V.n; s++)
    if (V.slots[s].pid) log_warn("worker %u (pid %d) did not stop in time: SIGKILL", s, (int)V.slots[s].pid);
  signal_workers(SIGKILL);
}

static void begin_stop(int sig) {
  if (V.stopping) {
    if (sig == SIGINT || sig == SIGQUIT) signal_workers(sig); /* again: now */
    return;
  }
  V.stopping = gw.stopping = true;
  log_info("%s: stopping %u workers", strsignal(sig), V.n);
  admin_stop(); /* as a lone gateway does */
  signal_workers(sig);
  /* Nobody accepts any more: the kernel must refuse new connections rather
   * than queue them on sockets only the master still holds. */
  for (uint32_t s = 0; s < V.n; s++) {
    close_slot_sockets(&V.slots[s], V.conf->n_listens);
    evtimer_del(V.slots[s].restart);
  }
  uint64_t ms = V.conf->graceful_timeout_ms + KILL_GRACE_MS;
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
  V.kill_timer = evtimer_new(gw.base, on_kill_timer, NULL);
  evtimer_add(V.kill_timer, &tv);
  if (!any_running()) event_base_loopexit(gw.base, NULL);
}

static bool same_listeners(const struct gw_conf *a, const struct gw_conf *b) {
  if (a->n_listens != b->n_listens) return false;
  for (size_t i = 0; i < a->n_listens; i++) {
    const struct conf_listen *x = &a->listens[i], *y = &b->listens[i];
    if (strcmp(x->address, y->address) != 0 || x->tls != y->tls || x->http3 != y->http3 ||
        x->http3_port != y->http3_port)
      return false;
  }
  return true;
}

/* SIGHUP: the workers reload the file themselves; the master checks it
 * first, so a bad file is reported once and reaches nobody. */
static void reload(void) {
  char err[1024];
  struct gw_conf *conf = conf_load(V.conf->path, err, sizeof err);
  if (conf == NULL) {
    log_error("reload failed, keeping the running configuration: %s", err);
    return;
  }
  if (!same_listeners(conf, V.conf) || conf->workers != V.n) {
    log_error("reload refused, keeping the running configuration: with workers > 1, the listen "
              "entries and the number of workers change only with a restart");
    conf_free(conf);
    return;
  }
  for (size_t i = 0; i < conf->n_listens; i++) {
    struct listener l;
    if (listener_prepare(&l, &conf->listens[i], conf, err, sizeof err) != 0) {
      log_error("reload failed, keeping the running configuration: %s", err);
      conf_free(conf);
      return;
    }
    listener_free_tls(&l);
  }
  h3g_log_min_level = conf->log_level;
  if (h3g_log_open(conf->error_log) != 0) log_error("cannot open error log %s", conf->error_log);
  if (admin_start(conf, err, sizeof err) != 0) log_error("%s", err);
  conf_free(V.conf);
  V.conf = conf;
  log_info("SIGHUP: configuration checked; the workers reload it");
  signal_workers(SIGHUP);
}

static void on_signal(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  (void)arg;
  struct signalfd_siginfo si;
  while (read(fd, &si, sizeof si) == (ssize_t)sizeof si) {
    int sig = (int)si.ssi_signo;
    if (sig == SIGCHLD) reap();
    else if (sig == SIGHUP) {
      if (!V.stopping) reload();
    } else {
      begin_stop(sig);
    }
  }
}

static int setup_signals(void) {
  sigset_t mask;
  sigemptyset(&mask);
  int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&mask, sigs[i]);
  sigprocmask(SIG_BLOCK, &mask, &V.old_mask);
  V.sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (V.sigfd < 0) {
    log_error("signalfd: %s", strerror(errno));
    return -1;
  }
  V.sig_ev = event_new(gw.base, V.sigfd, EV_READ | EV_PERSIST, on_signal, NULL);
  return event_add(V.sig_ev, NULL);
}

/* ---------------------------------------------------------------------------
 * Running.
 */
int master_run(struct gw_conf *conf) {
  char err[1024];
  V.conf = conf;
  V.n = conf->workers;
  h3g_log_min_level = conf->log_level;
  if (h3g_log_open(conf->error_log) != 0) {
    log_error("cannot open error log %s", conf->error_log);
    return 1;
  }
  if (gw_loop_init() != 0 || setup_signals() != 0) return 1;
  if (admin_start(conf, err, sizeof err) != 0) {
    log_error("%s", err);
    return 1;
  }
  V.udp_off = calloc(conf->n_listens, sizeof *V.udp_off);
  if (V.udp_off == NULL) {
    log_error("out of memory");
    return 1;
  }
  /* Made before the fork, so every worker keys tokens and tickets alike. */
  if (quic_shared_prepare(conf) != 0) http3_off_everywhere(conf, strerror(errno));
  if (listener_share_ticket_keys() != 0) {
    log_error("cannot make session-ticket keys: %s", strerror(errno));
    return 1;
  }
  if (per_ip_prepare(V.n, conf) != 0) return 1;
  if (probe_ports(conf) != 0 || bind_slots(conf) != 0) return 1;
  admin_set_metrics_fetch(fetch_metrics);
  V.gather_timer = evtimer_new(gw.base, on_gather_timeout, NULL);
  for (uint32_t s = 0; s < V.n; s++) {
    V.slots[s].backoff_ms = BACKOFF_MIN_MS;
    V.slots[s].restart = evtimer_new(gw.base, on_restart, &V.slots[s]);
    spawn(&V.slots[s]);
  }
  event_base_dispatch(gw.base);
  admin_stop();
  for (uint32_t s = 0; s < V.n; s++) {
    struct slot *sl = &V.slots[s];
    close_slot_sockets(sl, V.conf->n_listens); /* conf itself may be gone: SIGHUP replaces it */
    if (sl->ctl) bufferevent_free(sl->ctl);
    if (sl->restart) event_free(sl->restart);
    free(sl->tcp);
    free(sl->udp);
  }
  free(V.udp_off);
  if (V.kill_timer) event_free(V.kill_timer);
  if (V.gather_timer) event_free(V.gather_timer);
  if (V.sig_ev) event_free(V.sig_ev);
  conf_free(V.conf);
  log_info("stopped");
  return V.exit_code;
}

/* ---------------------------------------------------------------------------
 * The worker's end of the control socket.
 */
static struct {
  struct bufferevent *bev;
  void (*on_gone)(void);
} L;

static void link_read(struct bufferevent *bev, void *arg) {
  (void)arg;
  char *line;
  while ((line = evbuffer_readln(bufferevent_get_input(bev), NULL, EVBUFFER_EOL_LF)) != NULL) {
    if (line[0] == 'M') {
      struct evbuffer *text = evbuffer_new();
      metrics_render(text);
      struct evbuffer *out = bufferevent_get_output(bev);
      evbuffer_add_printf(out, "%s %zu\n", line + 1, evbuffer_get_length(text));
      evbuffer_add_buffer(out, text);
      evbuffer_free(text);
    }
    free(line);
  }
}

static void link_event(struct bufferevent *bev, short what, void *arg) {
  (void)what;
  (void)arg;
  bufferevent_free(bev);
  L.bev = NULL;
  L.on_gone();
}

void master_link_start(int ctl_fd, void (*on_gone)(void)) {
  evutil_make_socket_nonblocking(ctl_fd);
  L.on_gone = on_gone;
  L.bev = bufferevent_socket_new(gw.base, ctl_fd, BEV_OPT_CLOSE_ON_FREE);
  bufferevent_setcb(L.bev, link_read, NULL, link_event, NULL);
  bufferevent_enable(L.bev, EV_READ | EV_WRITE);
  evbuffer_add(bufferevent_get_output(L.bev), "R\n", 2);
}
