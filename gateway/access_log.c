#include "access_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gw.h"
#include "log.h"
#include "xchg.h"

static int log_fd = -1;
static enum access_log_format log_format = ACCESS_LOG_OFF;

int access_log_open(const struct gw_conf *conf) {
  int fd = -1;
  enum access_log_format format = conf->access_log_format;
  if (conf->access_log == NULL || strcmp(conf->access_log, "off") == 0) {
    format = ACCESS_LOG_OFF;
  } else if (strcmp(conf->access_log, "-") == 0) {
    fd = dup(STDOUT_FILENO);
  } else {
    fd = open(conf->access_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
  }
  if (log_fd >= 0) close(log_fd);
  log_fd = fd;
  log_format = format;
  return 0;
}

static void escape(const char *s, char *out, size_t size) {
  h3g_log_escape(s ? s : "", s ? strlen(s) : 0, out, size);
}

static const char *req_field(const struct xchg *x, const char *name) {
  int i = hdr_find(&x->req, name, strlen(name), 0);
  return i >= 0 ? hdr_value(&x->req, i) : NULL;
}

void access_log_write(const struct xchg *x) {
  if (log_format == ACCESS_LOG_OFF || log_fd < 0) return;
  char method[32], path[2048], ua[512], referer[512], rid[256];
  escape(x->i_method >= 0 ? hdr_value(&x->req, x->i_method) : "-", method, sizeof method);
  escape(x->i_path >= 0 ? hdr_value(&x->req, x->i_path) : "-", path, sizeof path);
  escape(req_field(x, "user-agent"), ua, sizeof ua);
  escape(req_field(x, "referer"), referer, sizeof referer);
  escape(req_field(x, "x-request-id"), rid, sizeof rid);
  double ms = (double)xchg_duration_us(x) / 1000.0;
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  char line[4096], when[64];
  int n;
  int status = x->status ? x->status : 499; /* 499: the client left first, as nginx says */
  if (log_format == ACCESS_LOG_JSON) {
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    n = snprintf(line, sizeof line,
                 "{\"time\":\"%s\",\"client\":\"%s\",\"method\":\"%s\",\"path\":\"%s\","
                 "\"protocol\":\"%s\",\"status\":%d,\"bytes\":%llu,\"request_bytes\":%llu,"
                 "\"duration_ms\":%.3f,\"upstream\":\"%s\",\"attempts\":%u,\"request_id\":\"%s\","
                 "\"user_agent\":\"%s\"}\n",
                 when, x->client_ip, method, path, xchg_protocol_name(x), status,
                 (unsigned long long)x->resp_bytes, (unsigned long long)x->req_bytes, ms,
                 x->upstream_addr[0] ? x->upstream_addr : "-", x->attempts, rid, ua);
  } else {
    strftime(when, sizeof when, "%d/%b/%Y:%H:%M:%S +0000", &tm);
    n = snprintf(line, sizeof line,
                 "%s - - [%s] \"%s %s %s\" %d %llu \"%s\" \"%s\" rt=%.3f upstream=%s id=%s\n",
                 x->client_ip, when, method, path, xchg_protocol_name(x), status,
                 (unsigned long long)x->resp_bytes, referer[0] ? referer : "-", ua[0] ? ua : "-",
                 ms / 1000.0, x->upstream_addr[0] ? x->upstream_addr : "-", rid[0] ? rid : "-");
  }
  if (n > 0) {
    ssize_t rc = write(log_fd, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    (void)rc;
  }
}
