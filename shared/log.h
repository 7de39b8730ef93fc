/* One logger for both programs: levels, a program/pid prefix, stderr or a file.
 * Callers add their own context prefix (connection id, stream id, protocol). */
#ifndef H3G_LOG_H
#define H3G_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum h3g_log_level {
  H3G_LOG_DEBUG,
  H3G_LOG_INFO,
  H3G_LOG_WARN,
  H3G_LOG_ERROR,
  H3G_LOG_OFF,
};

extern enum h3g_log_level h3g_log_min_level;

void h3g_log_init(const char *program);
/* Redirects the log to a file (append); NULL or "-" means stderr. 0 or -errno. */
int h3g_log_open(const char *path);
/* Parses "debug", "info", "warning"/"warn", "error", "critical", "trace", "off". */
int h3g_log_level_parse(const char *name, enum h3g_log_level *out);
void h3g_log_write(enum h3g_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void h3g_log_vwrite(enum h3g_log_level level, const char *fmt, va_list ap);
/* Copies s[0..len) into out (size bytes, always NUL-terminated, cut short
 * if need be) for a quoted field of a log line: quotes and backslashes
 * escaped, control bytes and bytes that are not UTF-8 as \u00XX, valid
 * UTF-8 as it is. The line stays one line of UTF-8, and valid JSON as a
 * JSON string. */
void h3g_log_escape(const char *s, size_t len, char *out, size_t size);
/* How a child process ended (a waitpid status), for a log line:
 * "exited with code 1", "was killed by signal 9 (Killed)". */
void h3g_describe_exit(int status, char *buf, size_t size);

#define h3g_log(level, ...)                                                    \
  do {                                                                         \
    if ((level) >= h3g_log_min_level) h3g_log_write((level), __VA_ARGS__);     \
  } while (0)
#define log_debug(...) h3g_log(H3G_LOG_DEBUG, __VA_ARGS__)
#define log_info(...) h3g_log(H3G_LOG_INFO, __VA_ARGS__)
#define log_warn(...) h3g_log(H3G_LOG_WARN, __VA_ARGS__)
#define log_error(...) h3g_log(H3G_LOG_ERROR, __VA_ARGS__)

/* Per-frame traces: compiled out unless built with -DH3G_TRACE. */
#ifdef H3G_TRACE
#define log_trace(...) h3g_log(H3G_LOG_DEBUG, __VA_ARGS__)
#else
#define log_trace(...) ((void)0)
#endif

#endif
