/* YAML to gw_conf through key tables.
 *
 * Each struct has a table of keys (name, type, offset, bounds) and a
 * function that fills its defaults; the walker applies the YAML over the
 * defaults, rejects unknown keys, and a final pass checks what spans
 * several keys (routes naming upstreams, duplicate listeners).
 *
 * Table of contents:
 *   error reporting
 *   scalar parsers
 *   the key tables
 *   the walker
 *   cross-checks and conf_load
 */
#include "config.h"

#include <errno.h>
#include <libgen.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "units.h"

struct parse_ctx {
  const char *file;
  char *dir; /* for relative paths */
  yaml_document_t *doc;
  char *err;
  size_t err_size;
};

/* ---------------------------------------------------------------------------
 * Errors.
 */
__attribute__((format(printf, 3, 4))) static int fail_at(struct parse_ctx *ctx,
                                                         const yaml_node_t *node,
                                                         const char *fmt, ...) {
  va_list ap;
  int n = snprintf(ctx->err, ctx->err_size, "%s:%zu:%zu: ", ctx->file,
                   node ? node->start_mark.line + 1 : 1, node ? node->start_mark.column + 1 : 1);
  va_start(ap, fmt);
  if (n >= 0 && (size_t)n < ctx->err_size) vsnprintf(ctx->err + n, ctx->err_size - (size_t)n, fmt, ap);
  va_end(ap);
  return -1;
}

static const char *scalar(const yaml_node_t *node) {
  return node->type == YAML_SCALAR_NODE ? (const char *)node->data.scalar.value : NULL;
}

static const char *node_kind(const yaml_node_t *node) {
  switch (node->type) {
  case YAML_SCALAR_NODE: return "a value";
  case YAML_SEQUENCE_NODE: return "a list";
  case YAML_MAPPING_NODE: return "a mapping";
  default: return "nothing";
  }
}

/* ---------------------------------------------------------------------------
 * Key tables.
 */
enum key_type {
  K_STR,      /* char * */
  K_PATH,     /* char *, resolved against the config folder */
  K_DIR,      /* K_PATH naming a folder we can write in, checked now */
  K_BOOL,     /* bool */
  K_U32,      /* uint32_t, bounded */
  K_U64,      /* uint64_t, bounded */
  K_DURATION, /* uint64_t milliseconds, bounded */
  K_SIZE,     /* uint64_t or uint32_t (size4) bytes, bounded */
  K_SIZE32,
  K_HOSTPORT, /* char * kept, checked as an address */
  K_LOGLEVEL, /* enum h3g_log_level */
  K_ENUM,     /* int, from names */
  K_U32_AUTO, /* uint32_t: a count from min to max, or "auto" (what auto_value gives) */
  K_CIDRS,    /* struct cidr_list from a list of strings */
  K_STRLIST,  /* char ** + size_t count at count_offset */
  K_MAP,      /* nested struct at offset */
  K_LIST,     /* array of structs: pointer at offset, count at count_offset */
};

struct map_spec;

struct key_spec {
  const char *name;
  enum key_type type;
  size_t offset;
  uint64_t min, max;
  const char *const *names;  /* K_ENUM */
  uint32_t (*auto_value)(uint32_t max); /* K_U32_AUTO */
  const struct map_spec *sub; /* K_MAP, K_LIST */
  size_t count_offset;        /* K_LIST, K_STRLIST */
  bool required;
};

struct map_spec {
  const char *what; /* for messages: "listen entry" */
  const struct key_spec *keys;
  size_t size; /* of the struct, for K_LIST */
  void (*defaults)(void *obj);
  /* Checks across keys of one struct; node is the mapping. */
  int (*check)(struct parse_ctx *ctx, void *obj, const yaml_node_t *node);
};

#define KEY(key, kind, st, field, ...)                                                            \
  { .name = key, .type = kind, .offset = offsetof(st, field), __VA_ARGS__ }
#define SECTION(key, spec) { .name = key, .type = K_MAP, .sub = &spec }
#define END_KEYS { .name = NULL }
#define SEC(x) ((uint64_t)(x) * 1000)

/* "auto" for connections_per_server: decided per server, by what it says. */
static uint32_t conns_by_backend(uint32_t max) {
  (void)max;
  return CONNS_PER_SERVER_AUTO;
}

static const char *const balance_names[] = {"least_outstanding", "round_robin", NULL};
static const char *const retry_names[] = {"auto", "always", "never", NULL};
static const char *const cc_names[] = {"cubic", "reno", "bbr", NULL};
static const char *const log_format_names[] = {"off", "combined", "json", NULL};

/* listen */
static void listen_defaults(void *obj) {
  struct conf_listen *l = obj;
  l->http3 = true; /* only takes effect with tls */
  l->alt_svc = true;
}

static int listen_check(struct parse_ctx *ctx, void *obj, const yaml_node_t *node) {
  struct conf_listen *l = obj;
  const char *why;
  if (h3g_hostport_parse(l->address, &l->addr, &why) != 0)
    return fail_at(ctx, node, "listen address \"%s\": %s", l->address, why);
  if (l->addr.is_unix) return fail_at(ctx, node, "listen address must be HOST:PORT, not a unix socket");
  l->tls = l->certificate != NULL || l->key != NULL;
  if (l->tls && (l->certificate == NULL || l->key == NULL))
    return fail_at(ctx, node, "tls needs both certificate and key");
  if (!l->tls) l->http3 = false;
  if (l->tls && l->redirect_https)
    return fail_at(ctx, node, "redirect_https is for a cleartext listener (this one has tls)");
  return 0;
}

