/* A growable byte buffer with a read offset: the worker's socket output and
 * request body buffers. */
#ifndef H3G_BYTEBUF_H
#define H3G_BYTEBUF_H

#include <stddef.h>
#include <stdint.h>

struct bytebuf {
  uint8_t *data;
  size_t off; /* first unread byte */
  size_t len; /* end of written bytes */
  size_t cap;
};

static inline size_t bytebuf_size(const struct bytebuf *b) { return b->len - b->off; }
static inline const uint8_t *bytebuf_head(const struct bytebuf *b) { return b->data + b->off; }
/* 0 or -ENOMEM. */
int bytebuf_append(struct bytebuf *b, const void *data, size_t len);
/* Space for at least n more bytes at data + len; NULL when out of memory. */
uint8_t *bytebuf_reserve(struct bytebuf *b, size_t n);
void bytebuf_consume(struct bytebuf *b, size_t n);
void bytebuf_free(struct bytebuf *b);

#endif
