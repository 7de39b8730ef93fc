/* The exchange. See xchg.h.
 *
 * Table of contents:
 *   life cycle (new, detach, free)
 *   request head: fields, validation, header rewriting, routing
 *   request body pipe
 *   response from the upstream
 *   local (error) responses, retries, timers
 */
#include "xchg.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "access_log.h"
#include "cidr.h"
#include "fastrand.h"
#include "gw.h"
#include "http_date.h"
#include "http_list.h"
#include "http_status.h"
#include "log.h"
#include "metrics.h"
#include "upstream.h"

enum {
  REPLAY_LIMIT = 64 * 1024, /* request body kept for a retry on another server */
};

static void on_timer(evutil_socket_t fd, short what, void *arg);

/* Open WebSocket tunnels, for the close frames a shutdown sends. */
static LIST_HEAD(, xchg) open_websockets = LIST_HEAD_INITIALIZER(open_websockets);

static void ws_unlist(struct xchg *x) {
  if (!x->ws_open) return;
  LIST_REMOVE(x, ws_link);
  x->ws_open = false;
}

static void arm_timer(struct xchg *x, uint64_t ms) {
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
  event_add(&x->timer, &tv);
}

/* How long a response may go without progress: a WebSocket has its own. */
static uint64_t idle_ms(const struct xchg *x) {
  return x->websocket ? x->limits->websocket_idle_timeout_ms : x->limits->idle_timeout_ms;
}

/* Progress on a response. The idle timer is not moved on every chunk (an
 * event_add per WebSocket message is a heap update each): armed with the
 * response head, it fires at the old deadline, finds the progress and
 * sleeps again for what is left. */
static void note_progress(struct xchg *x) { x->progress_us = gw_coarse_now_us(); }

/* The idle timer fired: true when the response really was idle that long. */
static bool idle_expired(struct xchg *x) {
  uint64_t idle_us = idle_ms(x) * 1000, since = gw_coarse_now_us() - x->progress_us;
  if (since >= idle_us) return true;
  arm_timer(x, (idle_us - since + 999) / 1000);
  return false;
}

/* ---------------------------------------------------------------------------
 * Life cycle.
 */
/* Finished exchanges wait here for reuse: their evbuffers and header
 * arenas stay allocated, so a request costs no malloc in the common case. */
enum { POOL_MAX = 1024, ARENA_KEEP = 16 * 1024 };
static struct xchg *pool_head;
static size_t pool_size;

static struct xchg *xchg_alloc(void) {
  struct xchg *x = pool_head;
  if (x) {
    pool_head = x->pool_next;
    pool_size--;
    return x;
  }
  x = calloc(1, sizeof *x);
  if (x == NULL) return NULL;
  x->req_body = evbuffer_new();
  x->resp_body = evbuffer_new();
  x->req_replay = evbuffer_new();
  if (!x->req_body || !x->resp_body || !x->req_replay) {
    if (x->req_body) evbuffer_free(x->req_body);
    if (x->resp_body) evbuffer_free(x->resp_body);
    if (x->req_replay) evbuffer_free(x->req_replay);
    free(x);
    return NULL;
  }
  return x;
}

static void keep_list(struct hdr_list *l) {
  if (l->arena_cap > ARENA_KEEP) hdr_list_free(l);
  else hdr_list_clear(l);
}

/* Clears an exchange for its next use, keeping its buffers. */
static void xchg_recycle(struct xchg *x) {
  struct evbuffer *req_body = x->req_body, *resp_body = x->resp_body, *replay = x->req_replay;
  struct hdr_list lists[3] = {x->req, x->resp, x->resp_trailers};
  for (int i = 0; i < 3; i++) keep_list(&lists[i]);
  evbuffer_drain(req_body, evbuffer_get_length(req_body));
  evbuffer_drain(resp_body, evbuffer_get_length(resp_body));
  evbuffer_drain(replay, evbuffer_get_length(replay));
  memset(x, 0, sizeof *x);
  x->req_body = req_body;
  x->resp_body = resp_body;
  x->req_replay = replay;
  x->req = lists[0];
  x->resp = lists[1];
  x->resp_trailers = lists[2];
}

struct xchg *xchg_new(struct gw_runtime *rt, enum xchg_proto proto, const struct xchg_down_ops *ops,
                      void *ctx) {
  struct xchg *x = xchg_alloc();
  if (x == NULL) return NULL;
  x->id = ++gw.next_id;
  x->rt = gw_runtime_ref(rt);
  x->limits = &rt->conf->exchange;
  x->proto = proto;
  x->state = XS_REQ_HEAD;
  x->i_method = x->i_scheme = x->i_authority = x->i_path = x->i_protocol = x->i_upstream_path = -1;
  x->req_content_length = -1;
  x->req_replayable = true;
  x->down = ops;
  x->down_ctx = ctx;
  x->down_attached = true;
  x->start_us = gw_now_us();
  event_assign(&x->timer, gw.base, -1, 0, on_timer, x);
  metrics_request_started();
  return x;
}

static void xchg_free(void *p) {
  struct xchg *x = p;
  ws_unlist(x);
  if (!x->pinned) access_log_write(x);
  metrics_request_done(x, xchg_duration_us(x));
  event_del(&x->timer);
  gw_runtime_unref(x->rt);
  xchg_recycle(x);
  if (pool_size < POOL_MAX) {
    x->pool_next = pool_head;
    pool_head = x;
    pool_size++;
    return;
  }
  evbuffer_free(x->req_body);
  evbuffer_free(x->resp_body);
  evbuffer_free(x->req_replay);
  hdr_list_free(&x->req);
  hdr_list_free(&x->resp);
  hdr_list_free(&x->resp_trailers);
  free(x);
}

