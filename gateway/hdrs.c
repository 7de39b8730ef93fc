#include "hdrs.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int grow_arena(struct hdr_list *l, size_t need) {
  if (l->used + need <= l->arena_cap) return 0;
  size_t cap = l->arena_cap ? l->arena_cap : 1024;
  while (cap < l->used + need) cap *= 2;
  if (cap > UINT32_MAX) return -1;
  char *a = realloc(l->arena, cap);
  if (a == NULL) return -1;
  l->arena = a;
  l->arena_cap = (uint32_t)cap;
  return 0;
}

int hdr_add(struct hdr_list *l, const char *name, size_t nlen, const char *value, size_t vlen) {
  if (l->n == l->cap) {
    uint32_t cap = l->cap ? l->cap * 2 : 16;
    struct hdr *v = realloc(l->v, cap * sizeof *v);
    if (v == NULL) return -1;
    l->v = v;
    l->cap = cap;
  }
  if (grow_arena(l, nlen + vlen + 2) != 0) return -1;
  struct hdr *h = &l->v[l->n];
  h->name_off = l->used;
  h->name_len = (uint32_t)nlen;
  memcpy(l->arena + l->used, name, nlen);
  l->used += (uint32_t)nlen;
  l->arena[l->used++] = '\0';
  h->value_off = l->used;
  h->value_len = (uint32_t)vlen;
  memcpy(l->arena + l->used, value, vlen);
  l->used += (uint32_t)vlen;
  l->arena[l->used++] = '\0';
  h->flags = 0;
  l->bytes += (uint32_t)(nlen + vlen);
  return (int)l->n++;
}

int hdr_find(const struct hdr_list *l, const char *name, size_t nlen, int from) {
  for (uint32_t i = (uint32_t)from; i < l->n; i++) {
    const struct hdr *h = &l->v[i];
    if (h->name_len == nlen && !(h->flags & HDR_DROPPED) &&
        memcmp(l->arena + h->name_off, name, nlen) == 0)
      return (int)i;
  }
  return -1;
}

bool hdr_name_is(const struct hdr_list *l, int i, const char *lit) {
  size_t n = strlen(lit);
  return l->v[i].name_len == n && memcmp(hdr_name(l, i), lit, n) == 0;
}

void hdr_list_clear(struct hdr_list *l) {
  l->n = 0;
  l->used = 0;
  l->bytes = 0;
}

void hdr_list_free(struct hdr_list *l) {
  free(l->v);
  free(l->arena);
  memset(l, 0, sizeof *l);
}

/* RFC 3986 reg-name: unreserved and sub-delims ('%' is checked apart). */
static bool reg_name_char(unsigned char c) {
  return isalnum(c) || (c != 0 && strchr("-._~!$&'()*+,;=", c) != NULL);
}

/* Skips a host at v[*i]: an IP-literal in brackets (IPv6, IPvFuture, zone
 * IDs as %25) or a reg-name, percent-encoding included. False when it is
 * empty or malformed. */
static bool skip_host(const char *v, size_t len, size_t *i) {
  bool bracketed = v[*i] == '[';
  size_t start = *i += bracketed;
  while (*i < len && (bracketed ? v[*i] != ']' : v[*i] != ':')) {
    unsigned char c = (unsigned char)v[*i];
    if (c == '%') {
      if (*i + 2 >= len || !isxdigit((unsigned char)v[*i + 1]) || !isxdigit((unsigned char)v[*i + 2]))
        return false;
      *i += 3;
    } else if (reg_name_char(c) || (bracketed && c == ':')) {
      (*i)++;
    } else {
      return false;
    }
  }
  if (*i == start) return false;
  if (bracketed) {
    if (*i == len) return false; /* no ']' */
    (*i)++;
  }
  return true;
}

bool hdr_authority_valid(const char *v, size_t len) {
  size_t i = 0;
  if (len == 0 || !skip_host(v, len, &i)) return false;
  if (i == len) return true;
  if (v[i++] != ':') return false;
  for (; i < len; i++)
    if (!isdigit((unsigned char)v[i])) return false;
  return true;
}
