/* Comma-separated field values (RFC 9110 5.6.1), read in place. */
#ifndef H3G_HTTP_LIST_H
#define H3G_HTTP_LIST_H

#include <stdbool.h>
#include <stddef.h>

/* The next element of the list v[0..len) from *pos, with the whitespace
 * around it trimmed; empty elements ("a, , b") are skipped. False at the
 * end. */
bool h3g_list_next(const char *v, size_t len, size_t *pos, const char **elem, size_t *elen);
/* True when an element equals token, case-insensitively. */
bool h3g_list_has_token(const char *v, size_t len, const char *token);

#endif