static bool queued(const struct xchg *x) { return x->state == XS_QUEUED && x->up.conn == NULL; }

static void maybe_free(struct xchg *x) {
  if (x->down_attached || x->up.conn != NULL) return;
  event_del(&x->timer);
  gw_defer_free(xchg_free, x);
}

void xchg_down_detach(struct xchg *x) {
  x->down_attached = false;
  x->down = NULL;
  /* The client left with the response or the request unfinished: stop the
   * stream. A tunnel's request never ends on its own (a WebSocket client
   * that closes its connection after the close handshake sends no end),
   * and a stream left half-open would hold its slot on the upstream
   * connection for good. */
  bool unfinished = !x->resp_end || !xchg_up_req_body_eof(x);
  if ((x->up.conn != NULL && unfinished) || queued(x)) up_cancel(x);
  maybe_free(x);
}

void xchg_up_detach(struct xchg *x) {
  x->up.conn = NULL;
  maybe_free(x);
}

const char *xchg_protocol_name(const struct xchg *x) {
  switch (x->proto) {
  case XCHG_HTTP_1_0: return "HTTP/1.0";
  case XCHG_HTTP_1_1: return "HTTP/1.1";
  case XCHG_HTTP_2: return "HTTP/2";
  case XCHG_HTTP_3: return "HTTP/3";
  }
  return "?";
}

/* ---------------------------------------------------------------------------
 * Request head.
 */
static bool name_eq(const char *name, size_t nlen, const char *lit) {
  size_t n = strlen(lit);
  return nlen == n && strncasecmp(name, lit, n) == 0;
}

static int refuse_field(struct xchg *x, int status, const char *why) {
  x->field_refusal = why;
  return status;
}

const char *xchg_field_refusal(const struct xchg *x, int status) {
  if (x->field_refusal) return x->field_refusal;
  return status == 431 ? "request header fields too large" : "malformed request header";
}

/* RFC 9110 8.6: digits only, and several values must agree. */
static int note_content_length(struct xchg *x, const char *value, size_t vlen) {
  int64_t v = 0;
  if (vlen == 0 || vlen > 18) return refuse_field(x, 400, "invalid Content-Length");
  for (size_t i = 0; i < vlen; i++) {
    if (!isdigit((unsigned char)value[i])) return refuse_field(x, 400, "invalid Content-Length");
    v = v * 10 + (value[i] - '0');
  }
  if (x->req_content_length >= 0 && x->req_content_length != v)
    return refuse_field(x, 400, "Content-Length fields that differ");
  x->req_content_length = v; /* held against the route's max_body_size once routed */
  return 0;
}

int xchg_req_field(struct xchg *x, const char *name, size_t nlen, const char *value, size_t vlen) {
  const struct gw_conf *conf = x->rt->conf;
  /* HTTP/2 and HTTP/3 clients may send Cookie as one field per cookie
   * (RFC 9113 8.2.3; Firefox does), which the app gets joined as one: a
   * site with a hundred cookies is not a request with too many fields.
   * max_header_bytes still holds them all. */
  bool cookie = name_eq(name, nlen, "cookie");
  bool crumb = cookie && x->saw_cookie;
  if (!crumb && x->req.n - x->cookie_crumbs >= conf->max_header_count + 4)
    return refuse_field(x, 431, "too many request header fields");
  if (x->req.bytes + nlen + vlen > conf->max_header_bytes)
    return refuse_field(x, 431, "request header fields too large");
  int idx = hdr_add(&x->req, name, nlen, value, vlen);
  if (idx < 0) return refuse_field(x, 503, "out of memory");
  if (nlen > 0 && name[0] == ':') {
    int *slot = name_eq(name, nlen, ":method")      ? &x->i_method
                : name_eq(name, nlen, ":path")      ? &x->i_path
                : name_eq(name, nlen, ":scheme")    ? &x->i_scheme
                : name_eq(name, nlen, ":authority") ? &x->i_authority
                : name_eq(name, nlen, ":protocol")  ? &x->i_protocol
                                                    : NULL;
    if (slot == NULL) return refuse_field(x, 400, "unknown pseudo-header");
    if (*slot >= 0) return refuse_field(x, 400, "pseudo-header given twice");
    *slot = idx;
    return 0;
  }
  if (cookie) {
    x->cookie_crumbs += crumb;
    x->saw_cookie = true;
  } else if (name_eq(name, nlen, "content-length")) {
    return note_content_length(x, value, vlen);
  } else if (name_eq(name, nlen, "host")) {
    if (x->saw_host) return refuse_field(x, 400, "more than one Host field"); /* RFC 9112 3.2 */
    x->saw_host = true;
  } else if (name_eq(name, nlen, "expect")) {
    if (vlen == 12 && strncasecmp(value, "100-continue", 12) == 0) x->expect_continue = true;
    x->req.v[idx].flags |= HDR_DROPPED; /* we answer 100 ourselves */
  }
  return 0;
}

/* What a request field is to the gateway, by name. */
enum field_role {
  F_PLAIN,      /* forwarded as is */
  F_HOP,        /* hop-by-hop (RFC 9110 7.6.1): dropped */
  F_CONNECTION, /* dropped, and the fields it names */
  F_TE,         /* dropped unless it is exactly "trailers" (RFC 9113 8.2.2) */
  F_HOST,       /* replaced by :authority */
  F_XFF,        /* the forwarding fields: replaced, or extended when trusted */
  F_XFP,
  F_XFH,
  F_PREFIX,     /* X-Forwarded-Prefix */
  F_FORWARDED,
  F_VIA,
  F_REQUEST_ID, /* kept when sane, else generated */
  F_ROLES,
};

