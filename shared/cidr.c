#include "cidr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

int cidr_list_add(struct cidr_list *list, const char *entry) {
  if (strcmp(entry, "*") == 0) {
    list->any = true;
    return 0;
  }
  if (list->n >= sizeof list->items / sizeof list->items[0]) return -E2BIG;
  struct cidr *c = &list->items[list->n];
  memset(c, 0, sizeof *c);
  if (strcmp(entry, "unix") == 0) {
    c->family = AF_UNIX;
    list->n++;
    return 0;
  }
  char host[INET6_ADDRSTRLEN];
  const char *slash = strchr(entry, '/');
  size_t host_len = slash ? (size_t)(slash - entry) : strlen(entry);
  if (host_len == 0 || host_len >= sizeof host) return -EINVAL;
  memcpy(host, entry, host_len);
  host[host_len] = '\0';
  int max_prefix;
  if (inet_pton(AF_INET, host, c->addr) == 1) {
    c->family = AF_INET;
    max_prefix = 32;
  } else if (inet_pton(AF_INET6, host, c->addr) == 1) {
    c->family = AF_INET6;
    max_prefix = 128;
  } else {
    return -EINVAL;
  }
  long prefix = max_prefix;
  if (slash) {
    char *end;
    prefix = strtol(slash + 1, &end, 10);
    if (slash[1] == '\0' || *end != '\0' || prefix < 0 || prefix > max_prefix) return -EINVAL;
  }
  c->prefix = (uint8_t)prefix;
  list->n++;
  return 0;
}

int cidr_list_parse(const char *text, struct cidr_list *out, const char **bad) {
  memset(out, 0, sizeof *out);
  const char *p = text;
  while (*p) {
    while (*p == ',' || *p == ' ') p++;
    if (*p == '\0') break;
    size_t len = strcspn(p, ", ");
    char entry[64];
    if (len >= sizeof entry) {
      *bad = p;
      return -EINVAL;
    }
    memcpy(entry, p, len);
    entry[len] = '\0';
    if (cidr_list_add(out, entry) != 0) {
      *bad = p;
      return -EINVAL;
    }
    p += len;
  }
  return 0;
}

static bool prefix_match(const uint8_t *a, const uint8_t *b, unsigned prefix) {
  unsigned whole = prefix / 8, rest = prefix % 8;
  if (memcmp(a, b, whole) != 0) return false;
  if (rest == 0) return true;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

static bool match_raw(const struct cidr_list *list, int family, const uint8_t *addr) {
  if (list->any) return true;
  for (size_t i = 0; i < list->n; i++) {
    const struct cidr *c = &list->items[i];
    if (c->family == family && (family == AF_UNIX || prefix_match(c->addr, addr, c->prefix)))
      return true;
  }
  return false;
}

bool cidr_list_match(const struct cidr_list *list, const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET)
    return match_raw(list, AF_INET, (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr);
  if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    /* An IPv4 peer on a dual-stack socket matches IPv4 entries. */
    if (IN6_IS_ADDR_V4MAPPED(a6) && match_raw(list, AF_INET, a6->s6_addr + 12)) return true;
    return match_raw(list, AF_INET6, a6->s6_addr);
  }
  if (sa->sa_family == AF_UNIX) return match_raw(list, AF_UNIX, NULL);
  return false;
}

bool cidr_list_match_text(const struct cidr_list *list, const char *ip, size_t len) {
  char host[INET6_ADDRSTRLEN];
  uint8_t addr[16];
  if (list->any) return true;
  if (len >= sizeof host) return false;
  memcpy(host, ip, len);
  host[len] = '\0';
  if (inet_pton(AF_INET, host, addr) == 1) return match_raw(list, AF_INET, addr);
  if (inet_pton(AF_INET6, host, addr) == 1) return match_raw(list, AF_INET6, addr);
  return false;
}
