#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum h3g_log_level h3g_log_min_level = H3G_LOG_INFO;

static const char *log_program = "h3gate";
static int log_fd = STDERR_FILENO;

static const char *const level_names[] = {
    [H3G_LOG_DEBUG] = "debug",
    [H3G_LOG_INFO] = "info",
    [H3G_LOG_WARN] = "warning",
    [H3G_LOG_ERROR] = "error",
    [H3G_LOG_OFF] = "off",
};

void h3g_log_init(const char *program) { log_program = program; }

int h3g_log_open(const char *path) {
  if (path == NULL || strcmp(path, "-") == 0) {
    log_fd = STDERR_FILENO;
    return 0;
  }
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return -errno;
  if (log_fd != STDERR_FILENO) close(log_fd);
  log_fd = fd;
  return 0;
}

int h3g_log_level_parse(const char *name, enum h3g_log_level *out) {
  static const struct {
    const char *name;
    enum h3g_log_level level;
  } table[] = {
      {"trace", H3G_LOG_DEBUG}, {"debug", H3G_LOG_DEBUG},   {"info", H3G_LOG_INFO},
      {"warn", H3G_LOG_WARN},   {"warning", H3G_LOG_WARN},  {"error", H3G_LOG_ERROR},
      {"critical", H3G_LOG_ERROR}, {"off", H3G_LOG_OFF},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    if (strcasecmp(name, table[i].name) == 0) {
      *out = table[i].level;
      return 0;
    }
  }
  return -EINVAL;
}

void h3g_log_vwrite(enum h3g_log_level level, const char *fmt, va_list ap) {
  char line[4096];
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ [%s] %s[%d]: ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                   tm.tm_sec, (long)tv.tv_usec / 1000, level_names[level], log_program,
                   (int)getpid());
  if (n < 0) return;
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  if (m < 0) return;
  size_t len = (size_t)n + (size_t)m;
  if (len > sizeof line - 2) len = sizeof line - 2; /* truncated, still one line */
  line[len++] = '\n';
  /* One write(2) per line so lines from several processes never interleave. */
  ssize_t rc = write(log_fd, line, len);
  (void)rc;
}

void h3g_log_write(enum h3g_log_level level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  h3g_log_vwrite(level, fmt, ap);
  va_end(ap);
}

void h3g_describe_exit(int status, char *buf, size_t size) {
  if (WIFEXITED(status)) snprintf(buf, size, "exited with code %d", WEXITSTATUS(status));
  else if (WIFSIGNALED(status))
    snprintf(buf, size, "was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
  else snprintf(buf, size, "ended (status %d)", status);
}

/* Length of the valid UTF-8 sequence at s[0..n) (2 to 4), or 0 when the
 * bytes there are not one (RFC 3629: no overlongs, surrogates or values
 * past U+10FFFF). */
static size_t utf8_sequence(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
  if (len == 0 || len > n) return 0;
  for (size_t i = 1; i < len; i++)
    if ((s[i] & 0xc0) != 0x80) return 0;
  if (len == 3 && ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f))) return 0;
  if (len == 4 && ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] > 0x8f))) return 0;
  return len;
}

/* Bytes above 0x7f that are not UTF-8 were written raw: the log was then
 * not UTF-8, and JSON lines did not parse (log shippers drop them). */
void h3g_log_escape(const char *s, size_t len, char *out, size_t size) {
  const unsigned char *p = (const unsigned char *)s, *end = p + len;
  size_t o = 0;
  while (p < end && o + 7 < size) {
    size_t seq = *p >= 0x80 ? utf8_sequence(p, (size_t)(end - p)) : 0;
    if (seq > 0) {
      memcpy(out + o, p, seq);
      o += seq, p += seq;
      continue;
    }
    unsigned char c = *p++;
    if (c == '"' || c == '\\') {
      out[o++] = '\\';
      out[o++] = (char)c;
    } else if (c < 0x20 || c >= 0x7f) {
      o += (size_t)snprintf(out + o, size - o, "\\u%04x", c);
    } else {
      out[o++] = (char)c;
    }
  }
  out[o] = '\0';
}
