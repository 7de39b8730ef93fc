/* Address lists such as "127.0.0.1,::1,10.0.0.0/8,unix" or "*": who may set
 * X-Forwarded-* headers (worker) or whose X-Forwarded-* the gateway keeps. */
#ifndef H3G_CIDR_H
#define H3G_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct cidr {
  int family; /* AF_INET, AF_INET6 or AF_UNIX (matches any unix peer) */
  uint8_t addr[16];
  uint8_t prefix;
};

struct cidr_list {
  bool any;
  size_t n;
  struct cidr items[32];
};

/* Comma- or space-separated. Returns 0, or -EINVAL with *bad at the entry. */
int cidr_list_parse(const char *text, struct cidr_list *out, const char **bad);
/* One entry ("10.0.0.0/8", "::1", "unix", "*"), for lists built item by item. */
int cidr_list_add(struct cidr_list *list, const char *entry);
bool cidr_list_match(const struct cidr_list *list, const struct sockaddr *sa);
/* Matches a textual IP address (as found in X-Forwarded-For). */
bool cidr_list_match_text(const struct cidr_list *list, const char *ip, size_t len);

#endif