#define IS(lit) (len == sizeof(lit) - 1 && memcmp(n, lit, sizeof(lit) - 1) == 0)
static enum field_role classify(const char *n, uint32_t len) {
  switch (len) {
  case 2: return IS("te") ? F_TE : F_PLAIN;
  case 3: return IS("via") ? F_VIA : F_PLAIN;
  case 4: return IS("host") ? F_HOST : F_PLAIN;
  case 7: return IS("upgrade") ? F_HOP : F_PLAIN;
  case 9: return IS("forwarded") ? F_FORWARDED : F_PLAIN;
  case 10: return IS("connection") ? F_CONNECTION : IS("keep-alive") ? F_HOP : F_PLAIN;
  case 12: return IS("x-request-id") ? F_REQUEST_ID : F_PLAIN;
  case 14: return IS("http2-settings") ? F_HOP : F_PLAIN;
  case 15: return IS("x-forwarded-for") ? F_XFF : F_PLAIN;
  case 16: return IS("proxy-connection") ? F_HOP : IS("x-forwarded-host") ? F_XFH : F_PLAIN;
  /* HTTP/2 WebSockets have no key (RFC 8441 5): the HTTP/1.1 front answers it */
  case 17: return IS("transfer-encoding") || IS("sec-websocket-key") ? F_HOP
                 : IS("x-forwarded-proto")                          ? F_XFP
                                                                    : F_PLAIN;
  case 18: return IS("x-forwarded-prefix") ? F_PREFIX : F_PLAIN;
  default: return F_PLAIN;
  }
}
#undef IS

/* A small string builder for field values: no printf on the hot path.
 * Declared without an initializer and started with n = 0: an initializer
 * would clear 2 KiB per field added. */
struct strbuf {
  char b[2048];
  size_t n;
};

static void sb_add(struct strbuf *sb, const char *s, size_t n) {
  if (sb->n + n >= sizeof sb->b) n = sizeof sb->b - 1 - sb->n; /* truncated, never overflown */
  memcpy(sb->b + sb->n, s, n);
  sb->n += n;
}
static void sb_str(struct strbuf *sb, const char *s) { sb_add(sb, s, strlen(s)); }
static void sb_uint(struct strbuf *sb, unsigned v) {
  char d[12];
  int i = sizeof d;
  do d[--i] = (char)('0' + v % 10); while ((v /= 10) && i > 0);
  sb_add(sb, d + i, sizeof d - (size_t)i);
}
static void sb_field(struct strbuf *sb, const struct hdr_list *l, int i) {
  if (i >= 0) sb_add(sb, hdr_value(l, i), l->v[i].value_len);
}

static bool request_id_ok(const char *v, uint32_t n) {
  if (n == 0 || n > 200) return false;
  for (uint32_t i = 0; i < n; i++)
    if (v[i] <= ' ' || v[i] >= 0x7f) return false;
  return true;
}

/* Drops the fields Connection lists (rare: a second pass only then). */
static void drop_connection_listed(struct xchg *x, int conn_idx) {
  const char *v = hdr_value(&x->req, conn_idx);
  uint32_t vlen = x->req.v[conn_idx].value_len;
  for (uint32_t j = 0; j < x->req.n; j++) {
    const char *n = hdr_name(&x->req, (int)j);
    if (n[0] != ':' && h3g_list_has_token(v, vlen, n)) x->req.v[j].flags |= HDR_DROPPED;
  }
}

/* Marks hop-by-hop and forwarding fields dropped; last[role] is the last
 * forwarding field of each role from a trusted proxy (and a valid client
 * X-Request-ID), which the added fields extend or keep. */
static void drop_hop_and_forwarding_fields(struct xchg *x, bool trusted, int last[F_ROLES]) {
  for (int r = 0; r < F_ROLES; r++) last[r] = -1;
  uint32_t n = x->req.n;
  for (uint32_t i = 0; i < n; i++) {
    struct hdr *h = &x->req.v[i];
    const char *name = x->req.arena + h->name_off;
    if (name[0] == ':' || (h->flags & HDR_DROPPED)) continue;
    enum field_role role = classify(name, h->name_len);
    switch (role) {
    case F_PLAIN: continue;
    case F_TE:
      if (h->value_len == 8 && strcasecmp(x->req.arena + h->value_off, "trailers") == 0) continue;
      break;
    case F_REQUEST_ID:
      if (request_id_ok(x->req.arena + h->value_off, h->value_len)) {
        last[role] = (int)i;
        continue;
      }
      break;
    case F_CONNECTION:
      drop_connection_listed(x, (int)i);
      break;
    default:
      if (role >= F_XFF && role <= F_VIA && trusted) last[role] = (int)i;
      break;
    }
    h->flags |= HDR_DROPPED;
  }
}

/* Starts a field value with a trusted proxy's value of the same field and
 * ", " (none: empty); ours is appended after it. */
static void sb_start_after(struct strbuf *sb, const struct xchg *x, int before) {
  sb->n = 0;
  if (before >= 0) sb_field(sb, &x->req, before), sb_add(sb, ", ", 2);
}

/* X-Forwarded-For (the client, after what a trusted proxy said), and
 * X-Forwarded-Proto and -Host (a trusted proxy's stand). */
static int add_x_forwarded(struct xchg *x, const int last[F_ROLES]) {
  struct strbuf sb;
  sb_start_after(&sb, x, last[F_XFF]);
  sb_str(&sb, x->client_ip);
  if (hdr_add(&x->req, "x-forwarded-for", 15, sb.b, sb.n) < 0) return -1;
  int proto = last[F_XFP] >= 0 ? last[F_XFP] : x->i_scheme;
  int host = last[F_XFH] >= 0 ? last[F_XFH] : x->i_authority;
  sb.n = 0;
  sb_field(&sb, &x->req, proto);
  if (hdr_add(&x->req, "x-forwarded-proto", 17, sb.b, sb.n) < 0) return -1;
  sb.n = 0;
  sb_field(&sb, &x->req, host);
  return hdr_add(&x->req, "x-forwarded-host", 16, sb.b, sb.n) < 0 ? -1 : 0;
}