static const struct key_spec cert_keys[] = {
    KEY("certificate", K_PATH, struct conf_cert, certificate, .required = true),
    KEY("key", K_PATH, struct conf_cert, key, .required = true),
    END_KEYS,
};
static const struct map_spec cert_spec = {"certificates entry", cert_keys, sizeof(struct conf_cert),
                                          NULL, NULL};

static const struct key_spec tls_keys[] = {
    KEY("certificate", K_PATH, struct conf_listen, certificate, .required = true),
    KEY("key", K_PATH, struct conf_listen, key, .required = true),
    KEY("certificates", K_LIST, struct conf_listen, sni_certs, .sub = &cert_spec,
        .count_offset = offsetof(struct conf_listen, n_sni_certs)),
    END_KEYS,
};
/* tls: is a mapping whose keys land in conf_listen itself (offset 0). */
static const struct map_spec tls_spec = {"tls", tls_keys, 0, NULL, NULL};

static const struct key_spec listen_keys[] = {
    KEY("address", K_HOSTPORT, struct conf_listen, address, .required = true),
    SECTION("tls", tls_spec),
    KEY("http3", K_BOOL, struct conf_listen, http3),
    KEY("http3_port", K_U32, struct conf_listen, http3_port, .min = 1, .max = 65535),
    KEY("alt_svc", K_BOOL, struct conf_listen, alt_svc),
    KEY("redirect_https", K_U32, struct conf_listen, redirect_https, .min = 1, .max = 65535),
    END_KEYS,
};
static const struct map_spec listen_spec = {"listen entry", listen_keys, sizeof(struct conf_listen),
                                            listen_defaults, listen_check};

/* upstreams */
static void health_defaults(void *obj) {
  struct conf_health_check *h = obj;
  h->interval_ms = SEC(5);
  h->timeout_ms = SEC(2);
  h->fails = 2;
  h->passes = 1;
}

static const struct key_spec health_keys[] = {
    KEY("path", K_STR, struct conf_health_check, path, .required = true),
    KEY("interval", K_DURATION, struct conf_health_check, interval_ms, .min = 100, .max = SEC(3600)),
    KEY("timeout", K_DURATION, struct conf_health_check, timeout_ms, .min = 10, .max = SEC(600)),
    KEY("fails", K_U32, struct conf_health_check, fails, .min = 1, .max = 100),
    KEY("passes", K_U32, struct conf_health_check, passes, .min = 1, .max = 100),
    END_KEYS,
};
static const struct map_spec health_spec = {"health_check", health_keys, 0, health_defaults, NULL};

static void upstream_defaults(void *obj) {
  struct conf_upstream *u = obj;
  u->resolve_interval_ms = SEC(5);
  u->balance = BALANCE_LEAST_OUTSTANDING;
  u->connections_per_server = CONNS_PER_SERVER_AUTO;
  u->max_fails = 1;
  u->fail_timeout_ms = SEC(10);
  u->retries = 2;
  u->tcp_keepalive_ms = SEC(10);
  health_defaults(&u->health_check);
}

static int upstream_check(struct parse_ctx *ctx, void *obj, const yaml_node_t *node) {
  struct conf_upstream *u = obj;
  if (u->n_servers == 0) return fail_at(ctx, node, "upstream \"%s\" has no servers", u->name);
  u->addrs = calloc(u->n_servers, sizeof *u->addrs);
  if (u->addrs == NULL) return fail_at(ctx, node, "out of memory");
  for (size_t i = 0; i < u->n_servers; i++) {
    const char *why;
    if (h3g_hostport_parse(u->servers[i], &u->addrs[i], &why) != 0)
      return fail_at(ctx, node, "upstream \"%s\": server \"%s\": %s", u->name, u->servers[i], why);
    if (!u->addrs[i].is_unix && u->addrs[i].host[0] == '\0')
      return fail_at(ctx, node, "upstream \"%s\": server \"%s\" needs a host", u->name,
                     u->servers[i]);
  }
  if (u->tcp_keepalive_ms % 1000 != 0)
    return fail_at(ctx, node, "tcp_keepalive is whole seconds (the kernel counts in seconds)");
  if (u->health_check.path && u->health_check.path[0] != '/')
    return fail_at(ctx, node, "health_check path must start with \"/\"");
  return 0;
}

static const struct key_spec upstream_keys[] = {
    KEY("name", K_STR, struct conf_upstream, name, .required = true),
    KEY("servers", K_STRLIST, struct conf_upstream, servers,
        .count_offset = offsetof(struct conf_upstream, n_servers), .required = true),
    KEY("resolve_interval", K_DURATION, struct conf_upstream, resolve_interval_ms, .min = 100,
        .max = SEC(86400)),
    KEY("balance", K_ENUM, struct conf_upstream, balance, .names = balance_names),
    KEY("connections_per_server", K_U32_AUTO, struct conf_upstream, connections_per_server,
        .min = 1, .max = 256, .auto_value = conns_by_backend),
    KEY("max_fails", K_U32, struct conf_upstream, max_fails, .min = 0, .max = 1000),
    KEY("fail_timeout", K_DURATION, struct conf_upstream, fail_timeout_ms, .min = 0, .max = SEC(3600)),
    KEY("retries", K_U32, struct conf_upstream, retries, .min = 0, .max = 10),
    KEY("tcp_keepalive", K_DURATION, struct conf_upstream, tcp_keepalive_ms, .min = 0, .max = SEC(7200)),
    KEY("health_check", K_MAP, struct conf_upstream, health_check, .sub = &health_spec),
    END_KEYS,
};
static const struct map_spec upstream_spec = {"upstream", upstream_keys,
                                              sizeof(struct conf_upstream), upstream_defaults,
                                              upstream_check};

