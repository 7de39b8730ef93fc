/* wsload: a WebSocket echo load client over HTTP/1.1 (ws://, cleartext),
 * for comparing proxies on the same backend. Each of -c connections does
 * the handshake, then sends -n messages of -s bytes one at a time (masked,
 * as clients must), checks each echo byte for byte and records its round
 * trip, then closes with 1000.
 *
 *   wsload -c 100 -n 2000 -s 64 ws://127.0.0.1:8080/echo
 *
 * It drives its sockets with epoll directly: a round trip costs the client
 * one write and one read, where a bufferevent added two epoll_ctl calls and
 * an ioctl. On a small machine the client shares the CPUs with the proxy
 * under test, so the less it spends the more the figures measure the proxy.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "latency.h"
#include "ws_frame.h"

static struct {
  int conns, messages, timeout_s;
  size_t size;
  char host[256], port[8], path[1024];
} O = {.conns = 1, .messages = 100, .size = 64, .timeout_s = 60};

enum { HANDSHAKE_MAX = 4096, READ_CHUNK = 64 * 1024 };

struct client {
  int fd;
  bool connected, upgraded, done, want_out;
  int echoed;
  uint64_t msg_bytes, sent_ns;
  bool bad;
  struct ws_reader reader;
  char handshake[HANDSHAKE_MAX];
  size_t handshake_len;
  uint8_t *out; /* what the socket did not take yet (large messages only) */
  size_t out_len, out_off;
};

static struct {
  int epfd;
  uint64_t *lat;
  size_t n_lat;
  int finished, failed;
  uint64_t echoed;
  uint8_t *payload, *frame;
} G;

static uint8_t pattern(int msg, size_t i) { return (uint8_t)(msg * 31 + (int)i); }

static void finish(struct client *c, bool ok) {
  if (c->done) return;
  c->done = true;
  if (!ok) G.failed++;
  close(c->fd); /* also leaves the epoll set */
  c->fd = -1;
  free(c->out);
  c->out = NULL;
  G.finished++;
}

static void watch(struct client *c, bool want_out) {
  struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
  if (epoll_ctl(G.epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) finish(c, false);
  c->want_out = want_out;
}

/* Writes what is left of c->out; waits for EPOLLOUT when the socket is full. */
static void flush_out(struct client *c) {
  while (c->out_off < c->out_len) {
    ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      if (!c->want_out) watch(c, true);
      return;
    }
    if (n < 0) {
      finish(c, false);
      return;
    }
    c->out_off += (size_t)n;
  }
  free(c->out);
  c->out = NULL, c->out_len = c->out_off = 0;
  if (c->want_out) watch(c, false);
}

/* Writes at once; only what the socket does not take is copied and kept.
 * A client sends only after its previous bytes are gone. */
static void send_bytes(struct client *c, const uint8_t *data, size_t len) {
  ssize_t n;
  do n = write(c->fd, data, len);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN) {
    finish(c, false);
    return;
  }
  size_t sent = n < 0 ? 0 : (size_t)n;
  if (sent < len) {
    c->out = malloc(len - sent);
    memcpy(c->out, data + sent, len - sent);
    c->out_len = len - sent, c->out_off = 0;
    flush_out(c);
  } else if (c->want_out) {
    watch(c, false);
  }
}

static void send_frame(struct client *c, uint8_t opcode, const uint8_t *payload, size_t len) {
  uint8_t mask[4];
  uint32_t r = (uint32_t)rand();
  memcpy(mask, &r, 4);
  size_t h = ws_write_header(G.frame, true, opcode, len, mask);
  memcpy(G.frame + h, payload, len);
  ws_mask(G.frame + h, len, mask, 0);
  send_bytes(c, G.frame, h + len);
}

static void send_next(struct client *c) {
  for (size_t i = 0; i < O.size; i++) G.payload[i] = pattern(c->echoed, i);
  c->msg_bytes = 0;
  c->sent_ns = latency_now_ns();
  send_frame(c, WS_BINARY, G.payload, O.size);
}