/* Forwarded (RFC 7239), with the client's port; without it, a trusted
 * proxy's stays as it is. */
static int add_forwarded(struct xchg *x, const int last[F_ROLES]) {
  if (!x->rt->conf->forwarded_header) {
    if (last[F_FORWARDED] >= 0) x->req.v[last[F_FORWARDED]].flags &= (uint8_t)~HDR_DROPPED;
    return 0;
  }
  bool v6 = strchr(x->client_ip, ':') != NULL;
  struct strbuf sb;
  sb_start_after(&sb, x, last[F_FORWARDED]);
  sb_str(&sb, v6 ? "for=\"[" : "for=\"");
  sb_str(&sb, x->client_ip);
  sb_str(&sb, v6 ? "]:" : ":");
  sb_uint(&sb, x->client_port);
  sb_str(&sb, "\";proto=");
  sb_field(&sb, &x->req, x->i_scheme);
  sb_str(&sb, ";host=\"");
  sb_field(&sb, &x->req, x->i_authority);
  sb_str(&sb, "\"");
  int f = hdr_add(&x->req, "forwarded", 9, sb.b, sb.n);
  if (f < 0) return -1;
  x->req.v[f].flags |= HDR_UNIQUE; /* carries the client's port */
  return 0;
}

/* X-Request-ID: the client's if valid, else 128 random bits in hex. */
static int add_request_id(struct xchg *x, const int last[F_ROLES]) {
  if (last[F_REQUEST_ID] >= 0) return 0;
  static const char hex[] = "0123456789abcdef";
  char id[32];
  for (int w = 0; w < 2; w++) {
    uint64_t r = fastrand64();
    for (int k = 0; k < 16; k++, r >>= 4) id[w * 16 + k] = hex[r & 15];
  }
  int f = hdr_add(&x->req, "x-request-id", 12, id, sizeof id);
  if (f < 0) return -1;
  x->req.v[f].flags |= HDR_UNIQUE;
  return 0;
}

/* A route with strip_prefix: the backend gets the path below the prefix
 * ("/api/items" → "/items"), and X-Forwarded-Prefix says what was taken
 * (after a trusted proxy's own), which h3gate-worker makes the app's
 * root_path. Without it a trusted proxy's X-Forwarded-Prefix stays. */
static int strip_route_prefix(struct xchg *x, const struct conf_route *r, int trusted_prefix) {
  if (!r->strip_prefix) {
    if (trusted_prefix >= 0) x->req.v[trusted_prefix].flags &= (uint8_t)~HDR_DROPPED;
    return 0;
  }
  size_t taken = strlen(r->path_prefix) - 1; /* "/api/" → "/api" */
  const char *below = hdr_value(&x->req, x->i_path) + taken;
  x->i_upstream_path = hdr_add(&x->req, ":path", 5, below, strlen(below));
  struct strbuf sb;
  sb.n = 0;
  sb_field(&sb, &x->req, trusted_prefix);
  sb_add(&sb, r->path_prefix, taken);
  return x->i_upstream_path < 0 || hdr_add(&x->req, "x-forwarded-prefix", 18, sb.b, sb.n) < 0 ? -1 : 0;
}

/* The scheme passed on is the connection's. A client over cleartext that
 * wrote :scheme https made X-Forwarded-Proto and Forwarded say https, and
 * the app, which trusts them from us, took the request for one over TLS
 * (secure cookies, Django's SECURE_PROXY_SSL_HEADER); nginx's $scheme and
 * Caddy's X-Forwarded-Proto come from the connection too. A trusted
 * proxy's :scheme stands, as its X-Forwarded-Proto does. */
static int vouch_for_scheme(struct xchg *x, bool trusted) {
  const char *scheme = x->tls ? "https" : "http";
  if (x->i_scheme >= 0) {
    if (trusted || strcmp(hdr_value(&x->req, x->i_scheme), scheme) == 0) return 0;
    x->req.v[x->i_scheme].flags |= HDR_DROPPED;
  }
  x->i_scheme = hdr_add(&x->req, ":scheme", 7, scheme, strlen(scheme));
  return x->i_scheme < 0 ? -1 : 0;
}

/* One pass over the request fields: hop-by-hop fields go, the forwarding
 * fields are replaced (a trusted proxy's are extended), then X-Forwarded-*,
 * Forwarded, Via and X-Request-ID are added. */
static int rewrite_request_fields(struct xchg *x, const struct conf_route *r) {
  const struct gw_conf *conf = x->rt->conf;
  bool trusted = conf->trusted_proxies.any || conf->trusted_proxies.n
                     ? cidr_list_match_text(&conf->trusted_proxies, x->client_ip, strlen(x->client_ip))
                     : false;
  int last[F_ROLES];
  drop_hop_and_forwarding_fields(x, trusted, last);
  if (vouch_for_scheme(x, trusted) != 0 || add_x_forwarded(x, last) != 0 || add_forwarded(x, last) != 0)
    return -1;
  /* Via: the protocol the client used, which the worker reads back */
  static const char *const via[] = {"1.0 h3gate", "1.1 h3gate", "2 h3gate", "3 h3gate"};
  struct strbuf sb;
  sb_start_after(&sb, x, last[F_VIA]);
  sb_str(&sb, via[x->proto]);
  if (hdr_add(&x->req, "via", 3, sb.b, sb.n) < 0 || add_request_id(x, last) != 0) return -1;
  if (x->early_data && hdr_add(&x->req, "early-data", 10, "1", 1) < 0) return -1;
  return strip_route_prefix(x, r, last[F_PREFIX]);
}

