/* wsload: a WebSocket echo load client over HTTP/1.1 (ws://, cleartext),
 * for comparing proxies on the same backend. Each of -c connections does
 * the handshake, then sends -n messages of -s bytes one at a time (masked,
 * as clients must), checks each echo byte for byte and records its round
 * trip, then closes with 1000.
 *
 *   wsload -c 100 -n 2000 -s 64 ws://127.0.0.1:8080/echo
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "latency.h"
#include "ws_frame.h"

static struct {
  int conns, messages, timeout_s;
  size_t size;
  char host[256], port[8], path[1024];
} O = {.conns = 1, .messages = 100, .size = 64, .timeout_s = 60};

struct client {
  struct bufferevent *bev;
  bool upgraded, done;
  int echoed;
  uint64_t msg_bytes, sent_ns;
  bool bad;
  struct ws_reader reader;
};

static struct {
  struct event_base *base;
  uint64_t *lat;
  size_t n_lat;
  int finished, failed;
  uint64_t echoed;
} G;

static uint8_t pattern(int msg, size_t i) { return (uint8_t)(msg * 31 + (int)i); }

static void finish(struct client *c, bool ok) {
  if (c->done) return;
  c->done = true;
  if (!ok) G.failed++;
  bufferevent_free(c->bev);
  c->bev = NULL;
  if (++G.finished == O.conns) event_base_loopexit(G.base, NULL);
}

static void send_frame(struct client *c, uint8_t opcode, const uint8_t *payload, size_t len) {
  uint8_t hdr[WS_MAX_HDR], mask[4];
  uint32_t r = (uint32_t)rand();
  memcpy(mask, &r, 4);
  size_t h = ws_write_header(hdr, true, opcode, len, mask);
  struct evbuffer *out = bufferevent_get_output(c->bev);
  evbuffer_add(out, hdr, h);
  struct evbuffer_iovec v;
  if (len == 0) return;
  evbuffer_reserve_space(out, len, &v, 1);
  memcpy(v.iov_base, payload, len);
  ws_mask(v.iov_base, len, mask, 0);
  v.iov_len = len;
  evbuffer_commit_space(out, &v, 1);
}

static void send_next(struct client *c) {
  static uint8_t *buf;
  if (buf == NULL) buf = malloc(O.size ? O.size : 1);
  for (size_t i = 0; i < O.size; i++) buf[i] = pattern(c->echoed, i);
  c->msg_bytes = 0;
  c->sent_ns = latency_now_ns();
  send_frame(c, WS_BINARY, buf, O.size);
}

static void on_event_frame(struct client *c, const struct ws_event *ev) {
  switch (ev->type) {
  case WS_EV_DATA:
    for (size_t i = 0; i < ev->len; i++)
      if (ev->data[i] != pattern(c->echoed, c->msg_bytes + i)) c->bad = true;
    c->msg_bytes += ev->len;
    break;
  case WS_EV_MESSAGE_END:
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
    break;
  case WS_EV_CLOSE:
    finish(c, c->echoed == O.messages);
    break;
  case WS_EV_ERROR:
    finish(c, false);
    break;
  default:
    break;
  }
}

static bool read_handshake(struct client *c, struct evbuffer *in) {
  struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
  if (end.pos < 0) return false;
  char line[16] = "";
  evbuffer_copyout(in, line, sizeof line - 1);
  evbuffer_drain(in, (size_t)end.pos + 4);
  if (strncmp(line, "HTTP/1.1 101", 12) != 0) {
    fprintf(stderr, "handshake refused: %.12s\n", line);
    finish(c, false);
    return false;
  }
  c->upgraded = true;
  send_next(c);
  return true;
}

static void on_read(struct bufferevent *bev, void *arg) {
  struct client *c = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  if (!c->upgraded && !read_handshake(c, in)) return;
  while (!c->done && evbuffer_get_length(in) > 0) {
    size_t len = evbuffer_get_contiguous_space(in);
    uint8_t *data = evbuffer_pullup(in, (ssize_t)len);
    size_t used_total = 0;
    for (;;) {
      struct ws_event ev;
      size_t used = ws_reader_next(&c->reader, data + used_total, len - used_total, &ev);
      used_total += used;
      if (ev.type == WS_EV_NONE && used == 0) break;
      on_event_frame(c, &ev);
      if (c->done) return;
    }
    evbuffer_drain(in, used_total);
  }
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  struct client *c = arg;
  if (what & BEV_EVENT_CONNECTED) {
    evbuffer_add_printf(bufferevent_get_output(c->bev),
                        "GET %s HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n",
                        O.path, O.host, O.port);
    return;
  }
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) finish(c, c->echoed == O.messages);
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

int main(int argc, char **argv) {
  int o;
  while ((o = getopt(argc, argv, "c:n:s:t:")) != -1) {
    switch (o) {
    case 'c': O.conns = atoi(optarg); break;
    case 'n': O.messages = atoi(optarg); break;
    case 's': O.size = strtoull(optarg, NULL, 10); break;
    case 't': O.timeout_s = atoi(optarg); break;
    default:
      fprintf(stderr, "usage: wsload [-c CONNS] [-n MESSAGES] [-s BYTES] [-t SECONDS] ws://HOST:PORT/PATH\n");
      return 2;
    }
  }
  if (optind != argc - 1 || parse_url(argv[optind]) != 0 || O.conns < 1 || O.messages < 1) {
    fprintf(stderr, "usage: wsload [-c CONNS] [-n MESSAGES] [-s BYTES] [-t SECONDS] ws://HOST:PORT/PATH\n");
    return 2;
  }
  G.base = event_base_new();
  G.lat = calloc((size_t)O.conns * (size_t)O.messages, sizeof *G.lat);
  struct client *clients = calloc((size_t)O.conns, sizeof *clients);
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
  if (getaddrinfo(O.host, O.port, &hints, &ai) != 0) {
    fprintf(stderr, "cannot resolve %s\n", O.host);
    return 2;
  }
  uint64_t start = latency_now_ns();
  for (int i = 0; i < O.conns; i++) {
    struct client *c = &clients[i];
    ws_reader_init(&c->reader, false, 1ull << 31);
    c->bev = bufferevent_socket_new(G.base, -1, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(c->bev, ai->ai_addr, (int)ai->ai_addrlen) != 0) finish(c, false);
  }
  freeaddrinfo(ai);
  struct timeval limit = {O.timeout_s, 0};
  event_base_loopexit(G.base, &limit);
  event_base_dispatch(G.base);
  double secs = (double)(latency_now_ns() - start) / 1e9;
  int unfinished = O.conns - G.finished;
  latency_sort(G.lat, G.n_lat);
  printf("finished in %.2fs: %llu messages of %zu bytes echoed, %.0f msg/s\n", secs,
         (unsigned long long)G.echoed, O.size, (double)G.echoed / secs);
  printf("connections: %d, failed %d, unfinished %d\n", O.conns, G.failed, unfinished);
  printf("round trip ms: p50 %.3f p90 %.3f p99 %.3f max %.3f\n", pct(0.5), pct(0.9), pct(0.99),
         pct(1));
  return G.failed == 0 && unfinished == 0 ? 0 : 1;
}
