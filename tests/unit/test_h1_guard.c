/* The checks llhttp 8.1.0 lacks: CVE-2023-30589 and CVE-2024-27982. */
#include "check.h"
#include "h1_guard.h"

static ssize_t scan_all(const char *text) {
  struct h1_guard g;
  h1_guard_reset(&g);
  return h1_guard_scan(&g, text, strlen(text));
}

/* Feeds one byte at a time: the guard must keep state across reads. */
static ssize_t scan_bytewise(const char *text) {
  struct h1_guard g;
  h1_guard_reset(&g);
  size_t len = strlen(text);
  for (size_t i = 0; i < len; i++) {
    ssize_t r = h1_guard_scan(&g, text + i, 1);
    if (r < 0) return r;
    if (h1_guard_head_done(&g)) return (ssize_t)(i + 1);
  }
  return (ssize_t)len;
}

int main(void) {
  const char *ok = "GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
  CHECK(scan_all(ok) == (ssize_t)strlen(ok) - 4); /* stops at the end of the head */
  CHECK(scan_bytewise(ok) == (ssize_t)strlen(ok) - 4);
  CHECK(scan_all("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n") > 0); /* leading CRLF allowed */
  CHECK(scan_all("GET / HTTP/1.1\nHost: a\n\n") > 0);           /* bare LF allowed */

  /* CVE-2023-30589: a bare CR must not end a line. */
  CHECK(scan_all("GET / HTTP/1.1\r\nHost: a\rX-Evil: 1\r\n\r\n") == H1_GUARD_BARE_CR);
  CHECK(scan_bytewise("GET / HTTP/1.1\r\nHost: a\rX-Evil: 1\r\n\r\n") == H1_GUARD_BARE_CR);
  CHECK(scan_all("GET / HTTP/1.1\rHost: a\r\n\r\n") == H1_GUARD_BARE_CR);
  CHECK(scan_all("GET / HTTP/1.1\r\nHost: a\r\n\rX") == H1_GUARD_BARE_CR);

  /* CVE-2024-27982: whitespace before a header name, and obs-fold. */
  CHECK(scan_all("GET / HTTP/1.1\r\n Content-Length: 5\r\n\r\n") == H1_GUARD_LEADING_WS);
  CHECK(scan_all("GET / HTTP/1.1\r\nHost: a\r\n\tContent-Length: 5\r\n\r\n") ==
        H1_GUARD_LEADING_WS);
  CHECK(scan_bytewise("GET / HTTP/1.1\r\nX: a\r\n  folded\r\n\r\n") == H1_GUARD_LEADING_WS);

  /* After reset the guard scans the next pipelined head afresh. */
  struct h1_guard g;
  h1_guard_reset(&g);
  const char *two = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\n Bad: 1\r\n\r\n";
  ssize_t first = h1_guard_scan(&g, two, strlen(two));
  CHECK(h1_guard_head_done(&g));
  h1_guard_reset(&g);
  CHECK(h1_guard_scan(&g, two + first, strlen(two) - (size_t)first) == H1_GUARD_LEADING_WS);
  CHECK_DONE();
}
