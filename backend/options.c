#include "options.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "units.h"

#define H3GATE_WORKER_VERSION "0.1.0"

static const char usage_text[] =
    "usage: h3gate-worker [options] MODULE:ATTR\n"
    "\n"
    "Serves an ASGI 3.0 application over HTTP/2 (h2c, prior knowledge) and\n"
    "HTTP/1.1 on the same port, in a pool of worker processes.\n"
    "\n"
    "  --bind HOST:PORT           listen address, repeatable (default 127.0.0.1:8000)\n"
    "  --host HOST --port PORT    the same as --bind HOST:PORT, as uvicorn has them\n"
    "  --uds PATH                 also listen on a unix socket\n"
    "  --workers N                worker processes (default: $H3GATE_WORKERS, $WEB_CONCURRENCY or CPUs)\n"
    "  --app-dir DIR              put DIR first on sys.path (default: .)\n"
    "  --factory                  MODULE:ATTR is a factory returning the app\n"
    "  --reload                   restart the workers when a .py file in --app-dir (and\n"
    "                             below) changes; for development\n"
    "  --reload-dir DIR           watch DIR instead, repeatable (implies --reload)\n"
    "  --root-path PATH           ASGI root_path (the app is mounted below PATH)\n"
    "  --forwarded-allow-ips LIST peers trusted for X-Forwarded-*, Forwarded and Via\n"
    "                             (default: 127.0.0.1,::1,unix; \"*\" trusts everyone)\n"
    "  --lifespan auto|on|off     run the lifespan protocol (default auto)\n"
    "  --loop auto|asyncio|uvloop event loop (default auto: uvloop when installed)\n"
    "  --max-requests N           recycle a worker after N requests (default 0: never)\n"
    "  --limit-concurrency N      503 for requests past N running at once in a worker\n"
    "                             process (default 0: no limit)\n"
    "  --graceful-timeout SECONDS time in-flight requests get on stop (default 30)\n"
    "  --timeout-keep-alive SECS  close idle connections after this (default 5)\n"
    "  --timeout-request-head SECS a request head must be in within this, else 408\n"
    "                             and a closed connection (default 30)\n"
    "  --limit-request-head BYTES largest request head (default 65536)\n"
    "  --ws-max-size BYTES        largest incoming WebSocket message (default 16m)\n"
    "  --ws-ping-interval SECS    ping a quiet WebSocket this often (default 20; 0: never)\n"
    "  --ws-ping-timeout SECS     close it (1011) when no answer comes this long (default 20)\n"
    "  --h2-max-concurrent-streams N (default 256)\n"
    "  --h2-stream-window BYTES   per-stream receive window (default 1MiB)\n"
    "  --h2-connection-window BYTES (default 16MiB)\n"
    "  --backlog N                listen backlog (default 2048)\n"
    "  --log-level LEVEL          critical|error|warning|info|debug (default info)\n"
    "  --access-log / --no-access-log   log each request (default off)\n"
    "  --help, --version\n"
    "\n"
    "uvicorn's --timeout-graceful-shutdown and --limit-max-requests are accepted too.\n"
    "\n"
    "Signals: TERM/INT graceful stop, HUP rolling restart with fresh app code,\n"
    "TTIN/TTOU one worker more/less.\n";

enum {
  OPT_BIND = 256, OPT_UDS, OPT_WORKERS, OPT_APP_DIR, OPT_FACTORY, OPT_ROOT_PATH, OPT_FWD,
  OPT_LIFESPAN, OPT_LOOP, OPT_MAX_REQ, OPT_GRACEFUL, OPT_KEEPALIVE, OPT_HEAD, OPT_STREAMS,
  OPT_SWIN, OPT_CWIN, OPT_BACKLOG, OPT_LOG_LEVEL, OPT_ACCESS, OPT_NO_ACCESS, OPT_HELP,
  OPT_VERSION, OPT_WS_MAX, OPT_WS_PING, OPT_WS_PING_TIMEOUT, OPT_RELOAD, OPT_RELOAD_DIR,
  OPT_HOST, OPT_PORT, OPT_LIMIT_CONCURRENCY, OPT_HEAD_TIMEOUT,
};

