/* Connections per client address, counted across every gateway process.
 *
 * Each process slot has its own table in one shared anonymous mapping,
 * made before the master forks: a process writes only its own table and
 * reads all of them, so the total for an address is the sum of its counts
 * in each. One writer per table needs no locks, and a process that dies
 * leaves nothing behind: the one that takes its slot empties the table
 * (its connections died with it), as nginx's shared limit_conn zone
 * cannot.
 *
 * A table is 64-bit words, each an address's tag (the high bits of its
 * SipHash; the keys come from the network) and its count (the low bits),
 * 0 when free. An address lives in the PROBES words from its home word;
 * lookups read them all, so freeing a word is just zeroing it. A full
 * neighbourhood cannot count the connection, and refuses it: the safe side
 * (at four words per connection allowed, a near impossibility unless the
 * hash is attacked, and its key is secret).
 *
 * A new connection is counted first and the total read after: two that
 * race in two processes may then both be refused, but the limit is never
 * passed. */
#include "per_ip.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>

#include "config.h"
#include "log.h"
#include "siphash.h"

enum {
  PROBES = 32,
  COUNT_BITS = 24,
  MIN_WORDS = 1 << 12,
  MAX_WORDS = 1 << 20, /* 8 MiB a process, touched as addresses come */
};
#define COUNT_MASK ((1ull << COUNT_BITS) - 1)

static struct {
  uint64_t *tables; /* processes tables of words each, shared */
  size_t words;     /* per table, a power of two */
  uint32_t processes;
  uint64_t *mine;
  uint64_t key[2];
  uint64_t refused;
} T;

static int cannot_map(void) {
  log_error("cannot map the table of connections per address: %s", strerror(errno));
  return -1;
}

int per_ip_prepare(uint32_t processes, const struct gw_conf *conf) {
  if (T.tables) return 0;
  size_t connections = (size_t)conf->max_connections + conf->quic.max_connections, words = MIN_WORDS;
  while (words < MAX_WORDS && words < connections * 4) words *= 2;
  /* One process alone keeps its table to itself. */
  int sharing = processes > 1 ? MAP_SHARED : MAP_PRIVATE;
  void *p = mmap(NULL, processes * words * sizeof(uint64_t), PROT_READ | PROT_WRITE,
                 sharing | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return cannot_map();
  if (getrandom(T.key, sizeof T.key, 0) != (ssize_t)sizeof T.key) {
    int err = errno;
    munmap(p, processes * words * sizeof(uint64_t));
    errno = err;
    return cannot_map();
  }
  T.tables = p;
  T.words = words;
  T.processes = processes;
  return 0;
}

void per_ip_attach(uint32_t slot) {
  T.mine = T.tables + (size_t)slot * T.words;
  if (T.processes == 1) return; /* its own, fresh */
  /* Counts of a predecessor in this slot are void; MADV_REMOVE gives the
   * pages back (shared anonymous memory is shmem), else they are zeroed. */
  size_t bytes = T.words * sizeof(uint64_t);
  if (madvise(T.mine, bytes, MADV_REMOVE) != 0) memset(T.mine, 0, bytes);
}

struct place {
  uint64_t tag;
  size_t home;
};

static struct place place_of(const char *ip) {
  uint64_t h = siphash24(T.key, ip, strlen(ip));
  return (struct place){.tag = (h >> COUNT_BITS) | 1, .home = (size_t)h & (T.words - 1)};
}

static uint64_t *word_at(uint64_t *table, const struct place *p, size_t i) {
  return &table[(p->home + i) & (T.words - 1)];
}

/* The address's word in table, or NULL. */
static uint64_t *find(uint64_t *table, const struct place *p) {
  for (size_t i = 0; i < PROBES; i++) {
    uint64_t *w = word_at(table, p, i);
    if (__atomic_load_n(w, __ATOMIC_ACQUIRE) >> COUNT_BITS == p->tag) return w;
  }
  return NULL;
}

static uint64_t *claim(const struct place *p) {
  for (size_t i = 0; i < PROBES; i++) {
    uint64_t *w = word_at(T.mine, p, i);
    if (*w == 0) return w;
  }
  return NULL;
}

static uint32_t total(const struct place *p) {
  uint32_t n = 0;
  for (uint32_t t = 0; t < T.processes; t++) {
    const uint64_t *w = find(T.tables + (size_t)t * T.words, p);
    if (w) n += (uint32_t)(__atomic_load_n(w, __ATOMIC_ACQUIRE) & COUNT_MASK);
  }
  return n;
}

static void set_count(uint64_t *w, const struct place *p, uint64_t count) {
  __atomic_store_n(w, count ? p->tag << COUNT_BITS | count : 0, __ATOMIC_RELEASE);
}

bool per_ip_admit(const char *ip, uint32_t limit) {
  if (T.mine == NULL) return true; /* per_ip_attach comes first; nothing to count in */
  struct place p = place_of(ip);
  uint64_t *w = find(T.mine, &p);
  uint64_t mine = w ? *w & COUNT_MASK : 0;
  if (w == NULL && (w = claim(&p)) == NULL) {
    T.refused++;
    log_warn("no room to count connections from %s: refused", ip);
    return false;
  }
  if (mine == COUNT_MASK) return false;
  set_count(w, &p, mine + 1);
  uint32_t n = limit ? total(&p) : 0;
  if (n <= limit || limit == 0) return true;
  set_count(w, &p, mine);
  T.refused++;
  log_debug("%s has %u connections, limits.max_connections_per_ip: refused", ip, n - 1);
  return false;
}

void per_ip_leave(const char *ip) {
  if (T.mine == NULL) return;
  struct place p = place_of(ip);
  uint64_t *w = find(T.mine, &p);
  if (w == NULL) return; /* not counted: a bug, but not worth a crash */
  set_count(w, &p, (*w & COUNT_MASK) - 1);
}

uint64_t per_ip_refused(void) { return T.refused; }
