/* The gateway's recycling allocator (gateway/mem_cache.c), through the
 * nghttp2_mem it hands to nghttp2: a freed block comes back for the next
 * request of its size class, never for a larger one; calloc zeroes a
 * recycled block; the bound per class holds. Under AddressSanitizer the
 * cache steps aside (it must see every free), and there is nothing to test. */
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "mem_cache.h"

int main(void) {
  mem_cache_install();
  nghttp2_mem *m = mem_cache_nghttp2();
  if (m == NULL) {
    puts("cache off in this build (AddressSanitizer): skipped");
    return 0;
  }
  /* Small: the same glibc chunk size comes back. */
  void *a = m->malloc(100, NULL);
  m->free(a, NULL);
  CHECK(m->malloc(100, NULL) == a);
  m->free(a, NULL);
  void *b = m->malloc(600, NULL); /* another class: not a */
  CHECK(b != a);
  CHECK(malloc_usable_size(b) >= 600);
  m->free(b, NULL);

  /* Large: a 3000-byte request is served by a freed block of at least 4 KiB. */
  void *c = m->malloc(4096, NULL);
  memset(c, 0xab, 4096);
  m->free(c, NULL);
  uint8_t *d = m->calloc(3, 1000, NULL);
  CHECK((void *)d == c);
  int nonzero = 0;
  for (int i = 0; i < 3000; i++) nonzero += d[i] != 0;
  CHECK(nonzero == 0);
  CHECK(malloc_usable_size(d) >= 3000);
  /* A block too small for its power of two is not kept for it. */
  void *e = m->malloc(5000, NULL); /* usable >= 5000, kept for 4 KiB requests */
  m->free(d, NULL);
  m->free(e, NULL);
  void *f = m->malloc(8192, NULL);
  CHECK(f != e && f != d);
  CHECK(malloc_usable_size(f) >= 8192);
  m->free(f, NULL);

  /* The bound: of many 64 KiB blocks freed, at most 8 are kept; glibc
   * gets the rest back (its count of bytes in use drops by them). */
  enum { N = 64, BIG = 65536 };
  void *big[N];
  for (int i = 0; i < N; i++) big[i] = m->malloc(BIG, NULL);
  size_t in_use = mallinfo2().uordblks;
  for (int i = 0; i < N; i++) m->free(big[i], NULL);
  size_t released = in_use - mallinfo2().uordblks;
  CHECK(released >= (size_t)(N - 8) * BIG);
  CHECK(released < (size_t)N * BIG); /* and some were kept */
  CHECK(m->realloc(NULL, 10, NULL) != NULL);
  CHECK_DONE();
}