/* Host without port, lower-case, without the trailing dot of a fully
 * qualified name ("example.com." is example.com, as nginx takes it). */
static void host_of(const char *authority, char *out, size_t n) {
  size_t i = 0;
  const char *p = authority;
  if (*p == '[') { /* [v6]:port */
    while (*p && *p != ']' && i + 1 < n) out[i++] = *p++;
    if (*p == ']' && i + 1 < n) out[i++] = *p;
  } else {
    while (*p && *p != ':' && i + 1 < n) out[i++] = (char)tolower((unsigned char)*p++);
    if (i > 1 && out[i - 1] == '.') i--;
  }
  out[i] = '\0';
}

/* How well a route's host fits the request's: 0 when it does not match;
 * else any host beats none, an exact name beats a wildcard, and a longer
 * wildcard a shorter one ("*.api.example.com" over "*.example.com"), the
 * order in which nginx picks a server_name. */
static uint64_t host_rank(const char *pattern, const char *host) {
  if (pattern == NULL) return 1;
  if (pattern[0] == '*' && pattern[1] == '.') {
    size_t pl = strlen(pattern + 1), hl = strlen(host);
    return hl > pl && strcasecmp(host + hl - pl, pattern + 1) == 0 ? 2 + pl : 0;
  }
  return strcasecmp(pattern, host) == 0 ? 1u << 16 : 0;
}

/* The most specific route: the best host match (host_rank), then the
 * longest path prefix. "OPTIONS *" asks about the server as a whole (RFC
 * 9110 9.3.7), so the route that serves "/" answers it. */
static const struct conf_route *route(struct xchg *x) {
  const struct gw_conf *conf = x->rt->conf;
  char host[256];
  host_of(hdr_value(&x->req, x->i_authority), host, sizeof host);
  const char *path = hdr_value(&x->req, x->i_path);
  if (strcmp(path, "*") == 0) path = "/";
  long best = -1;
  uint64_t best_score = 0;
  for (size_t i = 0; i < conf->n_routes; i++) {
    const struct conf_route *r = &conf->routes[i];
    uint64_t rank = host_rank(r->host, host);
    if (rank == 0) continue;
    size_t plen = strlen(r->path_prefix);
    if (strncmp(path, r->path_prefix, plen) != 0) continue;
    uint64_t score = (rank << 32) + plen + 1;
    if (score > best_score) best_score = score, best = (long)i;
  }
  return best < 0 ? NULL : &conf->routes[best];
}

/* Extended CONNECT from an HTTP/2 or HTTP/3 client (RFC 8441, RFC 9220):
 * only WebSockets; plain CONNECT tunnels are not a gateway's job here. */
static int websocket_connect(struct xchg *x, const char **why) {
  if (x->i_protocol < 0) return *why = "CONNECT tunnels are not supported", 501;
  if (strcasecmp(hdr_value(&x->req, x->i_protocol), "websocket") != 0)
    return *why = "only the websocket protocol can be tunnelled", 501;
  x->websocket = true;
  return 0;
}

/* An HTTP/1.1 Upgrade (the front checked the handshake's fields) becomes
 * the same extended CONNECT upstream. */
static int websocket_from_upgrade(struct xchg *x, const char **why) {
  if (x->i_method < 0 || strcmp(hdr_value(&x->req, x->i_method), "GET") != 0)
    return *why = "a WebSocket handshake must be a GET", 400;
  x->req.v[x->i_method].flags |= HDR_DROPPED;
  x->i_method = hdr_add(&x->req, ":method", 7, "CONNECT", 7);
  x->i_protocol = hdr_add(&x->req, ":protocol", 9, "websocket", 9);
  if (x->i_method < 0 || x->i_protocol < 0) return *why = "out of memory", 503;
  return 0;
}

/* An HTTP/2 or HTTP/3 request whose Host names another host than its
 * :authority is malformed (RFC 9113 8.3.1, RFC 9114 4.3.1). Over HTTP/1.1
 * :authority comes from an absolute-form target, which Host yields to. */
static bool host_differs(const struct xchg *x, int host) {
  if (x->proto != XCHG_HTTP_2 && x->proto != XCHG_HTTP_3) return false;
  return host >= 0 && strcasecmp(hdr_value(&x->req, host), hdr_value(&x->req, x->i_authority)) != 0;
}

/* RFC 9112 3.2 (a MUST) and RFC 9113 8.3.1: an invalid Host or :authority
 * is a 400 here. It used to reach the backend, whose HTTP/2 stack reset the
 * stream (a 502 for the client's error), or the app, for one with
 * userinfo ("a@b"). An HTTP/1.1 Host that an absolute-form target
 * overrides is checked too; an empty one stands for none (h1_down). */
static bool authority_valid(const struct xchg *x, int host) {
  const struct hdr *a = &x->req.v[x->i_authority];
  if (!hdr_authority_valid(hdr_value(&x->req, x->i_authority), a->value_len)) return false;
  if (host < 0 || x->req.v[host].value_len == 0) return true;
  return hdr_authority_valid(hdr_value(&x->req, host), x->req.v[host].value_len);
}

/* 0, or the status a malformed or unserviceable head gets (why says why). */
static int check_head(struct xchg *x, const char **why) {
  if (x->i_method >= 0 && strcmp(hdr_value(&x->req, x->i_method), "CONNECT") == 0) {
    int status = websocket_connect(x, why);
    if (status) return status;
  } else if (x->i_protocol >= 0) {
    return *why = ":protocol without CONNECT", 400;
  } else if (x->websocket) {
    int status = websocket_from_upgrade(x, why);
    if (status) return status;
  }
  if (x->i_method < 0 || x->i_path < 0) return *why = "missing method or path", 400;
  if (x->i_authority < 0) return *why = "missing Host", 400;
  int host = hdr_find(&x->req, "host", 4, 0);
  if (!authority_valid(x, host)) return *why = "invalid Host", 400;
  if (host_differs(x, host)) return *why = "Host and :authority differ", 400;
  const char *path = hdr_value(&x->req, x->i_path);
  if (strcmp(path, "*") == 0) {
    if (strcmp(hdr_value(&x->req, x->i_method), "OPTIONS") != 0)
      return *why = "the request target * is only for OPTIONS", 400;
  } else if (path[0] != '/') {
    return *why = "request target must be a path", 400;
  }
  return 0;
}

