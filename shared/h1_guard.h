/* Checks on raw HTTP/1.1 message heads that Debian's llhttp 8.1.0 misses:
 *  - CVE-2023-30589: a bare CR (not followed by LF) accepted as a line ending;
 *  - CVE-2024-27982: whitespace before a header name (and obs-fold, which
 *    RFC 9112 5.2 lets a server reject) used to smuggle a second header.
 * The guard scans a head byte by byte, across reads, before llhttp sees it,
 * and stops at the empty line that ends the head. */
#ifndef H3G_H1_GUARD_H
#define H3G_H1_GUARD_H

#include <stddef.h>
#include <sys/types.h>

enum h1_guard_result {
  H1_GUARD_BARE_CR = -1,
  H1_GUARD_LEADING_WS = -2,
};

struct h1_guard {
  unsigned char state;
};

/* Makes the guard ready for the next message head. */
void h1_guard_reset(struct h1_guard *g);
/* True once the whole head has been scanned. */
int h1_guard_head_done(const struct h1_guard *g);
/* Scans up to len bytes. Returns how many belong to the head (all of them
 * while the head goes on; fewer when it ends inside the buffer) or a
 * negative h1_guard_result. */
ssize_t h1_guard_scan(struct h1_guard *g, const char *data, size_t len);
const char *h1_guard_strerror(ssize_t result);

#endif
