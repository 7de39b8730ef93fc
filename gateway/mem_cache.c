/* A recycling allocator for libevent and nghttp2.
 *
 * Both allocate and free small objects at a high rate: libevent a buffer
 * chain (1 KiB at least, in powers of two) per burst of data it buffers,
 * freed once drained; nghttp2 a stream, its frames and header blocks per
 * request. glibc's tcache keeps only 7 free blocks of a size, which one
 * loop turn over dozens of connections overruns, so most of these went
 * through glibc's slower bins: a sixth of the gateway's instructions per
 * WebSocket message, a twentieth per HTTP/2 request. Freed blocks wait here,
 * per size and bounded, for the next request of that size (HAProxy's
 * pools, h2o's recycling allocator).
 *
 * A block stays an ordinary malloc block, so realloc and free of anything
 * work as usual; the cache only decides whether a free really frees. Under
 * AddressSanitizer it steps aside: ASan must see every free to catch a use
 * after it. Single-threaded, like the gateway. */
#include "mem_cache.h"

#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>

/* Small blocks are classed by glibc chunk size (16-byte steps up to the
 * chunk of a 1 KiB request); larger ones by power of two up to 64 KiB. */
enum {
  SMALL_CHUNK_MAX = 1040,
  N_SMALL = SMALL_CHUNK_MAX / 16 + 1,
  LARGE_MIN_SHIFT = 11,
  LARGE_MAX_SHIFT = 16,
  N_LARGE = LARGE_MAX_SHIFT - LARGE_MIN_SHIFT + 1,
  KEEP_BYTES_PER_CLASS = 256 * 1024,
  KEEP_MAX_BLOCKS = 1024,
};

struct free_block {
  struct free_block *next;
};

struct size_class {
  struct free_block *head;
  uint32_t count, max;
};

static struct size_class small[N_SMALL], large[N_LARGE];

/* glibc's chunk for a request of n bytes (malloc.c's request2size). */
static size_t chunk_of_request(size_t n) {
  size_t c = (n + sizeof(size_t) + 15) & ~(size_t)15;
  return c < 32 ? 32 : c;
}

static struct size_class *class_of_request(size_t n) {
  size_t chunk = chunk_of_request(n);
  if (chunk <= SMALL_CHUNK_MAX) return &small[chunk / 16];
  if (n > (1u << LARGE_MAX_SHIFT)) return NULL;
  int shift = 64 - __builtin_clzl(n - 1); /* round up to a power of two */
  return shift >= LARGE_MIN_SHIFT ? &large[shift - LARGE_MIN_SHIFT] : NULL;
}

/* Where a freed block goes: the class of requests it can serve. */
static struct size_class *class_of_block(size_t usable) {
  size_t chunk = usable + sizeof(size_t);
  if (chunk <= SMALL_CHUNK_MAX) return &small[chunk / 16];
  int shift = 63 - __builtin_clzl(usable); /* round down */
  if (shift < LARGE_MIN_SHIFT || shift > LARGE_MAX_SHIFT) return NULL;
  return &large[shift - LARGE_MIN_SHIFT];
}

static void *cache_malloc(size_t n) {
  struct size_class *c = class_of_request(n);
  if (c != NULL && c->head != NULL) {
    struct free_block *b = c->head;
    c->head = b->next;
    c->count--;
    return b;
  }
  return malloc(n);
}

static void cache_free(void *p) {
  if (p == NULL) return;
  struct size_class *c = class_of_block(malloc_usable_size(p));
  if (c != NULL && c->count < c->max) {
    struct free_block *b = p;
    b->next = c->head;
    c->head = b;
    c->count++;
    return;
  }
  free(p);
}

static void *cache_calloc(size_t n, size_t size) {
  if (size != 0 && n > SIZE_MAX / size) return NULL;
  void *p = cache_malloc(n * size);
  if (p != NULL) memset(p, 0, n * size);
  return p;
}

static void set_limits(void) {
  for (int i = 2; i < N_SMALL; i++) {
    uint32_t n = KEEP_BYTES_PER_CLASS / (uint32_t)(i * 16);
    small[i].max = n > KEEP_MAX_BLOCKS ? KEEP_MAX_BLOCKS : n;
  }
  for (int i = 0; i < N_LARGE; i++) {
    uint32_t n = KEEP_BYTES_PER_CLASS >> (LARGE_MIN_SHIFT + i);
    large[i].max = n < 8 ? 8 : n;
  }
}

/* ASan must see every free: the cache steps aside in that build. */
#if defined(__SANITIZE_ADDRESS__)
enum { CACHE_ON = 0 };
#else
enum { CACHE_ON = 1 };
#endif

void mem_cache_install(void) {
  if (!CACHE_ON) return;
  set_limits();
  event_set_mem_functions(cache_malloc, realloc, cache_free);
}

static void *ng_malloc(size_t n, void *ud) { (void)ud; return cache_malloc(n); }
static void ng_free(void *p, void *ud) { (void)ud; cache_free(p); }
static void *ng_calloc(size_t n, size_t size, void *ud) { (void)ud; return cache_calloc(n, size); }
static void *ng_realloc(void *p, size_t n, void *ud) { (void)ud; return realloc(p, n); }

nghttp2_mem *mem_cache_nghttp2(void) {
  static nghttp2_mem mem = {NULL, ng_malloc, ng_free, ng_calloc, ng_realloc};
  return CACHE_ON ? &mem : NULL; /* NULL: nghttp2's default, plain malloc */
}
