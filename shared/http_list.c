#include "http_list.h"

#include <string.h>
#include <strings.h>

static bool is_ows(char c) { return c == ' ' || c == '\t'; }

bool h3g_list_next(const char *v, size_t len, size_t *pos, const char **elem, size_t *elen) {
  size_t i = *pos;
  for (;;) {
    while (i < len && (is_ows(v[i]) || v[i] == ',')) i++;
    if (i == len) {
      *pos = i;
      return false;
    }
    size_t start = i;
    while (i < len && v[i] != ',') i++;
    size_t end = i;
    while (end > start && is_ows(v[end - 1])) end--;
    if (end > start) {
      *pos = i;
      *elem = v + start;
      *elen = end - start;
      return true;
    }
  }
}

bool h3g_list_has_token(const char *v, size_t len, const char *token) {
  size_t tlen = strlen(token), pos = 0, n;
  const char *e;
  while (h3g_list_next(v, len, &pos, &e, &n))
    if (n == tlen && strncasecmp(e, token, tlen) == 0) return true;
  return false;
}