/* routes */

/* A route's host as requests are matched against it (the request's host,
 * its port dropped): a name, "*." and a name, or a bracketed IPv6 address.
 * A port or a space could never match, and the route would sit unused. */
static bool route_host_valid(const char *h) {
  size_t n = strlen(h);
  if (h[0] == '[')
    return n > 2 && h[n - 1] == ']' && strspn(h + 1, "0123456789abcdefABCDEF:.") == n - 2;
  if (h[0] == '*' && h[1] == '.') h += 2, n -= 2;
  return n > 0 && n <= 253 && strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._") == n;
}

static int route_check(struct parse_ctx *ctx, void *obj, const yaml_node_t *node) {
  struct conf_route *r = obj;
  if (r->host && !route_host_valid(r->host))
    return fail_at(ctx, node, "route host \"%s\" must be a name such as api.example.com or *.example.com, "
                              "without a port", r->host);
  if (r->path_prefix == NULL) r->path_prefix = strdup("/");
  if (r->path_prefix[0] != '/') return fail_at(ctx, node, "path_prefix must start with \"/\"");
  size_t n = strlen(r->path_prefix);
  if (r->strip_prefix && (n < 2 || r->path_prefix[n - 1] != '/'))
    return fail_at(ctx, node, "strip_prefix needs a path_prefix that ends with \"/\", such as /api/");
  return 0;
}

/* A route's own limits and timeouts: the top-level keys of the same names
 * (bounds included); what it leaves out is the top level's. */
#define INHERITED UINT64_MAX
static const struct key_spec route_limits_keys[] = {
    KEY("max_body_size", K_SIZE, struct conf_route, limits.max_body_size, .min = 0, .max = INHERITED - 1),
    END_KEYS,
};
static const struct map_spec route_limits_spec = {"route limits", route_limits_keys, 0, NULL, NULL};

static const struct key_spec route_timeouts_keys[] = {
    KEY("response_header", K_DURATION, struct conf_route, limits.response_header_timeout_ms, .min = 10,
        .max = SEC(86400)),
    KEY("idle", K_DURATION, struct conf_route, limits.idle_timeout_ms, .min = 10, .max = SEC(86400)),
    KEY("websocket_idle", K_DURATION, struct conf_route, limits.websocket_idle_timeout_ms, .min = 10,
        .max = SEC(7 * 86400)),
    END_KEYS,
};
static const struct map_spec route_timeouts_spec = {"route timeouts", route_timeouts_keys, 0, NULL, NULL};

static void route_defaults(void *obj) {
  struct conf_route *r = obj;
  r->limits = (struct conf_exchange_limits){INHERITED, INHERITED, INHERITED, INHERITED};
}

static void inherit(uint64_t *value, uint64_t from_top_level) {
  if (*value == INHERITED) *value = from_top_level;
}

/* Once the whole file is read: what a route left out is the top level's. */
static void route_inherit(struct conf_route *r, const struct conf_exchange_limits *top) {
  inherit(&r->limits.max_body_size, top->max_body_size);
  inherit(&r->limits.response_header_timeout_ms, top->response_header_timeout_ms);
  inherit(&r->limits.idle_timeout_ms, top->idle_timeout_ms);
  inherit(&r->limits.websocket_idle_timeout_ms, top->websocket_idle_timeout_ms);
}

static const struct key_spec route_keys[] = {
    KEY("host", K_STR, struct conf_route, host),
    KEY("path_prefix", K_STR, struct conf_route, path_prefix),
    KEY("upstream", K_STR, struct conf_route, upstream, .required = true),
    KEY("strip_prefix", K_BOOL, struct conf_route, strip_prefix),
    SECTION("limits", route_limits_spec),
    SECTION("timeouts", route_timeouts_spec),
    END_KEYS,
};
static const struct map_spec route_spec = {"route", route_keys, sizeof(struct conf_route), route_defaults,
                                           route_check};

/* sections of the top level that group settings */
static const struct key_spec limits_keys[] = {
    KEY("max_connections", K_U32, struct gw_conf, max_connections, .min = 1, .max = 10000000),
    KEY("max_connections_per_ip", K_U32, struct gw_conf, max_connections_per_ip, .min = 0, .max = 10000000),
    KEY("max_header_bytes", K_SIZE, struct gw_conf, max_header_bytes, .min = 1024, .max = 16 << 20),
    KEY("max_header_count", K_U32, struct gw_conf, max_header_count, .min = 8, .max = 10000),
    KEY("max_body_size", K_SIZE, struct gw_conf, exchange.max_body_size, .min = 0, .max = UINT64_MAX),
    KEY("body_buffer", K_SIZE, struct gw_conf, body_buffer, .min = 16384, .max = 64 << 20),
    KEY("h2_max_concurrent_streams", K_U32, struct gw_conf, h2_max_concurrent_streams, .min = 1,
        .max = 100000),
    END_KEYS,
};
static const struct map_spec limits_spec = {"limits", limits_keys, 0, NULL, NULL};

static const struct key_spec timeouts_keys[] = {
    KEY("client_header", K_DURATION, struct gw_conf, client_header_timeout_ms, .min = 100, .max = SEC(3600)),
    KEY("keepalive", K_DURATION, struct gw_conf, keepalive_timeout_ms, .min = 0, .max = SEC(86400)),
    KEY("connect", K_DURATION, struct gw_conf, connect_timeout_ms, .min = 10, .max = SEC(600)),
    KEY("response_header", K_DURATION, struct gw_conf, exchange.response_header_timeout_ms, .min = 10,
        .max = SEC(86400)),
    KEY("idle", K_DURATION, struct gw_conf, exchange.idle_timeout_ms, .min = 10, .max = SEC(86400)),
    KEY("websocket_idle", K_DURATION, struct gw_conf, exchange.websocket_idle_timeout_ms, .min = 10,
        .max = SEC(7 * 86400)),
    KEY("graceful_shutdown", K_DURATION, struct gw_conf, graceful_timeout_ms, .min = 0, .max = SEC(86400)),
    END_KEYS,
};
static const struct map_spec timeouts_spec = {"timeouts", timeouts_keys, 0, NULL, NULL};

