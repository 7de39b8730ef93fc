/* The supervisor: binds the listening sockets, forks the worker processes
 * and keeps the pool alive, the gunicorn way.
 *
 * Each worker slot has its own SO_REUSEPORT sockets, which the supervisor
 * keeps open for the slot's whole life: when a worker exits or is replaced,
 * connections the kernel queued on its sockets wait for the next worker of
 * the slot instead of being reset. The supervisor never starts Python, so a
 * worker forked after SIGHUP imports the app's code afresh.
 *
 * Signals: TERM/INT graceful stop (QUIT: stop now), HUP rolling restart,
 * TTIN/TTOU one worker more/less, CHLD restarts crashed workers with
 * back-off. With --reload, a changed Python file starts the same rolling
 * restart.
 */
#include "supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "code_watch.h"
#include "log.h"
#include "sock.h"
#include "worker.h"

enum {
  MAX_SLOTS = 1024,
  MAX_CHILDREN = 2 * MAX_SLOTS,
  MAX_FDS = MAX_BINDS + 1,
  BACKOFF_MIN_MS = 100,
  BACKOFF_MAX_MS = 10000,
  STABLE_AFTER_MS = 5000, /* a worker that lived this long resets its back-off */
  KILL_GRACE_MS = 5000,   /* after the graceful timeout, before SIGKILL */
  /* --reload: an editor's save, or a git checkout, is a burst of events;
   * the restart waits for this much quiet. */
  RELOAD_SETTLE_MS = 200,
};

enum child_state {
  CHILD_STARTING, /* forked; importing the app and running lifespan startup */
  CHILD_SERVING,  /* said it is ready */
  CHILD_STOPPING, /* sent SIGTERM: draining */
};

struct child {
  pid_t pid;
  int slot;
  enum child_state state;
  int ready_fd; /* read end of the readiness pipe while starting */
  uint64_t started_ms;
};

struct slot {
  bool in_use;
  bool retiring; /* SIGTTOU: no restart; sockets close when its workers are gone */
  int fds[MAX_FDS];
  size_t n_fds;
  uint64_t backoff_ms;
  uint64_t restart_at_ms; /* 0: no restart pending */
};

static struct {
  const struct worker_options *opt;
  struct slot slots[MAX_SLOTS];
  int n_slots;
  struct child children[MAX_CHILDREN];
  int n_children;
  int uds_fd;
  uint16_t bound_ports[MAX_BINDS]; /* actual ports, so ":0" works with many slots */
  int sigfd;
  struct code_watch *watch; /* --reload */
  uint64_t reload_at_ms;    /* 0: no restart for changed code pending */
  bool stopping;
  bool initial_startup;
  uint64_t kill_at_ms;
  int exit_code;
} V = {.uds_fd = -1};

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------------------
 * Binding.
 */
static int resolve_bind(const char *text, struct sockaddr_storage *ss, socklen_t *len) {
  struct h3g_hostport hp;
  const char *why;
  if (h3g_hostport_parse(text, &hp, &why) != 0) {
    log_error("--bind %s: %s", text, why);
    return -1;
  }
  if (hp.is_unix) {
    log_error("--bind %s: use --uds for unix sockets", text);
    return -1;
  }
  int rc = h3g_hostport_to_sockaddr(&hp, ss, len);
  if (rc == -EAGAIN) {
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG}, *res;
    char port[8];
    snprintf(port, sizeof port, "%u", hp.port);
    int g = getaddrinfo(hp.host, port, &hints, &res);
    if (g != 0) {
      log_error("--bind %s: %s", text, gai_strerror(g));
      return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    rc = 0;
  }
  return rc;
}

