/* A chained hash table of client addresses, keyed with SipHash (the keys
 * come from the network) and grown as it fills; an address leaves it with
 * its last connection, so it holds only those connected now. */
#include "per_ip.h"

#include <stdlib.h>
#include <string.h>

#include "fastrand.h"
#include "log.h"
#include "siphash.h"

enum { FIRST_BUCKETS = 1024 };

struct ip_entry {
  struct ip_entry *next;
  uint32_t connections;
  char ip[];
};

static struct {
  struct ip_entry **buckets;
  size_t n_buckets; /* a power of two */
  size_t n_entries;
  uint64_t key[2];
  uint64_t refused;
} T;

static size_t bucket_of(const char *ip) {
  return (size_t)siphash24(T.key, ip, strlen(ip)) & (T.n_buckets - 1);
}

/* Twice the buckets once there are more addresses than buckets. 0, or -1
 * (no memory: the table stays as it is, only slower). */
static int grow(void) {
  size_t n = T.n_buckets ? T.n_buckets * 2 : FIRST_BUCKETS;
  struct ip_entry **buckets = calloc(n, sizeof *buckets);
  if (buckets == NULL) return -1;
  if (T.n_buckets == 0) {
    T.key[0] = fastrand64();
    T.key[1] = fastrand64();
  }
  struct ip_entry **old = T.buckets;
  size_t old_n = T.n_buckets;
  T.buckets = buckets;
  T.n_buckets = n;
  for (size_t i = 0; i < old_n; i++) {
    for (struct ip_entry *e = old[i], *next; e; e = next) {
      next = e->next;
      size_t b = bucket_of(e->ip);
      e->next = T.buckets[b];
      T.buckets[b] = e;
    }
  }
  free(old);
  return 0;
}

static struct ip_entry **find(const char *ip) {
  struct ip_entry **p = &T.buckets[bucket_of(ip)];
  while (*p && strcmp((*p)->ip, ip) != 0) p = &(*p)->next;
  return p;
}

bool per_ip_admit(const char *ip, uint32_t limit) {
  /* Out of memory the count cannot be kept, and then nor can the
   * connection: every admitted one is counted, so leave() always finds it. */
  if ((T.n_buckets == 0 || T.n_entries >= T.n_buckets) && grow() != 0 && T.n_buckets == 0) {
    log_warn("no memory to count connections per address: %s refused", ip);
    return false;
  }
  struct ip_entry **p = find(ip);
  if (*p) {
    if (limit && (*p)->connections >= limit) {
      T.refused++;
      log_debug("%s has %u connections, limits.max_connections_per_ip: refused", ip, (*p)->connections);
      return false;
    }
    (*p)->connections++;
    return true;
  }
  size_t len = strlen(ip) + 1;
  struct ip_entry *e = malloc(sizeof *e + len);
  if (e == NULL) {
    log_warn("no memory to count connections per address: %s refused", ip);
    return false;
  }
  memcpy(e->ip, ip, len);
  e->connections = 1;
  e->next = NULL;
  *p = e;
  T.n_entries++;
  return true;
}

void per_ip_leave(const char *ip) {
  struct ip_entry **p = T.n_buckets ? find(ip) : NULL;
  if (p == NULL || *p == NULL) return; /* not counted: a bug, but not worth a crash */
  if (--(*p)->connections > 0) return;
  struct ip_entry *e = *p;
  *p = e->next;
  free(e);
  T.n_entries--;
}

uint64_t per_ip_refused(void) { return T.refused; }