static const struct key_spec http2_keys[] = {
    KEY("stream_window", K_SIZE32, struct gw_conf, h2_stream_window, .min = 65535, .max = 0x7fffffff),
    KEY("connection_window", K_SIZE32, struct gw_conf, h2_connection_window, .min = 65535, .max = 0x7fffffff),
    END_KEYS,
};
static const struct map_spec http2_spec = {"http2", http2_keys, 0, NULL, NULL};

static const struct key_spec alt_svc_keys[] = {
    KEY("enabled", K_BOOL, struct gw_conf, alt_svc),
    KEY("max_age", K_DURATION, struct gw_conf, alt_svc_max_age, .min = 0, .max = SEC(31536000)),
    END_KEYS,
};
static const struct map_spec alt_svc_spec = {"alt_svc", alt_svc_keys, 0, NULL, NULL};

static const struct key_spec forwarding_keys[] = {
    KEY("trusted_proxies", K_CIDRS, struct gw_conf, trusted_proxies),
    KEY("forwarded_header", K_BOOL, struct gw_conf, forwarded_header),
    END_KEYS,
};
static const struct map_spec forwarding_spec = {"forwarding", forwarding_keys, 0, NULL, NULL};

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int quic_check(struct parse_ctx *ctx, void *obj, const yaml_node_t *node) {
  struct conf_quic *q = obj;
  if (q->secret) {
    if (strlen(q->secret) != 64)
      return fail_at(ctx, node, "quic secret must be 64 hex digits (32 bytes)");
    for (int i = 0; i < 32; i++) {
      int hi = hexval(q->secret[2 * i]), lo = hexval(q->secret[2 * i + 1]);
      if (hi < 0 || lo < 0) return fail_at(ctx, node, "quic secret must be 64 hex digits (32 bytes)");
      q->secret_bytes[i] = (uint8_t)(hi * 16 + lo);
    }
    q->secret_set = true;
  }
  for (size_t i = 0; i < q->n_early_data_methods; i++)
    for (char *m = q->early_data_methods[i]; *m; m++)
      if (*m < 'A' || *m > 'Z') return fail_at(ctx, node, "early_data_methods are upper-case methods such as GET");
  return 0;
}

static void quic_defaults(void *obj) {
  struct conf_quic *q = obj;
  q->retry = RETRY_AUTO;
  q->retry_threshold = 200;
  q->max_connections = 100000;
  q->max_streams_bidi = 100;
  q->stream_window = 1 << 20;
  q->connection_window = 16 << 20;
  q->max_field_section_size = 64 * 1024;
  q->qpack_table_capacity = 4096;
  q->qpack_blocked_streams = 100;
  q->idle_timeout_ms = SEC(30);
  q->handshake_timeout_ms = SEC(10);
  q->early_data = true;
  q->socket_receive_buffer = 8 << 20;
  q->socket_send_buffer = 8 << 20;
  q->gso = true;
  q->congestion_control = CC_CUBIC;
  q->stateless_reset_rate = 100;
  q->version_negotiation_rate = 100;
}

static const struct key_spec quic_keys[] = {
    KEY("secret", K_STR, struct conf_quic, secret),
    KEY("retry", K_ENUM, struct conf_quic, retry, .names = retry_names),
    KEY("retry_threshold", K_U32, struct conf_quic, retry_threshold, .min = 0, .max = 10000000),
    KEY("max_connections", K_U32, struct conf_quic, max_connections, .min = 1, .max = 10000000),
    KEY("max_streams_bidi", K_U32, struct conf_quic, max_streams_bidi, .min = 1, .max = 100000),
    KEY("stream_window", K_SIZE, struct conf_quic, stream_window, .min = 16384, .max = 1u << 30),
    KEY("connection_window", K_SIZE, struct conf_quic, connection_window, .min = 16384, .max = 1ull << 32),
    KEY("max_field_section_size", K_SIZE, struct conf_quic, max_field_section_size, .min = 1024, .max = 16 << 20),
    KEY("qpack_table_capacity", K_SIZE, struct conf_quic, qpack_table_capacity, .min = 0, .max = 1 << 20),
    KEY("qpack_blocked_streams", K_U32, struct conf_quic, qpack_blocked_streams, .min = 0, .max = 10000),
    KEY("idle_timeout", K_DURATION, struct conf_quic, idle_timeout_ms, .min = 100, .max = SEC(3600)),
    KEY("handshake_timeout", K_DURATION, struct conf_quic, handshake_timeout_ms, .min = 100, .max = SEC(600)),
    KEY("early_data", K_BOOL, struct conf_quic, early_data),
    KEY("early_data_methods", K_STRLIST, struct conf_quic, early_data_methods,
        .count_offset = offsetof(struct conf_quic, n_early_data_methods)),
    KEY("socket_receive_buffer", K_SIZE, struct conf_quic, socket_receive_buffer, .min = 65536, .max = 1u << 30),
    KEY("socket_send_buffer", K_SIZE, struct conf_quic, socket_send_buffer, .min = 65536, .max = 1u << 30),
    KEY("gso", K_BOOL, struct conf_quic, gso),
    KEY("congestion_control", K_ENUM, struct conf_quic, congestion_control, .names = cc_names),
    KEY("stateless_reset_rate", K_U32, struct conf_quic, stateless_reset_rate, .min = 0, .max = 1000000),
    KEY("version_negotiation_rate", K_U32, struct conf_quic, version_negotiation_rate, .min = 0, .max = 1000000),
    KEY("qlog_dir", K_DIR, struct conf_quic, qlog_dir),
    END_KEYS,
};
static const struct map_spec quic_spec = {"quic", quic_keys, 0, quic_defaults, quic_check};