static void set_port(struct sockaddr_storage *ss, uint16_t port) {
  if (ss->ss_family == AF_INET) ((struct sockaddr_in *)ss)->sin_port = htons(port);
  else if (ss->ss_family == AF_INET6) ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

/* Fails clearly when someone else holds the port: with SO_REUSEPORT alone a
 * stale server of the same user would silently share it. */
static int probe_port_free(const struct sockaddr_storage *ss, socklen_t len, const char *text) {
  int fd = h3g_listen((const struct sockaddr *)ss, len, 1, false);
  if (fd < 0) {
    log_error("cannot listen on %s: %s", text, strerror(-fd));
    return -1;
  }
  close(fd);
  return 0;
}

static int bind_slot(int idx) {
  struct slot *s = &V.slots[idx];
  s->n_fds = 0;
  for (int i = 0; i < V.opt->n_binds; i++) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (resolve_bind(V.opt->binds[i], &ss, &len) != 0) goto err_close;
    if (V.bound_ports[i]) set_port(&ss, V.bound_ports[i]);
    else if (probe_port_free(&ss, len, V.opt->binds[i]) != 0) goto err_close;
    int fd = h3g_listen((struct sockaddr *)&ss, len, V.opt->backlog, true);
    if (fd < 0) {
      log_error("cannot listen on %s: %s", V.opt->binds[i], strerror(-fd));
      goto err_close;
    }
    if (V.bound_ports[i] == 0) {
      struct sockaddr_storage got;
      socklen_t glen = sizeof got;
      getsockname(fd, (struct sockaddr *)&got, &glen);
      V.bound_ports[i] = h3g_sockaddr_port((struct sockaddr *)&got);
    }
    s->fds[s->n_fds++] = fd;
  }
  if (V.uds_fd >= 0) s->fds[s->n_fds++] = V.uds_fd; /* unix sockets can't reuseport: shared */
  s->in_use = true;
  s->retiring = false;
  s->backoff_ms = BACKOFF_MIN_MS;
  s->restart_at_ms = 0;
  return 0;

err_close:
  for (size_t i = 0; i < s->n_fds; i++) close(s->fds[i]);
  s->n_fds = 0;
  return -1;
}

static void close_slot(int idx) {
  struct slot *s = &V.slots[idx];
  for (size_t i = 0; i < s->n_fds; i++)
    if (s->fds[i] != V.uds_fd) close(s->fds[i]);
  s->n_fds = 0;
  s->in_use = false;
}

/* ---------------------------------------------------------------------------
 * Children.
 */
static struct child *find_child(pid_t pid) {
  for (int i = 0; i < V.n_children; i++)
    if (V.children[i].pid == pid) return &V.children[i];
  return NULL;
}

static void remove_child(struct child *c) {
  if (c->ready_fd >= 0) close(c->ready_fd);
  *c = V.children[--V.n_children];
}

static int slot_children(int slot, enum child_state state) {
  int n = 0;
  for (int i = 0; i < V.n_children; i++)
    if (V.children[i].slot == slot && V.children[i].state == state) n++;
  return n;
}

static void child_process(int slot, int ready_wr) {
  /* The worker gets default signal handling back; its loop installs its own. */
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  close(V.sigfd);
  if (V.watch) close(code_watch_fd(V.watch));
  for (int i = 0; i < V.n_children; i++)
    if (V.children[i].ready_fd >= 0) close(V.children[i].ready_fd);
  for (int i = 0; i < V.n_slots; i++) {
    if (i == slot || !V.slots[i].in_use) continue;
    for (size_t j = 0; j < V.slots[i].n_fds; j++)
      if (V.slots[i].fds[j] != V.uds_fd) close(V.slots[i].fds[j]);
  }
  struct slot *s = &V.slots[slot];
  int rc = worker_main(V.opt, s->fds, s->n_fds, ready_wr, (uint32_t)slot);
  fflush(NULL);
  _exit(rc);
}

static int spawn(int slot) {
  if (V.n_children == MAX_CHILDREN) return -1;
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) {
    log_error("pipe: %s", strerror(errno));
    return -1;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    log_error("fork: %s", strerror(errno));
    close(p[0]);
    close(p[1]);
    return -1;
  }
  if (pid == 0) {
    close(p[0]);
    child_process(slot, p[1]);
  }
  close(p[1]);
  V.children[V.n_children++] = (struct child){
      .pid = pid, .slot = slot, .state = CHILD_STARTING, .ready_fd = p[0], .started_ms = now_ms()};
  log_debug("started worker %d (pid %d)", slot, (int)pid);
  return 0;
}

static void stop_child(struct child *c, int sig) {
  if (c->state != CHILD_STOPPING) c->state = CHILD_STOPPING;
  kill(c->pid, sig);
}

