/* The gateway's configuration: YAML (libyaml) turned into immutable structs
 * through tables of keys, with defaults, bounds, and errors reported as
 * "file:line:column: what is wrong". Runtime code never sees YAML.
 * configs/gateway.yaml documents every key. */
#ifndef H3G_GATEWAY_CONFIG_H
#define H3G_GATEWAY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "addr.h"
#include "cidr.h"
#include "log.h"

enum balance_policy {
  BALANCE_LEAST_OUTSTANDING, /* power of two choices on in-flight requests */
  BALANCE_ROUND_ROBIN,
};

enum access_log_format {
  ACCESS_LOG_OFF,
  ACCESS_LOG_COMBINED,
  ACCESS_LOG_JSON,
};

/* A certificate chain and its key, as paths resolved against the config
 * file's folder. */
struct conf_cert {
  char *certificate;
  char *key;
};

struct conf_listen {
  char *address;            /* as written, for messages */
  struct h3g_hostport addr;
  bool tls;
  char *certificate;        /* the default one; resolved against the config file's folder */
  char *key;
  struct conf_cert *sni_certs; /* more, each served to clients whose SNI names it */
  size_t n_sni_certs;
  bool http3;               /* QUIC on the same port (default on; always off without TLS) */
  uint32_t http3_port;      /* 0: the listener's own port */
  bool alt_svc;             /* advertise h3 on this listener (default on) */
  uint32_t redirect_https;  /* cleartext: 308 to https on this port (0: serve as usual) */
};

struct conf_health_check {
  char *path;               /* NULL: active checks off */
  uint64_t interval_ms;
  uint64_t timeout_ms;
  uint32_t fails;           /* consecutive failures that mark a server down */
  uint32_t passes;          /* consecutive successes that bring it back */
};

/* connections_per_server "auto" (the default): one per worker process an
 * h3gate-worker announces, else AUTO_CONNS_UNANNOUNCED. */
enum { CONNS_PER_SERVER_AUTO = 0 };

struct conf_upstream {
  char *name;
  char **servers;           /* as written */
  struct h3g_hostport *addrs;
  size_t n_servers;
  uint64_t resolve_interval_ms;
  enum balance_policy balance;
  uint32_t connections_per_server; /* or CONNS_PER_SERVER_AUTO */
  uint32_t max_fails;       /* passive health: failures before ejection */
  uint64_t fail_timeout_ms; /* how long an ejected server rests */
  uint32_t retries;         /* other attempts for a request that never reached a server */
  uint64_t tcp_keepalive_ms; /* probe a connection this quiet; 0: never */
  struct conf_health_check health_check;
};

/* What a route may set for its own requests (an upload endpoint takes
 * larger bodies, a report endpoint answers slowly); the top level's are
 * the defaults, copied into each route that does not set its own. */
struct conf_exchange_limits {
  uint64_t max_body_size;             /* 0: unlimited */
  uint64_t response_header_timeout_ms;
  uint64_t idle_timeout_ms;
  uint64_t websocket_idle_timeout_ms; /* a WebSocket with no bytes either way */
};

struct conf_route {
  char *host;               /* NULL: any host */
  char *path_prefix;
  char *upstream;
  size_t upstream_index;
  bool strip_prefix;        /* the backend sees the path below path_prefix */
  struct conf_exchange_limits limits;
};

enum quic_retry_mode {
  RETRY_AUTO,   /* Retry only above retry_threshold new handshakes a second */
  RETRY_ALWAYS,
  RETRY_NEVER,
};

enum quic_cc {
  CC_CUBIC,
  CC_RENO,
  CC_BBR,
};

struct conf_quic {
  char *secret;             /* 64 hex digits; NULL: random at start (logged) */
  uint8_t secret_bytes[32];
  bool secret_set;
  enum quic_retry_mode retry;
  uint32_t retry_threshold;
  uint32_t max_connections;
  uint32_t max_streams_bidi;
  uint64_t stream_window;
  uint64_t connection_window;
  uint64_t max_field_section_size;
  uint64_t qpack_table_capacity;
  uint32_t qpack_blocked_streams;
  uint64_t idle_timeout_ms;
  uint64_t handshake_timeout_ms;
  bool early_data;
  char **early_data_methods;
  size_t n_early_data_methods;
  uint64_t socket_receive_buffer;
  uint64_t socket_send_buffer;
  bool gso;
  enum quic_cc congestion_control;
  uint32_t stateless_reset_rate; /* a second */
  uint32_t version_negotiation_rate;
  char *qlog_dir;           /* debugging only: qlog for every connection */
};

enum { GW_MAX_WORKERS = 64 }; /* a QUIC connection ID's first byte names its process */

struct gw_conf {
  char *path;               /* the config file */
  uint32_t workers;         /* gateway processes sharing the listeners (master.c) */
  /* logs */
  char *error_log;
  enum h3g_log_level log_level;
  char *access_log;
  enum access_log_format access_log_format;
  /* name resolution */
  char *resolver;           /* "ip:port"; NULL: /etc/resolv.conf */
  uint64_t resolver_timeout_ms;
  /* limits */
  uint32_t max_connections;
  uint32_t max_connections_per_ip; /* TCP and QUIC together, all processes; 0: no limit */
  uint64_t max_header_bytes;
  uint32_t max_header_count;
  struct conf_exchange_limits exchange; /* with the timeouts below: each route's defaults */
  uint64_t body_buffer;     /* per exchange and direction */
  uint32_t h2_max_concurrent_streams;
  /* timeouts */
  uint64_t client_header_timeout_ms;
  uint64_t keepalive_timeout_ms;
  uint64_t connect_timeout_ms;
  uint64_t graceful_timeout_ms;
  /* HTTP/2, both sides */
  uint32_t h2_stream_window;
  uint32_t h2_connection_window;
  /* Alt-Svc */
  bool alt_svc;
  uint64_t alt_svc_max_age;
  /* forwarding headers */
  struct cidr_list trusted_proxies;
  bool forwarded_header;    /* add RFC 7239 Forwarded */
  struct conf_quic quic;
  char *admin;              /* HOST:PORT of the admin listener; NULL: off */
  /* lists */
  struct conf_listen *listens;
  size_t n_listens;
  struct conf_upstream *upstreams;
  size_t n_upstreams;
  struct conf_route *routes;
  size_t n_routes;
};

/* The largest header block the gateway's HTTP/2 sessions may send: heads up
 * to max_header_bytes pass (nghttp2 stops at 64 KiB by default), with room
 * for the fields the gateway adds. */
static inline size_t gw_send_block_limit(const struct gw_conf *conf) {
  size_t limit = (size_t)conf->max_header_bytes + 16384;
  return limit > 65536 ? limit : 65536;
}

/* Loads and checks a config file. On error returns NULL and writes
 * "file:line:column: message" into err. */
struct gw_conf *conf_load(const char *path, char *err, size_t err_size);
void conf_free(struct gw_conf *conf);

#endif