static void respond_local(struct xchg *x, int status, const char *text, const char *location);

/* A cleartext listener's redirect_https: the same host and target over
 * TLS, 308 so that the method and body stay (Caddy's choice). ACME
 * HTTP-01 challenges still reach their route: a certificate for the https
 * side is often got over this very port. */
static bool redirect_to_https(struct xchg *x) {
  const char *path = hdr_value(&x->req, x->i_path);
  static const char acme[] = "/.well-known/acme-challenge/";
  if (x->redirect_https == 0 || strncmp(path, acme, sizeof acme - 1) == 0) return false;
  char host[256], port[8] = "";
  host_of(hdr_value(&x->req, x->i_authority), host, sizeof host);
  if (x->redirect_https != 443) snprintf(port, sizeof port, ":%u", (unsigned)x->redirect_https);
  if (strcmp(path, "*") == 0) path = "/";
  size_t size = sizeof "https://" + strlen(host) + strlen(port) + strlen(path);
  char *location = malloc(size); /* a target may be as long as max_header_bytes */
  if (location == NULL) {
    xchg_respond_local(x, 503, "out of memory");
    return true;
  }
  snprintf(location, size, "https://%s%s%s", host, port, path);
  respond_local(x, 308, "this site is served over https", location);
  free(location);
  return true;
}

int xchg_req_head_done(struct xchg *x) {
  if (x->state != XS_REQ_HEAD) return x->status; /* answered already: its head came too late */
  event_del(&x->timer);
  if (x->i_authority < 0) {
    int host = hdr_find(&x->req, "host", 4, 0);
    if (host >= 0) {
      char *v = strdup(hdr_value(&x->req, host));
      x->i_authority = v ? hdr_add(&x->req, ":authority", 10, v, strlen(v)) : -1;
      free(v);
    }
  }
  const char *why = NULL;
  int status = check_head(x, &why);
  if (status) {
    xchg_respond_local(x, status, why);
    return status;
  }
  if (redirect_to_https(x)) return x->status;
  if (x->i_scheme < 0) {
    const char *s = x->tls ? "https" : "http";
    x->i_scheme = hdr_add(&x->req, ":scheme", 7, s, strlen(s));
  }
  const struct conf_route *r = route(x);
  if (r == NULL) {
    xchg_respond_local(x, 404, "no route for this host and path");
    return 404;
  }
  x->pool = x->rt->pools[r->upstream_index];
  x->limits = &r->limits;
  if (x->limits->max_body_size && x->req_content_length > 0 &&
      (uint64_t)x->req_content_length > x->limits->max_body_size) {
    xchg_respond_local(x, 413, "request body too large");
    return 413;
  }
  /* Host goes (:authority stands for it, RFC 9113 8.3.1), with the
   * hop-by-hop fields; forwarding fields are set, the route's prefix taken. */
  if (rewrite_request_fields(x, r) != 0) {
    xchg_respond_local(x, 503, "out of memory");
    return 503;
  }
  x->state = XS_QUEUED;
  x->queued_us = gw_now_us();
  up_pool_dispatch(x->pool, x);
  return 0;
}

/* ---------------------------------------------------------------------------
 * Request body.
 */
int xchg_req_body(struct xchg *x, const void *data, size_t len) {
  x->req_bytes += len;
  if ((x->websocket && x->state == XS_RESPONDING) || x->state == XS_SENT) note_progress(x);
  if (x->ws_open) ws_boundary_feed(&x->ws_up, data, len, true);
  uint64_t max_body_size = x->limits->max_body_size;
  if (max_body_size && x->req_bytes > max_body_size && !x->websocket) {
    if (x->state != XS_RESPONDING && x->state != XS_DONE) {
      if (x->up.conn || queued(x)) up_cancel(x);
      xchg_respond_local(x, 413, "request body too large");
    }
    return 413;
  }
  if (x->state == XS_DONE && x->up.conn == NULL) return 0; /* nobody will read it */
  evbuffer_add(x->req_body, data, len);
  if (x->up.conn) up_resume_req(x);
  return 0;
}

void xchg_req_end(struct xchg *x) {
  x->req_end = true;
  if (x->state == XS_SENT) xchg_arm_response_timer(x); /* the wait for the answer starts now */
  if (x->up.conn) up_resume_req(x);
}

size_t xchg_req_buffered(const struct xchg *x) { return evbuffer_get_length(x->req_body); }

size_t xchg_up_take_req_body(struct xchg *x, uint8_t *buf, size_t max) {
  int n = evbuffer_remove(x->req_body, buf, max);
  if (n <= 0) return 0;
  if (x->state == XS_SENT) note_progress(x);
  if (x->req_replayable) {
    if (evbuffer_get_length(x->req_replay) + (size_t)n <= REPLAY_LIMIT) {
      evbuffer_add(x->req_replay, buf, (size_t)n);
    } else {
      x->req_replayable = false;
      evbuffer_drain(x->req_replay, evbuffer_get_length(x->req_replay));
    }
  }
  /* Credit goes back once per byte, even when a retry sends it again. */
  x->req_taken += (size_t)n;
  if (x->req_taken > x->req_credited) {
    size_t credit = (size_t)(x->req_taken - x->req_credited);
    x->req_credited = x->req_taken;
    if (x->down_attached && x->down->on_req_credit) x->down->on_req_credit(x, credit);
  }
  return (size_t)n;
}