/* A starting worker said it serves: retire whatever it replaces. */
static void child_ready(struct child *c) {
  c->state = CHILD_SERVING;
  close(c->ready_fd);
  c->ready_fd = -1;
  for (int i = 0; i < V.n_children; i++) {
    struct child *o = &V.children[i];
    if (o != c && o->slot == c->slot && o->state == CHILD_SERVING) {
      log_info("worker %d: new process %d serves; stopping %d", c->slot, (int)c->pid,
               (int)o->pid);
      stop_child(o, SIGTERM);
    }
  }
  if (V.initial_startup) {
    bool all = true;
    for (int i = 0; i < V.n_children; i++)
      if (V.children[i].state == CHILD_STARTING) all = false;
    if (all) {
      V.initial_startup = false;
      log_info("%d worker processes ready", V.n_slots);
    }
  }
}

static void begin_shutdown(int sig);

static void child_exited(struct child *c, int status) {
  int slot = c->slot;
  enum child_state state = c->state;
  uint64_t lived = now_ms() - c->started_ms;
  pid_t pid = c->pid;
  remove_child(c);
  char how[96];
  h3g_describe_exit(status, how, sizeof how);
  if (state == CHILD_STOPPING || V.stopping) {
    log_debug("worker %d (pid %d) %s", slot, (int)pid, how);
  } else if (state == CHILD_STARTING && WIFEXITED(status) &&
             (WEXITSTATUS(status) == 1 || WEXITSTATUS(status) == 3)) {
    /* The app could not load or refused to start (lifespan). */
    if (slot_children(slot, CHILD_SERVING) > 0) {
      log_error("worker %d: the new process %s; the old one keeps serving", slot, how);
    } else if (V.watch) {
      /* --reload: the fix is one save away, as with uvicorn --reload. */
      log_error("worker %d (pid %d) could not start (%s): waiting for the code to change", slot,
                (int)pid, how);
    } else {
      log_error("worker %d (pid %d) could not start (%s): stopping", slot, (int)pid, how);
      V.exit_code = WEXITSTATUS(status);
      begin_shutdown(SIGTERM);
    }
  } else if (slot_children(slot, CHILD_SERVING) + slot_children(slot, CHILD_STARTING) == 0 &&
             V.slots[slot].in_use && !V.slots[slot].retiring) {
    struct slot *s = &V.slots[slot];
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      /* --max-requests recycling: replace at once. */
      s->backoff_ms = BACKOFF_MIN_MS;
      s->restart_at_ms = now_ms();
      log_info("worker %d (pid %d) recycled; starting a new one", slot, (int)pid);
    } else {
      if (lived > STABLE_AFTER_MS) s->backoff_ms = BACKOFF_MIN_MS;
      s->restart_at_ms = now_ms() + s->backoff_ms;
      log_error("worker %d (pid %d) %s; restarting in %.1fs", slot, (int)pid, how,
                (double)s->backoff_ms / 1000);
      s->backoff_ms = s->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff_ms * 2;
    }
  }
  if (V.slots[slot].retiring && slot_children(slot, CHILD_SERVING) +
                                        slot_children(slot, CHILD_STARTING) +
                                        slot_children(slot, CHILD_STOPPING) == 0)
    close_slot(slot);
}

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    struct child *c = find_child(pid);
    if (c) child_exited(c, status);
  }
}

/* ---------------------------------------------------------------------------
 * Signals.
 */
/* A full stop takes no new connection: each is refused at once, and a
 * gateway tries again a second later, when a restarted pool may be up.
 * The sockets kept for a worker's successor queued them instead, accepted
 * by nobody and reset at exit: 80 GETs through the gateway held for 0.7 s,
 * then 40 of them a 502. The unix socket's file goes now too, not at exit,
 * when it may be a new server's. */
static void stop_listening(void) {
  for (int i = 0; i < V.n_slots; i++)
    if (V.slots[i].in_use) close_slot(i);
  if (V.uds_fd >= 0) {
    close(V.uds_fd);
    V.uds_fd = -1;
    unlink(V.opt->uds);
  }
}