static const struct option long_opts[] = {
    {"bind", required_argument, NULL, OPT_BIND},
    {"uds", required_argument, NULL, OPT_UDS},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"app-dir", required_argument, NULL, OPT_APP_DIR},
    {"factory", no_argument, NULL, OPT_FACTORY},
    {"reload", no_argument, NULL, OPT_RELOAD},
    {"reload-dir", required_argument, NULL, OPT_RELOAD_DIR},
    {"root-path", required_argument, NULL, OPT_ROOT_PATH},
    {"forwarded-allow-ips", required_argument, NULL, OPT_FWD},
    {"lifespan", required_argument, NULL, OPT_LIFESPAN},
    {"loop", required_argument, NULL, OPT_LOOP},
    {"max-requests", required_argument, NULL, OPT_MAX_REQ},
    {"limit-max-requests", required_argument, NULL, OPT_MAX_REQ},
    {"limit-concurrency", required_argument, NULL, OPT_LIMIT_CONCURRENCY},
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, OPT_PORT},
    {"timeout-graceful-shutdown", required_argument, NULL, OPT_GRACEFUL},
    {"graceful-timeout", required_argument, NULL, OPT_GRACEFUL},
    {"timeout-keep-alive", required_argument, NULL, OPT_KEEPALIVE},
    {"timeout-request-head", required_argument, NULL, OPT_HEAD_TIMEOUT},
    {"limit-request-head", required_argument, NULL, OPT_HEAD},
    {"ws-max-size", required_argument, NULL, OPT_WS_MAX},
    {"ws-ping-interval", required_argument, NULL, OPT_WS_PING},
    {"ws-ping-timeout", required_argument, NULL, OPT_WS_PING_TIMEOUT},
    {"h2-max-concurrent-streams", required_argument, NULL, OPT_STREAMS},
    {"h2-stream-window", required_argument, NULL, OPT_SWIN},
    {"h2-connection-window", required_argument, NULL, OPT_CWIN},
    {"backlog", required_argument, NULL, OPT_BACKLOG},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"access-log", no_argument, NULL, OPT_ACCESS},
    {"no-access-log", no_argument, NULL, OPT_NO_ACCESS},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "h3gate-worker: error: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nTry 'h3gate-worker --help'.\n");
  return 2;
}

static int parse_uint(const char *text, uint64_t max, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(text, &end, 10);
  if (errno || *end || end == text || v > max || text[0] == '-') return -1;
  *out = v;
  return 0;
}

static int parse_seconds(const char *text, uint64_t *ms) {
  return h3g_parse_duration_ms(text, ms);
}

static bool one_of(const char *v, const char *a, const char *b, const char *c) {
  return strcmp(v, a) == 0 || strcmp(v, b) == 0 || strcmp(v, c) == 0;
}

static int default_workers(void) {
  const char *env = getenv("H3GATE_WORKERS");
  if (env == NULL) env = getenv("WEB_CONCURRENCY");
  uint64_t n;
  if (env && parse_uint(env, 1024, &n) == 0 && n > 0) return (int)n;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  return cpus > 0 ? (int)cpus : 1;
}

