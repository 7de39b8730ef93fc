#include "bytebuf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

uint8_t *bytebuf_reserve(struct bytebuf *b, size_t n) {
  if (b->cap - b->len >= n) return b->data + b->len;
  size_t used = b->len - b->off;
  if (b->off > 0 && b->cap - used >= n && b->off >= used) {
    /* Slide the unread bytes down rather than growing. */
    memmove(b->data, b->data + b->off, used);
    b->off = 0;
    b->len = used;
    return b->data + b->len;
  }
  size_t cap = b->cap ? b->cap : 4096;
  while (cap - b->len < n) cap *= 2;
  uint8_t *p = realloc(b->data, cap);
  if (p == NULL) return NULL;
  b->data = p;
  b->cap = cap;
  return b->data + b->len;
}

int bytebuf_append(struct bytebuf *b, const void *data, size_t len) {
  uint8_t *p = bytebuf_reserve(b, len);
  if (p == NULL) return -ENOMEM;
  memcpy(p, data, len);
  b->len += len;
  return 0;
}

void bytebuf_consume(struct bytebuf *b, size_t n) {
  b->off += n;
  if (b->off >= b->len) {
    b->off = b->len = 0;
    /* Give back memory a large burst left behind. */
    if (b->cap > 256 * 1024) {
      free(b->data);
      b->data = NULL;
      b->cap = 0;
    }
  }
}

void bytebuf_free(struct bytebuf *b) {
  free(b->data);
  b->data = NULL;
  b->off = b->len = b->cap = 0;
}