static const struct key_spec admin_keys[] = {
    KEY("address", K_HOSTPORT, struct gw_conf, admin, .required = true),
    END_KEYS,
};
static const struct map_spec admin_spec = {"admin", admin_keys, 0, NULL, NULL};

static const struct key_spec log_keys[] = {
    KEY("error_log", K_STR, struct gw_conf, error_log),
    KEY("level", K_LOGLEVEL, struct gw_conf, log_level),
    KEY("access_log", K_STR, struct gw_conf, access_log),
    KEY("access_log_format", K_ENUM, struct gw_conf, access_log_format, .names = log_format_names),
    END_KEYS,
};
static const struct map_spec log_spec = {"log", log_keys, 0, NULL, NULL};

/* CPUs in this process's affinity mask: what taskset and container cpusets
 * allow, not every CPU of the host. */
static uint32_t usable_cpus(uint32_t max) {
  cpu_set_t set;
  int n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
  if (n < 1) n = 1;
  return (uint32_t)n > max ? max : (uint32_t)n;
}

static void top_defaults(void *obj) {
  struct gw_conf *c = obj;
  c->log_level = H3G_LOG_INFO;
  c->access_log_format = ACCESS_LOG_COMBINED;
  c->workers = 1;
  c->resolver_timeout_ms = SEC(5);
  c->max_connections = 100000;
  c->max_header_bytes = 64 * 1024;
  c->max_header_count = 100;
  c->body_buffer = 256 * 1024;
  c->h2_max_concurrent_streams = 100;
  c->client_header_timeout_ms = SEC(10);
  c->keepalive_timeout_ms = SEC(75);
  c->connect_timeout_ms = SEC(5);
  c->exchange.response_header_timeout_ms = SEC(60);
  c->exchange.idle_timeout_ms = SEC(60);
  c->exchange.websocket_idle_timeout_ms = SEC(3600);
  c->graceful_timeout_ms = SEC(30);
  c->h2_stream_window = 1 << 20;
  c->h2_connection_window = 16 << 20;
  c->alt_svc = true;
  c->alt_svc_max_age = 86400 * 1000ull;
  c->forwarded_header = true;
  quic_defaults(&c->quic);
}

static const struct key_spec top_keys[] = {
    KEY("workers", K_U32_AUTO, struct gw_conf, workers, .min = 1, .max = GW_MAX_WORKERS,
        .auto_value = usable_cpus),
    KEY("resolver", K_HOSTPORT, struct gw_conf, resolver),
    KEY("resolver_timeout", K_DURATION, struct gw_conf, resolver_timeout_ms, .min = 100, .max = SEC(60)),
    SECTION("log", log_spec),
    SECTION("limits", limits_spec),
    SECTION("timeouts", timeouts_spec),
    SECTION("http2", http2_spec),
    SECTION("alt_svc", alt_svc_spec),
    SECTION("forwarding", forwarding_spec),
    KEY("quic", K_MAP, struct gw_conf, quic, .sub = &quic_spec),
    SECTION("admin", admin_spec),
    KEY("listen", K_LIST, struct gw_conf, listens, .sub = &listen_spec,
        .count_offset = offsetof(struct gw_conf, n_listens), .required = true),
    KEY("upstreams", K_LIST, struct gw_conf, upstreams, .sub = &upstream_spec,
        .count_offset = offsetof(struct gw_conf, n_upstreams), .required = true),
    KEY("routes", K_LIST, struct gw_conf, routes, .sub = &route_spec,
        .count_offset = offsetof(struct gw_conf, n_routes), .required = true),
    END_KEYS,
};
static const struct map_spec top_spec = {"top level", top_keys, 0, top_defaults, NULL};

/* ---------------------------------------------------------------------------
 * Scalars.
 */
static int parse_bool(const char *v, bool *out) {
  static const char *const yes[] = {"true", "yes", "on", "1"};
  static const char *const no[] = {"false", "no", "off", "0"};
  for (size_t i = 0; i < 4; i++) {
    if (strcasecmp(v, yes[i]) == 0) return *out = true, 0;
    if (strcasecmp(v, no[i]) == 0) return *out = false, 0;
  }
  return -1;
}

static int parse_uint(const char *v, uint64_t *out) {
  char *end;
  if (v[0] < '0' || v[0] > '9') return -1;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || *end) return -1;
  *out = x;
  return 0;
}

static char *resolve_path(struct parse_ctx *ctx, const char *v) {
  if (v[0] == '/') return strdup(v);
  size_t n = strlen(ctx->dir) + strlen(v) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", ctx->dir, v);
  return p;
}

/* A folder the gateway writes files into, found wanting at start-up (with
 * the line that names it) rather than once per file later. */
static int check_writable_dir(struct parse_ctx *ctx, const struct key_spec *k, const yaml_node_t *node,
                              const char *path) {
  struct stat st;
  if (stat(path, &st) != 0)
    return fail_at(ctx, node, "\"%s\": %s: %s", k->name, path, strerror(errno));
  if (!S_ISDIR(st.st_mode)) return fail_at(ctx, node, "\"%s\": %s is not a folder", k->name, path);
  if (access(path, W_OK | X_OK) != 0)
    return fail_at(ctx, node, "\"%s\": cannot write in %s: %s", k->name, path, strerror(errno));
  return 0;
}