static void on_message_end(struct client *c) {
  if (c->bad || c->msg_bytes != O.size) {
    finish(c, false);
    return;
  }
  G.lat[G.n_lat++] = latency_now_ns() - c->sent_ns;
  G.echoed++;
  if (++c->echoed < O.messages) {
    send_next(c);
  } else {
    static const uint8_t normal[2] = {1000 >> 8, 1000 & 0xff};
    send_frame(c, WS_CLOSE, normal, 2);
  }
}

static void on_event_frame(struct client *c, const struct ws_event *ev) {
  switch (ev->type) {
  case WS_EV_DATA:
    for (size_t i = 0; i < ev->len; i++)
      if (ev->data[i] != pattern(c->echoed, c->msg_bytes + i)) c->bad = true;
    c->msg_bytes += ev->len;
    break;
  case WS_EV_MESSAGE_END: on_message_end(c); break;
  case WS_EV_CLOSE: finish(c, c->echoed == O.messages); break;
  case WS_EV_ERROR: finish(c, false); break;
  default: break;
  }
}

static void feed_frames(struct client *c, uint8_t *data, size_t len) {
  size_t used_total = 0;
  while (!c->done) {
    struct ws_event ev;
    size_t used = ws_reader_next(&c->reader, data + used_total, len - used_total, &ev);
    used_total += used;
    if (ev.type == WS_EV_NONE && used == 0) break;
    on_event_frame(c, &ev);
  }
}

/* Collects the response head; returns the bytes after it, or -1 while it is
 * incomplete (or refused, which finishes the client). */
static long read_handshake(struct client *c, const uint8_t *data, size_t len) {
  size_t room = sizeof c->handshake - 1 - c->handshake_len, take = len < room ? len : room;
  memcpy(c->handshake + c->handshake_len, data, take);
  c->handshake_len += take;
  c->handshake[c->handshake_len] = '\0';
  char *end = strstr(c->handshake, "\r\n\r\n");
  if (end == NULL) {
    if (c->handshake_len == sizeof c->handshake - 1) finish(c, false);
    return -1;
  }
  if (strncmp(c->handshake, "HTTP/1.1 101", 12) != 0) {
    fprintf(stderr, "handshake refused: %.12s\n", c->handshake);
    finish(c, false);
    return -1;
  }
  c->upgraded = true;
  size_t head = (size_t)(end + 4 - c->handshake), before = c->handshake_len - take;
  send_next(c);
  return (long)(head - before);
}

static void on_readable(struct client *c) {
  static uint8_t buf[READ_CHUNK];
  for (;;) {
    ssize_t n = read(c->fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {
      finish(c, c->echoed == O.messages);
      return;
    }
    size_t off = 0;
    if (!c->upgraded) {
      long after = read_handshake(c, buf, (size_t)n);
      if (after < 0) return;
      off = (size_t)after;
    }
    feed_frames(c, buf + off, (size_t)n - off);
    if (c->done || (size_t)n < sizeof buf) return;
  }
}

static void on_connected(struct client *c) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
    fprintf(stderr, "connect: %s\n", strerror(err));
    finish(c, false);
    return;
  }
  c->connected = true;
  int n = snprintf((char *)G.frame, WS_MAX_HDR + O.size + 2048,
                   "GET %s HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n",
                   O.path, O.host, O.port);
  c->want_out = true; /* connect waited for EPOLLOUT */
  send_bytes(c, G.frame, (size_t)n);
}