int options_parse(int argc, char **argv, struct worker_options *o) {
  memset(o, 0, sizeof *o);
  o->workers = default_workers();
  o->app_dir = ".";
  o->root_path = "";
  o->lifespan = "auto";
  o->loop = "auto";
  o->backlog = 2048;
  o->graceful_timeout_s = 30;
  struct worker_config *c = &o->config;
  c->h2_max_concurrent_streams = 256;
  c->h2_stream_window = 1 << 20;
  c->h2_conn_window = 16 << 20;
  c->h2_max_frame_size = 64 * 1024;
  c->max_header_bytes = 64 * 1024;
  c->ws_max_size = 16u << 20;
  c->ws_ping_interval_ms = 20000; /* uvicorn's defaults */
  c->ws_ping_timeout_ms = 20000;
  c->keepalive_timeout_ms = 5000;
  c->head_timeout_ms = 30000;
  c->graceful_timeout_ms = 30000;
  const char *fwd = "127.0.0.1,::1,unix";
  const char *host = NULL, *port = NULL;
  uint64_t v;
  int opt;
  opterr = 0;
  while ((opt = getopt_long(argc, argv, "+", long_opts, NULL)) != -1) {
    switch (opt) {
    case OPT_BIND:
      if (o->n_binds == MAX_BINDS) return usage_error("at most %s --bind options", "8");
      o->binds[o->n_binds++] = optarg;
      break;
    case OPT_UDS: o->uds = optarg; break;
    case OPT_WORKERS:
      if (parse_uint(optarg, 1024, &v) != 0 || v == 0)
        return usage_error("--workers must be a number from 1 to 1024, got \"%s\"", optarg);
      o->workers = (int)v;
      break;
    case OPT_APP_DIR: o->app_dir = optarg; break;
    case OPT_FACTORY: o->factory = true; break;
    case OPT_RELOAD: o->reload = true; break;
    case OPT_RELOAD_DIR:
      if (o->n_reload_dirs == MAX_RELOAD_DIRS) return usage_error("at most %s --reload-dir options", "16");
      o->reload_dirs[o->n_reload_dirs++] = optarg;
      o->reload = true;
      break;
    case OPT_ROOT_PATH: o->root_path = optarg; break;
    case OPT_FWD: fwd = optarg; break;
    case OPT_LIFESPAN:
      if (!one_of(optarg, "auto", "on", "off"))
        return usage_error("--lifespan must be auto, on or off, got \"%s\"", optarg);
      o->lifespan = optarg;
      break;
    case OPT_LOOP:
      if (!one_of(optarg, "auto", "asyncio", "uvloop"))
        return usage_error("--loop must be auto, asyncio or uvloop, got \"%s\"", optarg);
      o->loop = optarg;
      break;
    case OPT_MAX_REQ:
      if (parse_uint(optarg, UINT64_MAX, &v) != 0)
        return usage_error("--max-requests must be a number, got \"%s\"", optarg);
      c->max_requests = v;
      break;
    case OPT_LIMIT_CONCURRENCY:
      if (parse_uint(optarg, UINT32_MAX, &v) != 0)
        return usage_error("--limit-concurrency must be a number, got \"%s\"", optarg);
      c->limit_concurrency = v;
      break;
    case OPT_HOST: host = optarg; break;
    case OPT_PORT:
      if (parse_uint(optarg, 65535, &v) != 0)
        return usage_error("--port must be a number from 0 to 65535, got \"%s\"", optarg);
      port = optarg;
      break;
    case OPT_GRACEFUL:
      if (parse_seconds(optarg, &c->graceful_timeout_ms) != 0)
        return usage_error("--graceful-timeout must be seconds, got \"%s\"", optarg);
      o->graceful_timeout_s = (double)c->graceful_timeout_ms / 1000;
      break;
    case OPT_KEEPALIVE:
      if (parse_seconds(optarg, &c->keepalive_timeout_ms) != 0)
        return usage_error("--timeout-keep-alive must be seconds, got \"%s\"", optarg);
      break;
    case OPT_HEAD_TIMEOUT:
      if (parse_seconds(optarg, &c->head_timeout_ms) != 0 || c->head_timeout_ms == 0)
        return usage_error("--timeout-request-head must be seconds above 0, got \"%s\"", optarg);
      break;
    case OPT_HEAD:
      if (h3g_parse_size(optarg, &v) != 0 || v < 1024 || v > (16u << 20))
        return usage_error("--limit-request-head must be 1k to 16m, got \"%s\"", optarg);
      c->max_header_bytes = v;
      break;
    case OPT_WS_MAX:
      if (h3g_parse_size(optarg, &v) != 0 || v < 125 || v > (1ull << 31))
        return usage_error("--ws-max-size must be 125 to 2g, got \"%s\"", optarg);
      c->ws_max_size = v;
      break;
    case OPT_WS_PING:
    case OPT_WS_PING_TIMEOUT:
      if (parse_seconds(optarg, opt == OPT_WS_PING ? &c->ws_ping_interval_ms : &c->ws_ping_timeout_ms) != 0)
        return usage_error("WebSocket ping times must be seconds, got \"%s\"", optarg);
      break;
    case OPT_STREAMS:
      if (parse_uint(optarg, 1u << 20, &v) != 0 || v == 0)
        return usage_error("--h2-max-concurrent-streams must be a positive number, got \"%s\"",
                           optarg);
      c->h2_max_concurrent_streams = (uint32_t)v;
      break;
    case OPT_SWIN:
    case OPT_CWIN:
      if (h3g_parse_size(optarg, &v) != 0 || v < 65535 || v > 0x7fffffff)
        return usage_error("window sizes must be 64k to 2g-1, got \"%s\"", optarg);
      if (opt == OPT_SWIN) c->h2_stream_window = (uint32_t)v;
      else c->h2_conn_window = (uint32_t)v;
      break;
    case OPT_BACKLOG:
      if (parse_uint(optarg, 65535, &v) != 0 || v == 0)
        return usage_error("--backlog must be a positive number, got \"%s\"", optarg);
      o->backlog = (int)v;
      break;
    case OPT_LOG_LEVEL: {
      enum h3g_log_level level;
      if (h3g_log_level_parse(optarg, &level) != 0)
        return usage_error("unknown --log-level \"%s\"", optarg);
      h3g_log_min_level = level;
      break;
    }
    case OPT_ACCESS: c->access_log = true; break;
    case OPT_NO_ACCESS: c->access_log = false; break;
    case OPT_HELP: fputs(usage_text, stdout); return 1;
    case OPT_VERSION: printf("h3gate-worker %s\n", H3GATE_WORKER_VERSION); return 1;
    default:
      return usage_error("unknown option \"%s\"", argv[optind - 1]);
    }
  }
  if (optind != argc - 1)
    return usage_error("%s", optind >= argc ? "the app (MODULE:ATTR) is missing"
                                            : "give exactly one app (MODULE:ATTR)");
  o->app = argv[optind];
  if (strchr(o->app, ':') == NULL)
    return usage_error("the app must be given as MODULE:ATTR, got \"%s\"", o->app);
  const char *bad;
  if (cidr_list_parse(fwd, &c->forwarded_allow, &bad) != 0)
    return usage_error("bad --forwarded-allow-ips entry at \"%s\"", bad);
  if (host || port) {
    if (o->n_binds == MAX_BINDS) return usage_error("at most %s --bind options", "8");
    static char host_port[300]; /* lives as long as the options */
    if (host == NULL) host = "127.0.0.1";
    if (port == NULL) port = "8000";
    bool ipv6 = strchr(host, ':') != NULL && host[0] != '[';
    int n = snprintf(host_port, sizeof host_port, ipv6 ? "[%s]:%s" : "%s:%s", host, port);
    if (n < 0 || n >= (int)sizeof host_port) return usage_error("--host \"%s\" is too long", host);
    o->binds[o->n_binds++] = host_port;
  }
  if (o->n_binds == 0 && o->uds == NULL) o->binds[o->n_binds++] = "127.0.0.1:8000";
  if (o->reload && o->n_reload_dirs == 0) o->reload_dirs[o->n_reload_dirs++] = o->app_dir;
  c->worker_count = (uint32_t)o->workers;
  return 0;
}