static void format_duration(uint64_t ms, char *buf, size_t n) {
  if (ms % 1000 == 0) snprintf(buf, n, "%llus", (unsigned long long)(ms / 1000));
  else snprintf(buf, n, "%llums", (unsigned long long)ms);
}

static int apply_scalar(struct parse_ctx *ctx, const struct key_spec *k, char *base,
                        const yaml_node_t *node) {
  const char *v = scalar(node);
  if (v == NULL)
    return fail_at(ctx, node, "\"%s\" must be a single value, not %s", k->name, node_kind(node));
  void *field = base + k->offset;
  uint64_t u;
  char lo[32], hi[32];
  switch (k->type) {
  case K_STR:
  case K_HOSTPORT:
    if (k->type == K_HOSTPORT) {
      struct h3g_hostport hp;
      const char *why;
      if (h3g_hostport_parse(v, &hp, &why) != 0)
        return fail_at(ctx, node, "\"%s\": \"%s\" is not an address: %s", k->name, v, why);
    }
    free(*(char **)field);
    *(char **)field = strdup(v);
    return 0;
  case K_PATH:
  case K_DIR:
    free(*(char **)field);
    *(char **)field = resolve_path(ctx, v);
    if (k->type == K_DIR && *(char **)field) return check_writable_dir(ctx, k, node, *(char **)field);
    return 0;
  case K_BOOL:
    if (parse_bool(v, (bool *)field) != 0)
      return fail_at(ctx, node, "\"%s\" must be true or false, got \"%s\"", k->name, v);
    return 0;
  case K_U32:
  case K_U64:
    if (parse_uint(v, &u) != 0)
      return fail_at(ctx, node, "\"%s\" must be a whole number, got \"%s\"", k->name, v);
    if (u < k->min || u > k->max)
      return fail_at(ctx, node, "\"%s\" must be from %llu to %llu, got %s", k->name,
                     (unsigned long long)k->min, (unsigned long long)k->max, v);
    if (k->type == K_U32) *(uint32_t *)field = (uint32_t)u;
    else *(uint64_t *)field = u;
    return 0;
  case K_DURATION:
    if (h3g_parse_duration_ms(v, &u) != 0)
      return fail_at(ctx, node, "\"%s\" must be a duration such as 500ms, 5s or 2m, got \"%s\"",
                     k->name, v);
    if (u < k->min || u > k->max) {
      format_duration(k->min, lo, sizeof lo);
      format_duration(k->max, hi, sizeof hi);
      return fail_at(ctx, node, "\"%s\" must be from %s to %s, got %s", k->name, lo, hi, v);
    }
    *(uint64_t *)field = u;
    return 0;
  case K_SIZE:
  case K_SIZE32:
    if (h3g_parse_size(v, &u) != 0)
      return fail_at(ctx, node, "\"%s\" must be a size such as 512, 64k or 1m, got \"%s\"",
                     k->name, v);
    if (u < k->min || u > k->max)
      return fail_at(ctx, node, "\"%s\" must be from %llu to %llu bytes, got %s", k->name,
                     (unsigned long long)k->min, (unsigned long long)k->max, v);
    if (k->type == K_SIZE32) *(uint32_t *)field = (uint32_t)u;
    else *(uint64_t *)field = u;
    return 0;
  case K_U32_AUTO:
    if (strcmp(v, "auto") == 0) {
      *(uint32_t *)field = k->auto_value((uint32_t)k->max);
      return 0;
    }
    if (parse_uint(v, &u) != 0 || u < k->min || u > k->max)
      return fail_at(ctx, node, "\"%s\" must be auto or from %llu to %llu, got \"%s\"", k->name,
                     (unsigned long long)k->min, (unsigned long long)k->max, v);
    *(uint32_t *)field = (uint32_t)u;
    return 0;
  case K_LOGLEVEL:
    if (h3g_log_level_parse(v, (enum h3g_log_level *)field) != 0)
      return fail_at(ctx, node, "\"%s\" must be debug, info, warning or error, got \"%s\"",
                     k->name, v);
    return 0;
  case K_ENUM:
    for (int i = 0; k->names[i]; i++) {
      if (strcmp(v, k->names[i]) == 0) {
        *(int *)field = i;
        return 0;
      }
    }
    {
      char choices[256] = "";
      for (int i = 0; k->names[i]; i++)
        snprintf(choices + strlen(choices), sizeof choices - strlen(choices), "%s%s",
                 i ? ", " : "", k->names[i]);
      return fail_at(ctx, node, "\"%s\" must be one of %s, got \"%s\"", k->name, choices, v);
    }
  default:
    return fail_at(ctx, node, "internal: \"%s\" is not a scalar key", k->name);
  }
}

/* ---------------------------------------------------------------------------
 * The walker.
 */
static int apply_map(struct parse_ctx *ctx, const struct map_spec *spec, char *base,
                     const yaml_node_t *node);

static int apply_strlist(struct parse_ctx *ctx, const struct key_spec *k, char *base,
                         const yaml_node_t *node) {
  if (node->type != YAML_SEQUENCE_NODE)
    return fail_at(ctx, node, "\"%s\" must be a list, not %s", k->name, node_kind(node));
  size_t n = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
  char **items = calloc(n ? n : 1, sizeof *items);
  if (items == NULL) return fail_at(ctx, node, "out of memory");
  *(char ***)(base + k->offset) = items;
  *(size_t *)(base + k->count_offset) = 0;
  for (size_t i = 0; i < n; i++) {
    yaml_node_t *item = yaml_document_get_node(ctx->doc, node->data.sequence.items.start[i]);
    const char *v = scalar(item);
    if (v == NULL) return fail_at(ctx, item, "each \"%s\" entry must be a single value", k->name);
    items[i] = strdup(v);
    (*(size_t *)(base + k->count_offset))++;
  }
  return 0;
}