bool xchg_up_req_body_eof(const struct xchg *x) {
  return x->req_end && evbuffer_get_length(x->req_body) == 0;
}

/* ---------------------------------------------------------------------------
 * Response.
 */

/* The request is still coming (an upload, not a tunnel): a backend that
 * reads the whole body before it answers cannot answer yet, and a response
 * header timer started with the head cut off any upload longer than it
 * (504; a 2.5 s upload against 1 s in the test, so anything over a minute
 * at the default). It starts once the request has ended, as nginx's
 * proxy_read_timeout and Envoy's route timeout do; until then the body
 * must not stall for timeouts.idle. */
static bool request_coming(const struct xchg *x) { return !x->req_end && !x->websocket; }

void xchg_arm_response_timer(struct xchg *x) {
  if (request_coming(x)) {
    note_progress(x);
    arm_timer(x, idle_ms(x));
  } else {
    arm_timer(x, x->limits->response_header_timeout_ms);
  }
}

void xchg_arm_head_timer(struct xchg *x) { arm_timer(x, x->rt->conf->client_header_timeout_ms); }

/* The backend's head as the client gets it: the connection-specific
 * fields it may carry dropped (by length first: this runs for every
 * response), and a Date added where it has none (RFC 9110 6.6.1: a proxy
 * with a clock adds it). */
static void tidy_response_head(struct xchg *x) {
  bool has_date = false;
  for (uint32_t i = 0; i < x->resp.n; i++) {
    const char *n = hdr_name(&x->resp, (int)i);
    bool hop;
    switch (x->resp.v[i].name_len) {
    case 4:
      hop = false;
      if (memcmp(n, "date", 4) == 0) has_date = true;
      break;
    case 7: hop = memcmp(n, "upgrade", 7) == 0; break;
    case 10: hop = memcmp(n, "connection", 10) == 0 || memcmp(n, "keep-alive", 10) == 0; break;
    case 16: hop = memcmp(n, "proxy-connection", 16) == 0; break;
    case 17: hop = memcmp(n, "transfer-encoding", 17) == 0; break;
    default: hop = false; break;
    }
    if (hop) x->resp.v[i].flags |= HDR_DROPPED;
  }
  if (!has_date) hdr_add(&x->resp, "date", 4, h3g_http_date(), HTTP_DATE_LEN);
}

void xchg_up_resp_head(struct xchg *x) {
  x->state = XS_RESPONDING;
  /* Past this point a retry could duplicate a response: drop the copy. */
  x->req_replayable = false;
  evbuffer_drain(x->req_replay, evbuffer_get_length(x->req_replay));
  tidy_response_head(x);
  if (x->websocket && x->status / 100 == 2 && !x->ws_open) {
    x->ws_open = true;
    memset(&x->ws_down, 0, sizeof x->ws_down);
    memset(&x->ws_up, 0, sizeof x->ws_up);
    LIST_INSERT_HEAD(&open_websockets, x, ws_link);
  }
  note_progress(x);
  arm_timer(x, idle_ms(x)); /* replaces the response header timer */
  if (x->down_attached) x->down->on_resp_head(x);
}

void xchg_up_resp_data(struct xchg *x, const uint8_t *data, size_t len) {
  x->resp_bytes += len;
  if (!x->down_attached) return;
  if (x->resp_end) { /* we ended it ourselves (a shutdown's close frame): drop the rest */
    if (x->up.conn) up_consumed(x, len);
    return;
  }
  if (x->ws_open) ws_boundary_feed(&x->ws_down, data, len, false);
  evbuffer_add(x->resp_body, data, len);
  note_progress(x);
  x->down->on_resp_body(x);
}

void xchg_up_resp_end(struct xchg *x) {
  ws_unlist(x);
  x->resp_end = true;
  x->state = XS_DONE;
  event_del(&x->timer);
  if (x->down_attached) x->down->on_resp_body(x);
}

/* The request's time ends here, as nginx's $request_time does when the last
 * byte is handed to the connection: not when the exchange is freed. An
 * HTTP/3 stream lives on until the client acknowledges every byte (a
 * round trip and its ACK delay more), or, when the client closes without
 * acknowledging, until the connection's draining ends: 150 ms logged for a
 * 1 ms request. */
void xchg_resp_out(struct xchg *x) {
  if (x->resp_out_us == 0) x->resp_out_us = gw_now_us();
}

uint64_t xchg_duration_us(const struct xchg *x) {
  return (x->resp_out_us ? x->resp_out_us : gw_now_us()) - x->start_us;
}

void xchg_resp_consumed(struct xchg *x, size_t n) {
  if (x->up.conn) up_consumed(x, n);
  if (x->state == XS_RESPONDING) note_progress(x);
}

/* Our close frame toward the backend: a client's frame must be masked; a
 * zero mask leaves the payload as it is (RFC 6455 5.3). */
static bool close_backend_side(struct xchg *x) {
  static const uint8_t close_1001_masked[] = {0x88, 0x82, 0, 0, 0, 0, 1001 >> 8, 1001 & 0xff};
  if (x->up.conn == NULL || x->req_end || !ws_boundary_between_frames(&x->ws_up)) return false;
  evbuffer_add(x->req_body, close_1001_masked, sizeof close_1001_masked);
  x->req_end = true; /* END_STREAM after it: the app sees 1001, then the end */
  up_resume_req(x);
  return true;
}

