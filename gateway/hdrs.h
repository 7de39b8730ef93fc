/* A header list in one arena: names and values as offsets, so growing the
 * arena never leaves a dangling pointer, and one exchange's headers cost two
 * allocations however many fields it has. Names are stored lower-case. */
#ifndef H3G_GATEWAY_HDRS_H
#define H3G_GATEWAY_HDRS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
  HDR_DROPPED = 1, /* not forwarded (hop-by-hop, replaced) */
  HDR_UNIQUE = 2,  /* a value new with every request: not worth an HPACK table entry */
};

struct hdr {
  uint32_t name_off, value_off;
  uint32_t name_len, value_len;
  uint8_t flags;
};

struct hdr_list {
  struct hdr *v;
  uint32_t n, cap;
  char *arena;
  uint32_t used, arena_cap;
  uint32_t bytes; /* name + value bytes, for limits */
};

/* Appends a field. The name must be lower-case already: HTTP/2 and HTTP/3
 * require it (nghttp2 and nghttp3 check), the HTTP/1.1 parser lower-cases,
 * and our own names are literals. Returns the index or -1. */
int hdr_add(struct hdr_list *l, const char *name, size_t nlen, const char *value, size_t vlen);
int hdr_find(const struct hdr_list *l, const char *name, size_t nlen, int from);
static inline const char *hdr_name(const struct hdr_list *l, int i) { return l->arena + l->v[i].name_off; }
static inline const char *hdr_value(const struct hdr_list *l, int i) { return l->arena + l->v[i].value_off; }
bool hdr_name_is(const struct hdr_list *l, int i, const char *lit);
void hdr_list_clear(struct hdr_list *l);
void hdr_list_free(struct hdr_list *l);
/* True for a Host or :authority value: uri-host [ ":" port ] (RFC 9110
 * 7.2, RFC 3986 3.2.2), with a host that is not empty and no userinfo. */
bool hdr_authority_valid(const char *v, size_t len);

#endif