static void begin_shutdown(int sig) {
  if (V.stopping) {
    if (sig == SIGQUIT || sig == SIGINT) V.kill_at_ms = now_ms(); /* second ^C: now */
    return;
  }
  V.stopping = true;
  V.kill_at_ms = now_ms() + (uint64_t)(V.opt->graceful_timeout_s * 1000) + KILL_GRACE_MS;
  if (sig == SIGQUIT) V.kill_at_ms = now_ms();
  log_info("stopping %d workers (%s)", V.n_children, strsignal(sig));
  for (int i = 0; i < V.n_children; i++) stop_child(&V.children[i], SIGTERM);
  stop_listening();
}

static void rolling_restart(const char *why) {
  log_info("%s: starting %d fresh workers with the app's current code", why, V.n_slots);
  /* Workers still starting from an earlier restart load older code: were
   * one of them ready after its successor, it would take over from it. */
  for (int i = 0; i < V.n_children; i++)
    if (V.children[i].state == CHILD_STARTING) stop_child(&V.children[i], SIGTERM);
  for (int i = 0; i < V.n_slots; i++)
    if (V.slots[i].in_use && !V.slots[i].retiring) spawn(i);
}

static void add_worker(void) {
  if (V.n_slots == MAX_SLOTS) return;
  int idx = V.n_slots;
  if (bind_slot(idx) != 0) return;
  V.n_slots++;
  log_info("SIGTTIN: adding worker %d (%d in all)", idx, V.n_slots);
  spawn(idx);
}

static void remove_worker(void) {
  int live = 0, last = -1;
  for (int i = 0; i < V.n_slots; i++)
    if (V.slots[i].in_use && !V.slots[i].retiring) live++, last = i;
  if (live <= 1) {
    log_warn("SIGTTOU: keeping the last worker");
    return;
  }
  V.slots[last].retiring = true;
  log_info("SIGTTOU: stopping worker %d (%d left)", last, live - 1);
  for (int i = 0; i < V.n_children; i++)
    if (V.children[i].slot == last) stop_child(&V.children[i], SIGTERM);
  if (last == V.n_slots - 1) V.n_slots--;
}

static void handle_signal(int sig) {
  switch (sig) {
  case SIGCHLD: reap(); break;
  case SIGTERM:
  case SIGINT:
  case SIGQUIT: begin_shutdown(sig); break;
  case SIGHUP: if (!V.stopping) rolling_restart("SIGHUP"); break;
  case SIGTTIN: if (!V.stopping) add_worker(); break;
  case SIGTTOU: if (!V.stopping) remove_worker(); break;
  }
}

/* ---------------------------------------------------------------------------
 * Main loop.
 */
static int poll_timeout(void) {
  uint64_t now = now_ms(), next = UINT64_MAX;
  for (int i = 0; i < V.n_slots; i++)
    if (V.slots[i].restart_at_ms && V.slots[i].restart_at_ms < next) next = V.slots[i].restart_at_ms;
  if (V.stopping && V.kill_at_ms < next) next = V.kill_at_ms;
  if (V.reload_at_ms && V.reload_at_ms < next) next = V.reload_at_ms;
  if (next == UINT64_MAX) return -1;
  return next <= now ? 0 : (int)(next - now);
}

static void run_timers(void) {
  uint64_t now = now_ms();
  if (V.stopping) {
    if (now >= V.kill_at_ms) {
      for (int i = 0; i < V.n_children; i++) {
        log_warn("worker %d (pid %d) did not stop in time: SIGKILL", V.children[i].slot,
                 (int)V.children[i].pid);
        kill(V.children[i].pid, SIGKILL);
      }
      V.kill_at_ms = now + 1000;
    }
    return;
  }
  if (V.reload_at_ms && V.reload_at_ms <= now) {
    V.reload_at_ms = 0;
    rolling_restart("--reload: a Python file changed");
  }
  for (int i = 0; i < V.n_slots; i++) {
    struct slot *s = &V.slots[i];
    if (s->restart_at_ms && s->restart_at_ms <= now) {
      s->restart_at_ms = 0;
      if (s->in_use && !s->retiring) spawn(i);
    }
  }
}