size_t xchg_websockets_going_away(void) {
  static const uint8_t close_1001[] = {0x88, 0x02, 1001 >> 8, 1001 & 0xff};
  size_t n = 0;
  struct xchg *x = LIST_FIRST(&open_websockets), *next;
  for (; x; x = next) {
    next = LIST_NEXT(x, ws_link);
    if (!x->down_attached || x->resp_end || !ws_boundary_between_frames(&x->ws_down)) continue;
    if (!close_backend_side(x) && (x->up.conn || queued(x))) up_cancel(x);
    evbuffer_add(x->resp_body, close_1001, sizeof close_1001);
    x->resp_bytes += sizeof close_1001;
    xchg_up_resp_end(x);
    n++;
  }
  return n;
}

/* ---------------------------------------------------------------------------
 * Local responses, retries, timers.
 */

void xchg_up_give_up(struct xchg *x, int status, const char *why) {
  x->up = (struct xchg_up){0};
  if (x->down_attached) xchg_respond_local(x, status, why);
  maybe_free(x);
}

void xchg_respond_local(struct xchg *x, int status, const char *text) { respond_local(x, status, text, NULL); }

/* Our own answer; location, when not NULL, goes in a Location field. */
static void respond_local(struct xchg *x, int status, const char *text, const char *location) {
  event_del(&x->timer);
  if (status >= 500)
    log_error("xchg %llu: %d %s: %s", (unsigned long long)x->id, status, http_reason(status), text);
  else
    log_debug("xchg %llu: %d %s: %s", (unsigned long long)x->id, status, http_reason(status), text);
  if (x->state == XS_RESPONDING) {
    /* The head went out already: all we can do is break the response. */
    x->state = XS_DONE;
    x->resp_end = true;
    if (x->down_attached) x->down->on_abort(x);
    return;
  }
  char body[256];
  int n = snprintf(body, sizeof body, "%d %s: %s\n", status, http_reason(status), text);
  if (n < 0 || n >= (int)sizeof body) n = (int)sizeof body - 1;
  char len[16];
  snprintf(len, sizeof len, "%d", n);
  hdr_list_clear(&x->resp);
  hdr_list_clear(&x->resp_trailers);
  hdr_add(&x->resp, "content-type", 12, "text/plain; charset=utf-8", 25);
  hdr_add(&x->resp, "content-length", 14, len, strlen(len));
  hdr_add(&x->resp, "date", 4, h3g_http_date(), HTTP_DATE_LEN);
  if (location) hdr_add(&x->resp, "location", 8, location, strlen(location));
  x->status = status;
  evbuffer_drain(x->resp_body, evbuffer_get_length(x->resp_body));
  bool head_only = x->i_method >= 0 && strcmp(hdr_value(&x->req, x->i_method), "HEAD") == 0;
  if (!head_only) evbuffer_add(x->resp_body, body, (size_t)n);
  x->resp_local = true;
  x->resp_end = true;
  x->state = XS_DONE;
  x->resp_bytes = (uint64_t)n;
  if (x->down_attached) {
    x->down->on_resp_head(x);
    if (x->down_attached) x->down->on_resp_body(x);
  }
}

static bool idempotent(struct xchg *x) {
  static const char *const methods[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
  const char *m = hdr_value(&x->req, x->i_method);
  for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
    if (strcmp(m, methods[i]) == 0) return true;
  return false;
}

void xchg_up_failed(struct xchg *x, enum up_reach reach, int status, const char *why_in) {
  char why[sizeof x->last_why];
  snprintf(why, sizeof why, "%s", why_in); /* why_in may be x->last_why itself */
  x->up = (struct xchg_up){0};
  if (!x->down_attached) { /* nobody is waiting */
    maybe_free(x);
    return;
  }
  /* Safe to send again: the backend never saw it (refused stream, past a
   * GOAWAY, connection failed), or the method is idempotent; and we still
   * hold every body byte sent. */
  if (x->state != XS_RESPONDING && x->req_replayable && x->attempts <= up_pool_retries(x->pool) &&
      (reach == UP_UNSEEN || idempotent(x)) &&
      (reach != UP_ANSWERED || x->n_answered < XCHG_ANSWERED_MAX)) {
    if (reach == UP_ANSWERED) x->answered[x->n_answered++] = x->server;
    x->last_status = status;
    snprintf(x->last_why, sizeof x->last_why, "%s", why);
    size_t replay = evbuffer_get_length(x->req_replay);
    evbuffer_prepend_buffer(x->req_body, x->req_replay);
    x->req_taken -= replay;
    x->state = XS_QUEUED;
    log_info("xchg %llu: sending it again (another server, or another connection to this one) after: %s",
             (unsigned long long)x->id, why);
    up_pool_dispatch(x->pool, x);
    return;
  }
  xchg_respond_local(x, status, why);
  maybe_free(x);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct xchg *x = arg;
  switch (x->state) {
  case XS_REQ_HEAD:
    xchg_respond_local(x, 408, "the request head did not come within timeouts.client_header");
    break;
  case XS_QUEUED:
    up_cancel(x);
    xchg_respond_local(x, 504, "no upstream connection in time");
    break;
  case XS_SENT:
    if (request_coming(x)) {
      if (!idle_expired(x)) break;
      up_cancel(x);
      /* Bytes we hold that the backend did not take: it stopped reading.
       * Else the client stopped sending (nginx's client_body_timeout). */
      if (evbuffer_get_length(x->req_body) > 0)
        xchg_respond_local(x, 504, "upstream did not read the request body within timeouts.idle");
      else
        xchg_respond_local(x, 408, "the request body stalled for timeouts.idle");
      break;
    }
    up_cancel(x);
    xchg_respond_local(x, 504, "upstream response header timeout");
    break;
  case XS_RESPONDING:
    if (!idle_expired(x)) break;
    up_cancel(x);
    xchg_respond_local(x, 504, "upstream idle timeout");
    break;
  default:
    break;
  }
}