static int apply_cidrs(struct parse_ctx *ctx, const struct key_spec *k, char *base,
                       const yaml_node_t *node) {
  struct cidr_list *list = (struct cidr_list *)(base + k->offset);
  memset(list, 0, sizeof *list);
  if (node->type == YAML_SCALAR_NODE) {
    const char *bad;
    if (cidr_list_parse(scalar(node), list, &bad) != 0)
      return fail_at(ctx, node, "\"%s\": bad address or network at \"%s\"", k->name, bad);
    return 0;
  }
  if (node->type != YAML_SEQUENCE_NODE)
    return fail_at(ctx, node, "\"%s\" must be a list of addresses or networks", k->name);
  for (yaml_node_item_t *it = node->data.sequence.items.start; it < node->data.sequence.items.top; it++) {
    yaml_node_t *item = yaml_document_get_node(ctx->doc, *it);
    const char *v = scalar(item);
    if (v == NULL || cidr_list_add(list, v) != 0)
      return fail_at(ctx, item, "\"%s\": \"%s\" is not an address or network (such as 10.0.0.0/8)",
                     k->name, v ? v : "");
  }
  return 0;
}

static int apply_list(struct parse_ctx *ctx, const struct key_spec *k, char *base,
                      const yaml_node_t *node) {
  if (node->type != YAML_SEQUENCE_NODE)
    return fail_at(ctx, node, "\"%s\" must be a list, not %s", k->name, node_kind(node));
  size_t n = (size_t)(node->data.sequence.items.top - node->data.sequence.items.start);
  char *items = calloc(n ? n : 1, k->sub->size);
  if (items == NULL) return fail_at(ctx, node, "out of memory");
  *(char **)(base + k->offset) = items;
  *(size_t *)(base + k->count_offset) = n;
  for (size_t i = 0; i < n; i++) {
    yaml_node_t *item = yaml_document_get_node(ctx->doc, node->data.sequence.items.start[i]);
    char *obj = items + i * k->sub->size;
    if (k->sub->defaults) k->sub->defaults(obj);
    if (apply_map(ctx, k->sub, obj, item) != 0) return -1;
  }
  return 0;
}

static const struct key_spec *find_key(const struct map_spec *spec, const char *name) {
  for (const struct key_spec *k = spec->keys; k->name; k++)
    if (strcmp(k->name, name) == 0) return k;
  return NULL;
}

static int unknown_key(struct parse_ctx *ctx, const struct map_spec *spec, const yaml_node_t *key,
                       const char *name) {
  char known[512] = "";
  for (const struct key_spec *k = spec->keys; k->name; k++)
    snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s",
             known[0] ? ", " : "", k->name);
  return fail_at(ctx, key, "unknown key \"%s\" in %s (expected one of: %s)", name, spec->what,
                 known);
}

static int apply_map(struct parse_ctx *ctx, const struct map_spec *spec, char *base,
                     const yaml_node_t *node) {
  if (node->type != YAML_MAPPING_NODE)
    return fail_at(ctx, node, "%s must be a mapping of keys, not %s", spec->what, node_kind(node));
  bool seen[64] = {false};
  for (yaml_node_pair_t *p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top; p++) {
    yaml_node_t *key = yaml_document_get_node(ctx->doc, p->key);
    yaml_node_t *value = yaml_document_get_node(ctx->doc, p->value);
    const char *name = scalar(key);
    if (name == NULL) return fail_at(ctx, key, "keys in %s must be plain names", spec->what);
    const struct key_spec *k = find_key(spec, name);
    if (k == NULL) return unknown_key(ctx, spec, key, name);
    size_t idx = (size_t)(k - spec->keys);
    if (seen[idx]) return fail_at(ctx, key, "key \"%s\" given twice in %s", name, spec->what);
    seen[idx] = true;
    int rc;
    switch (k->type) {
    case K_MAP:
      if (k->sub->defaults && k->offset) k->sub->defaults(base + k->offset);
      rc = apply_map(ctx, k->sub, base + k->offset, value);
      break;
    case K_LIST: rc = apply_list(ctx, k, base, value); break;
    case K_STRLIST: rc = apply_strlist(ctx, k, base, value); break;
    case K_CIDRS: rc = apply_cidrs(ctx, k, base, value); break;
    default: rc = apply_scalar(ctx, k, base, value); break;
    }
    if (rc != 0) return rc;
  }
  for (const struct key_spec *k = spec->keys; k->name; k++)
    if (k->required && !seen[k - spec->keys])
      return fail_at(ctx, node, "%s needs the key \"%s\"", spec->what, k->name);
  return spec->check ? spec->check(ctx, base, node) : 0;
}

/* ---------------------------------------------------------------------------
 * Cross-checks.
 */
static const yaml_node_t *top_value(struct parse_ctx *ctx, const char *name, size_t index) {
  yaml_node_t *root = yaml_document_get_root_node(ctx->doc);
  for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
    const char *k = scalar(yaml_document_get_node(ctx->doc, p->key));
    if (k && strcmp(k, name) == 0) {
      yaml_node_t *v = yaml_document_get_node(ctx->doc, p->value);
      if (v->type == YAML_SEQUENCE_NODE && index < (size_t)(v->data.sequence.items.top - v->data.sequence.items.start))
        return yaml_document_get_node(ctx->doc, v->data.sequence.items.start[index]);
      return v;
    }
  }
  return root;
}

