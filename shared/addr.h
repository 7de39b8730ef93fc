/* Addresses as users write them: "host:port", "[v6]:port", ":port", "unix:/path". */
#ifndef H3G_ADDR_H
#define H3G_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

struct h3g_hostport {
  bool is_unix;
  uint16_t port;
  char host[256]; /* empty for ":port" (all addresses) */
  char path[108]; /* unix socket path */
};

/* Parses one address. On failure returns -EINVAL and points *why at a message. */
int h3g_hostport_parse(const char *text, struct h3g_hostport *out, const char **why);

/* Fills a sockaddr when host is a numeric IPv4/IPv6 address (or empty: any),
 * or the unix path. Returns -EAGAIN when host is a name that needs DNS. */
int h3g_hostport_to_sockaddr(const struct h3g_hostport *hp, struct sockaddr_storage *ss,
                             socklen_t *len);

/* "1.2.3.4:80", "[::1]:80" or "unix:/path"; always NUL-terminated. */
void h3g_sockaddr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t size);
/* Only the host part ("1.2.3.4", "::1", or "unix" for unix sockets). */
void h3g_sockaddr_host(const struct sockaddr *sa, char *buf, size_t size);
uint16_t h3g_sockaddr_port(const struct sockaddr *sa);

/* Copies a string into a buffer of size bytes, cut short if need be, always
 * NUL-terminated: snprintf("%s") without the format parsing, for hot paths. */
static inline void h3g_copy_str(char *dst, size_t size, const char *src) {
  size_t n = strnlen(src, size - 1);
  memcpy(dst, src, n);
  dst[n] = '\0';
}
bool h3g_sockaddr_equal(const struct sockaddr *a, const struct sockaddr *b);

#endif