static void on_ready(struct client *c, uint32_t events) {
  if (!c->connected) {
    on_connected(c);
    return;
  }
  if ((events & EPOLLOUT) && c->out != NULL) flush_out(c);
  if (!c->done && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_readable(c);
}

static int start_client(struct client *c, const struct addrinfo *ai) {
  ws_reader_init(&c->reader, false, 1ull << 31);
  c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) return -1;
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) return -1;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  return epoll_ctl(G.epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static int parse_url(const char *url) {
  if (strncmp(url, "ws://", 5) != 0) return -1;
  const char *p = url + 5, *slash = strchr(p, '/'), *colon = strchr(p, ':');
  if (colon == NULL || (slash && colon > slash)) return -1;
  snprintf(O.host, sizeof O.host, "%.*s", (int)(colon - p), p);
  snprintf(O.port, sizeof O.port, "%.*s", (int)(slash ? slash - colon - 1 : (long)strlen(colon + 1)),
           colon + 1);
  snprintf(O.path, sizeof O.path, "%s", slash ? slash : "/");
  return 0;
}

static double pct(double p) { return latency_ms(G.lat, G.n_lat, p); }

static void run(uint64_t deadline_ns) {
  struct epoll_event evs[256];
  while (G.finished < O.conns && latency_now_ns() < deadline_ns) {
    int n = epoll_wait(G.epfd, evs, 256, 100);
    for (int i = 0; i < n; i++) {
      struct client *c = evs[i].data.ptr;
      if (!c->done) on_ready(c, evs[i].events);
    }
  }
}

/* The client's own CPU: the benchmark uses it to tell how much of a small
 * machine the load itself takes, and the kernel time is a measure of the
 * socket work any proxy must mirror (one read and one write per message on
 * its side of each connection). */
static void print_own_cpu(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return;
  printf("client cpu s: user %.3f system %.3f\n", (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
         (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
}

static void usage(void) {
  fprintf(stderr, "usage: wsload [-c CONNS] [-n MESSAGES] [-s BYTES] [-t SECONDS] ws://HOST:PORT/PATH\n");
  exit(2);
}

int main(int argc, char **argv) {
  int o;
  while ((o = getopt(argc, argv, "c:n:s:t:")) != -1) {
    switch (o) {
    case 'c': O.conns = atoi(optarg); break;
    case 'n': O.messages = atoi(optarg); break;
    case 's': O.size = strtoull(optarg, NULL, 10); break;
    case 't': O.timeout_s = atoi(optarg); break;
    default: usage();
    }
  }
  if (optind != argc - 1 || parse_url(argv[optind]) != 0 || O.conns < 1 || O.messages < 1) usage();
  G.epfd = epoll_create1(EPOLL_CLOEXEC);
  G.lat = calloc((size_t)O.conns * (size_t)O.messages, sizeof *G.lat);
  G.payload = malloc(O.size ? O.size : 1);
  G.frame = malloc(WS_MAX_HDR + O.size + 2048); /* also holds the handshake request */
  struct client *clients = calloc((size_t)O.conns, sizeof *clients);
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
  if (getaddrinfo(O.host, O.port, &hints, &ai) != 0) {
    fprintf(stderr, "cannot resolve %s\n", O.host);
    return 2;
  }
  uint64_t start = latency_now_ns();
  for (int i = 0; i < O.conns; i++)
    if (start_client(&clients[i], ai) != 0) finish(&clients[i], false);
  freeaddrinfo(ai);
  run(start + (uint64_t)O.timeout_s * 1000000000ull);
  double secs = (double)(latency_now_ns() - start) / 1e9;
  int unfinished = O.conns - G.finished;
  latency_sort(G.lat, G.n_lat);
  printf("finished in %.2fs: %llu messages of %zu bytes echoed, %.0f msg/s\n", secs,
         (unsigned long long)G.echoed, O.size, (double)G.echoed / secs);
  printf("connections: %d, failed %d, unfinished %d\n", O.conns, G.failed, unfinished);
  printf("round trip ms: p50 %.3f p90 %.3f p99 %.3f max %.3f\n", pct(0.5), pct(0.9), pct(0.99),
         pct(1));
  print_own_cpu();
  for (int i = 0; i < O.conns; i++) { /* those the time limit cut short */
    if (clients[i].done) continue;
    close(clients[i].fd);
    free(clients[i].out);
  }
  free(clients);
  free(G.lat);
  free(G.payload);
  free(G.frame);
  close(G.epfd);
  return G.failed == 0 && unfinished == 0 ? 0 : 1;
}