static void loop(void) {
  while (!(V.stopping && V.n_children == 0)) {
    struct pollfd pfd[2 + MAX_CHILDREN];
    struct child *who[2 + MAX_CHILDREN];
    int n = 0;
    pfd[n++] = (struct pollfd){.fd = V.sigfd, .events = POLLIN};
    /* -1 (ignored by poll) without --reload */
    pfd[n++] = (struct pollfd){.fd = V.watch ? code_watch_fd(V.watch) : -1, .events = POLLIN};
    for (int i = 0; i < V.n_children; i++) {
      if (V.children[i].ready_fd < 0) continue;
      who[n] = &V.children[i];
      pfd[n++] = (struct pollfd){.fd = V.children[i].ready_fd, .events = POLLIN};
    }
    int rc = poll(pfd, (nfds_t)n, poll_timeout());
    if (rc < 0 && errno != EINTR) {
      log_error("poll: %s", strerror(errno));
      break;
    }
    /* Readiness first (children may be removed by signal handling). */
    pid_t ready_pids[1 + MAX_CHILDREN];
    int n_ready = 0;
    for (int i = 2; i < n; i++) {
      if (!(pfd[i].revents & (POLLIN | POLLHUP))) continue;
      char byte;
      if (read(pfd[i].fd, &byte, 1) == 1 && byte == 'R') ready_pids[n_ready++] = who[i]->pid;
      else {
        close(who[i]->ready_fd); /* died before ready: SIGCHLD says how */
        who[i]->ready_fd = -1;
      }
    }
    for (int i = 0; i < n_ready; i++) {
      struct child *c = find_child(ready_pids[i]);
      if (c && c->state == CHILD_STARTING) child_ready(c);
    }
    if (pfd[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(V.sigfd, &si, sizeof si) == sizeof si) handle_signal((int)si.ssi_signo);
    }
    if ((pfd[1].revents & POLLIN) && code_watch_changed(V.watch) && !V.stopping)
      V.reload_at_ms = now_ms() + RELOAD_SETTLE_MS;
    run_timers();
  }
}

static void log_listening(void) {
  char where[512] = "";
  size_t off = 0;
  for (int i = 0; i < V.opt->n_binds; i++) {
    struct h3g_hostport hp;
    const char *why;
    h3g_hostport_parse(V.opt->binds[i], &hp, &why);
    off += (size_t)snprintf(where + off, sizeof where - off, "%shttp://%s%s%s:%u",
                            i ? ", " : "", strchr(hp.host, ':') ? "[" : "",
                            hp.host[0] ? hp.host : "0.0.0.0", strchr(hp.host, ':') ? "]" : "",
                            V.bound_ports[i]);
    if (off >= sizeof where) break;
  }
  if (V.opt->uds && off < sizeof where)
    snprintf(where + off, sizeof where - off, "%sunix:%s", off ? ", " : "", V.opt->uds);
  log_info("serving %s on %s (HTTP/2 h2c and HTTP/1.1) with %d workers", V.opt->app, where,
           V.opt->workers);
}

int supervisor_run(const struct worker_options *opt) {
  V.opt = opt;
  V.initial_startup = true;
  sigset_t mask;
  sigemptyset(&mask);
  int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGTTIN, SIGTTOU};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&mask, sigs[i]);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  signal(SIGPIPE, SIG_IGN);
  V.sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (V.sigfd < 0) {
    log_error("signalfd: %s", strerror(errno));
    return 1;
  }
  if (opt->uds) {
    struct h3g_hostport hp = {.is_unix = true};
    snprintf(hp.path, sizeof hp.path, "%s", opt->uds);
    struct sockaddr_storage ss;
    socklen_t len;
    h3g_hostport_to_sockaddr(&hp, &ss, &len);
    V.uds_fd = h3g_listen((struct sockaddr *)&ss, len, opt->backlog, false);
    if (V.uds_fd < 0) {
      log_error("cannot listen on unix:%s: %s", opt->uds, strerror(-V.uds_fd));
      return 1;
    }
  }
  for (int i = 0; i < opt->workers; i++) {
    if (bind_slot(i) != 0) return 1;
    V.n_slots++;
  }
  log_listening();
  if (opt->reload) V.watch = code_watch_new(opt->reload_dirs, opt->n_reload_dirs);
  for (int i = 0; i < V.n_slots; i++) spawn(i);
  loop();
  code_watch_free(V.watch);
  if (V.uds_fd >= 0) unlink(opt->uds); /* stop_listening has not (no signal stopped us) */
  log_info("stopped");
  return V.exit_code;
}
