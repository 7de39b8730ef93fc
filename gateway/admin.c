#include "admin.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "gw.h"
#include "log.h"
#include "metrics.h"
#include "sock.h"

enum { MAX_REQUEST = 8192 };
#define METRICS_TYPE "text/plain; version=0.0.4; charset=utf-8"

static struct {
  int fd;
  struct event *ev;
  char address[64];
  admin_metrics_fetch fetch; /* under a master: the workers' metrics, later */
} A = {.fd = -1};

static void respond(struct bufferevent *bev, int status, const char *type, struct evbuffer *body,
                    bool head) {
  struct evbuffer *out = bufferevent_get_output(bev);
  evbuffer_add_printf(out,
                      "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n"
                      "cache-control: no-store\r\nconnection: close\r\n\r\n",
                      status, status == 200 ? "OK" : status == 404 ? "Not Found" : "Bad Request",
                      type, evbuffer_get_length(body));
  if (!head) evbuffer_add_buffer(out, body);
}

static void on_written(struct bufferevent *bev, void *arg) {
  (void)arg;
  if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) bufferevent_free(bev);
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
  (void)what;
  (void)arg;
  bufferevent_free(bev);
}

static void on_read(struct bufferevent *bev, void *arg) {
  (void)arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
  if (end.pos < 0) {
    if (evbuffer_get_length(in) > MAX_REQUEST) bufferevent_free(bev);
    return;
  }
  char *line = evbuffer_readln(in, NULL, EVBUFFER_EOL_CRLF);
  char method[8] = "", path[256] = "";
  if (line) sscanf(line, "%7s %255s", method, path);
  free(line);
  char *q = strchr(path, '?');
  if (q) *q = '\0';
  struct evbuffer *body = evbuffer_new();
  bool head = strcmp(method, "HEAD") == 0;
  if (strcmp(method, "GET") != 0 && !head) {
    evbuffer_add_printf(body, "only GET and HEAD\n");
    respond(bev, 400, "text/plain", body, head);
  } else if (strcmp(path, "/healthz") == 0) {
    evbuffer_add_printf(body, gw.stopping ? "stopping\n" : "ok\n");
    respond(bev, 200, "text/plain", body, head);
  } else if (strcmp(path, "/metrics") == 0 && A.fetch) {
    /* No callbacks while the master gathers: the fetcher always answers,
     * within its own time limit, through admin_reply_metrics. */
    evbuffer_free(body);
    bufferevent_disable(bev, EV_READ);
    bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
    A.fetch(bev, head);
    return;
  } else if (strcmp(path, "/metrics") == 0) {
    metrics_render(body);
    respond(bev, 200, METRICS_TYPE, body, head);
  } else {
    evbuffer_add_printf(body, "try /healthz or /metrics\n");
    respond(bev, 404, "text/plain", body, head);
  }
  evbuffer_free(body);
  bufferevent_disable(bev, EV_READ);
  bufferevent_setcb(bev, NULL, on_written, on_event, NULL);
}

/* Out of file descriptors, the pending scrape stays in the backlog and the
 * socket stays readable: accepting rests a moment instead of spinning, as
 * the listeners' does. */
static void on_rest_over(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what, (void)arg;
  if (A.ev) event_add(A.ev, NULL);
}

static void rest(void) {
  struct timeval tv = {0, 500 * 1000};
  event_del(A.ev);
  if (event_base_once(gw.base, -1, EV_TIMEOUT, on_rest_over, NULL, &tv) != 0) event_add(A.ev, NULL);
}

static void on_accept(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  (void)arg;
  for (int i = 0; i < 16; i++) {
    int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) {
      if (h3g_out_of_files(errno)) rest();
      return;
    }
    struct bufferevent *bev = bufferevent_socket_new(gw.base, cfd, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
      close(cfd);
      continue;
    }
    bufferevent_setcb(bev, on_read, NULL, on_event, NULL);
    struct timeval tv = {10, 0};
    bufferevent_set_timeouts(bev, &tv, &tv);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
  }
}

void admin_reply_metrics(struct bufferevent *bev, bool head, struct evbuffer *body) {
  respond(bev, 200, METRICS_TYPE, body, head);
  bufferevent_setcb(bev, NULL, on_written, on_event, NULL);
  bufferevent_enable(bev, EV_WRITE);
}

void admin_set_metrics_fetch(admin_metrics_fetch fetch) { A.fetch = fetch; }

void admin_forget(void) {
  A.ev = NULL; /* the master's loop's: not ours to free */
  admin_stop();
  A.fetch = NULL;
}

void admin_stop(void) {
  if (A.ev) event_free(A.ev);
  if (A.fd >= 0) close(A.fd);
  A.ev = NULL;
  A.fd = -1;
  A.address[0] = '\0';
}

int admin_start(const struct gw_conf *conf, char *err, size_t err_size) {
  if (conf->admin == NULL) {
    admin_stop();
    return 0;
  }
  if (strcmp(conf->admin, A.address) == 0) return 0; /* unchanged on reload */
  struct h3g_hostport hp;
  const char *why;
  struct sockaddr_storage ss;
  socklen_t len;
  if (h3g_hostport_parse(conf->admin, &hp, &why) != 0 || h3g_hostport_to_sockaddr(&hp, &ss, &len) != 0) {
    snprintf(err, err_size, "admin address %s must be numeric HOST:PORT", conf->admin);
    return -1;
  }
  int fd = h3g_listen((struct sockaddr *)&ss, len, 64, false);
  if (fd < 0) {
    snprintf(err, err_size, "admin listener %s: %s", conf->admin, strerror(-fd));
    return -1;
  }
  admin_stop();
  A.fd = fd;
  A.ev = event_new(gw.base, fd, EV_READ | EV_PERSIST, on_accept, NULL);
  event_add(A.ev, NULL);
  snprintf(A.address, sizeof A.address, "%s", conf->admin);
  log_info("admin listener on %s (/healthz, /metrics)", conf->admin);
  return 0;
}
