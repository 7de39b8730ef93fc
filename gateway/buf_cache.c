/* libevent allocates a buffer chain (1 KiB at least, in powers of two) for
 * each burst of data it buffers and frees it once drained: a WebSocket
 * message or a small response costs several malloc/free pairs on the way
 * through. glibc's tcache keeps only 7 blocks of a size, which one loop
 * turn over dozens of connections overruns, so most of these went through
 * the slower bins: a sixth of the gateway's instructions per WebSocket
 * message. Freed blocks of those sizes wait here, per size and bounded,
 * for the next chain (HAProxy's buffer pools, h2o's recycling allocator).
 *
 * A block stays an ordinary malloc block, so realloc and free of anything
 * work as usual; the cache only decides whether a free really frees. */
#include "buf_cache.h"

#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <event2/event.h>

enum {
  CLASS_MIN_SHIFT = 10, /* libevent's smallest chain */
  CLASS_MAX_SHIFT = 16,
  N_CLASSES = CLASS_MAX_SHIFT - CLASS_MIN_SHIFT + 1,
  KEEP_BYTES_PER_CLASS = 512 * 1024,
  KEEP_MIN_BLOCKS = 8,
};

struct free_block {
  struct free_block *next;
};

static struct size_class {
  struct free_block *head;
  size_t count;
} classes[N_CLASSES];

static size_t keep_max(int c) {
  size_t n = KEEP_BYTES_PER_CLASS >> (CLASS_MIN_SHIFT + c);
  return n < KEEP_MIN_BLOCKS ? KEEP_MIN_BLOCKS : n;
}

/* The class whose size is n exactly (libevent asks in powers of two), or -1. */
static int class_of_request(size_t n) {
  if (n < (1u << CLASS_MIN_SHIFT) || n > (1u << CLASS_MAX_SHIFT) || (n & (n - 1)) != 0) return -1;
  return __builtin_ctzl(n) - CLASS_MIN_SHIFT;
}

/* The largest class a block of this usable size can serve, or -1. */
static int class_of_block(size_t usable) {
  if (usable < (1u << CLASS_MIN_SHIFT)) return -1;
  int shift = 63 - __builtin_clzl(usable);
  return shift > CLASS_MAX_SHIFT ? -1 : shift - CLASS_MIN_SHIFT;
}

static void *cached_malloc(size_t n) {
  int c = class_of_request(n);
  if (c >= 0 && classes[c].head != NULL) {
    struct free_block *b = classes[c].head;
    classes[c].head = b->next;
    classes[c].count--;
    return b;
  }
  return malloc(n);
}

static void cached_free(void *p) {
  if (p == NULL) return;
  int c = class_of_block(malloc_usable_size(p));
  if (c >= 0 && classes[c].count < keep_max(c)) {
    struct free_block *b = p;
    b->next = classes[c].head;
    classes[c].head = b;
    classes[c].count++;
    return;
  }
  free(p);
}

void buf_cache_install(void) {
#if !defined(__SANITIZE_ADDRESS__)
  event_set_mem_functions(cached_malloc, realloc, cached_free);
#endif
}