static int cross_check(struct parse_ctx *ctx, struct gw_conf *c) {
  for (size_t i = 0; i < c->n_listens; i++)
    for (size_t j = 0; j < i; j++)
      if (strcmp(c->listens[i].addr.host, c->listens[j].addr.host) == 0 &&
          c->listens[i].addr.port == c->listens[j].addr.port)
        return fail_at(ctx, top_value(ctx, "listen", i), "listen address %s is given twice",
                       c->listens[i].address);
  for (size_t i = 0; i < c->n_upstreams; i++)
    for (size_t j = 0; j < i; j++)
      if (strcmp(c->upstreams[i].name, c->upstreams[j].name) == 0)
        return fail_at(ctx, top_value(ctx, "upstreams", i), "upstream name \"%s\" is used twice",
                       c->upstreams[i].name);
  for (size_t i = 0; i < c->n_routes; i++) {
    struct conf_route *r = &c->routes[i];
    size_t j;
    for (j = 0; j < i; j++) {
      const struct conf_route *o = &c->routes[j];
      bool same_host = r->host && o->host ? strcasecmp(r->host, o->host) == 0 : r->host == o->host;
      if (same_host && strcmp(r->path_prefix, o->path_prefix) == 0)
        return fail_at(ctx, top_value(ctx, "routes", i),
                       "a route for %s%s%s and path_prefix \"%s\" is given twice (the second would never "
                       "be used)", r->host ? "host \"" : "any host", r->host ? r->host : "", r->host ? "\"" : "",
                       r->path_prefix);
    }
    for (j = 0; j < c->n_upstreams; j++)
      if (strcmp(c->upstreams[j].name, r->upstream) == 0) break;
    if (j == c->n_upstreams)
      return fail_at(ctx, top_value(ctx, "routes", i), "route names upstream \"%s\", which is not defined",
                     r->upstream);
    r->upstream_index = j;
    route_inherit(r, &c->exchange);
  }
  if (c->n_listens == 0) return fail_at(ctx, top_value(ctx, "listen", 0), "listen has no entries");
  if (c->n_routes == 0) return fail_at(ctx, top_value(ctx, "routes", 0), "routes has no entries");
  return 0;
}

/* ---------------------------------------------------------------------------
 * Loading.
 */
static int read_document(struct parse_ctx *ctx, FILE *f, yaml_document_t *doc) {
  yaml_parser_t parser;
  yaml_parser_initialize(&parser);
  yaml_parser_set_input_file(&parser, f);
  int ok = yaml_parser_load(&parser, doc);
  if (!ok) {
    snprintf(ctx->err, ctx->err_size, "%s:%zu:%zu: YAML syntax error: %s%s%s", ctx->file,
             parser.problem_mark.line + 1, parser.problem_mark.column + 1,
             parser.problem ? parser.problem : "unknown", parser.context ? " " : "",
             parser.context ? parser.context : "");
  }
  yaml_parser_delete(&parser);
  if (!ok) return -1;
  if (yaml_document_get_root_node(doc) == NULL) {
    yaml_document_delete(doc);
    snprintf(ctx->err, ctx->err_size, "%s:1:1: the file is empty", ctx->file);
    return -1;
  }
  return 0;
}

struct gw_conf *conf_load(const char *path, char *err, size_t err_size) {
  struct parse_ctx ctx = {.file = path, .err = err, .err_size = err_size};
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    snprintf(err, err_size, "%s:1:1: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  yaml_document_t doc;
  int rc = read_document(&ctx, f, &doc);
  fclose(f);
  if (rc != 0) return NULL;
  ctx.doc = &doc;
  char *copy = strdup(path);
  ctx.dir = strdup(dirname(copy));
  free(copy);
  struct gw_conf *c = calloc(1, sizeof *c);
  c->path = strdup(path);
  top_defaults(c);
  rc = apply_map(&ctx, &top_spec, (char *)c, yaml_document_get_root_node(&doc));
  if (rc == 0) rc = cross_check(&ctx, c);
  yaml_document_delete(&doc);
  free(ctx.dir);
  if (rc != 0) {
    conf_free(c);
    return NULL;
  }
  return c;
}

static void free_strs(char **v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

void conf_free(struct gw_conf *c) {
  if (c == NULL) return;
  for (size_t i = 0; i < c->n_listens; i++) {
    struct conf_listen *l = &c->listens[i];
    free(l->address);
    free(l->certificate);
    free(l->key);
    for (size_t j = 0; j < l->n_sni_certs; j++) {
      free(l->sni_certs[j].certificate);
      free(l->sni_certs[j].key);
    }
    free(l->sni_certs);
  }
  free(c->listens);
  for (size_t i = 0; i < c->n_upstreams; i++) {
    struct conf_upstream *u = &c->upstreams[i];
    free(u->name);
    free_strs(u->servers, u->n_servers);
    free(u->addrs);
    free(u->health_check.path);
  }
  free(c->upstreams);
  for (size_t i = 0; i < c->n_routes; i++) {
    free(c->routes[i].host);
    free(c->routes[i].path_prefix);
    free(c->routes[i].upstream);
  }
  free(c->routes);
  free(c->path);
  free(c->error_log);
  free(c->access_log);
  free(c->resolver);
  free(c->quic.secret);
  free(c->admin);
  free(c->quic.qlog_dir);
  free_strs(c->quic.early_data_methods, c->quic.n_early_data_methods);
  free(c);
}
