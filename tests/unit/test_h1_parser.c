/* Request parsing as both programs use it: strictness, limits, pipelining. */
#include <stdlib.h>

#include "check.h"
#include "h1_parser.h"

struct seen {
  int heads, ends, fields, trailers;
  size_t body;
  char method[16], target[64], last_name[32], last_value[64];
  int keep_alive;
};

/* Notes a field; trailers' names get a "t:" in front. */
static void note_field(struct seen *s, const char *prefix, const char *n, size_t nl, const char *v, size_t vl) {
  snprintf(s->last_name, sizeof s->last_name, "%s%.*s", prefix, (int)nl, n);
  snprintf(s->last_value, sizeof s->last_value, "%.*s", (int)vl, v);
}
static int on_header(void *ctx, const char *n, size_t nl, const char *v, size_t vl) {
  struct seen *s = ctx;
  s->fields++;
  note_field(s, "", n, nl, v, vl);
  return 0;
}
static int on_trailer(void *ctx, const char *n, size_t nl, const char *v, size_t vl) {
  struct seen *s = ctx;
  s->trailers++;
  note_field(s, "t:", n, nl, v, vl);
  return 0;
}
static int on_head(void *ctx, const struct h1_request_head *h) {
  struct seen *s = ctx;
  s->heads++;
  snprintf(s->method, sizeof s->method, "%.*s", (int)h->method_len, h->method);
  snprintf(s->target, sizeof s->target, "%.*s", (int)h->target_len, h->target);
  s->keep_alive = h->keep_alive;
  return 0;
}
static int on_body(void *ctx, const char *d, size_t n) {
  (void)d;
  ((struct seen *)ctx)->body += n;
  return 0;
}
static int on_end(void *ctx) {
  ((struct seen *)ctx)->ends++;
  return 0;
}
static const struct h1_parser_ops ops = {on_header, on_head, on_body, on_end, on_trailer};
static const struct h1_limits limits = {.max_head_bytes = 1024, .max_fields = 10};

/* Feeds everything, moving to the next request after each one. Returns the
 * error status, 0, or -1 when the parser stops taking input. */
static int parse(const char *text, struct seen *s) {
  struct h1_parser p;
  memset(s, 0, sizeof *s);
  h1_parser_init(&p, &ops, s, &limits);
  size_t len = strlen(text), off = 0;
  int status = 0;
  int stalls = 0;
  while (off < len) {
    ssize_t n = h1_parser_feed(&p, text + off, len - off);
    if (n < 0) {
      status = p.error_status;
      break;
    }
    off += (size_t)n;
    if (h1_parser_message_done(&p)) h1_parser_next(&p);
    stalls = n == 0 ? stalls + 1 : 0;
    if (stalls == 2) { /* stuck: the rest would never be read */
      status = -1;
      break;
    }
  }
  h1_parser_free(&p);
  return status;
}

int main(void) {
  struct seen s;
  CHECK(parse("GET /a?b HTTP/1.1\r\nHost: x\r\nX-Thing:  v  \r\n\r\n", &s) == 0);
  CHECK(s.heads == 1 && s.ends == 1 && s.fields == 2);
  CHECK_STR(s.method, "GET");
  CHECK_STR(s.target, "/a?b");
  CHECK_STR(s.last_name, "x-thing"); /* lower-cased */
  CHECK_STR(s.last_value, "v");      /* trimmed */
  CHECK(s.keep_alive);

  /* Pipelining: three requests, in order, bodies counted. */
  CHECK(parse("POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
              "POST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              "2\r\nde\r\n0\r\n\r\n"
              "GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
              &s) == 0);
  CHECK(s.heads == 3 && s.ends == 3 && s.body == 5);
  CHECK_STR(s.target, "/3");
  CHECK(!s.keep_alive);

  /* An Upgrade nobody takes up (curl's h2c offer): HTTP/1.1 goes on, and
   * the next request on the connection is parsed. */
  CHECK(parse("GET /u HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
              "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
              "GET /after HTTP/1.1\r\nHost: x\r\n\r\n",
              &s) == 0);
  CHECK(s.heads == 2 && s.ends == 2);
  CHECK_STR(s.target, "/after");

  /* Trailers go to on_trailer, never to on_header: the head was acted on
   * already, and a late "header" would slip past what was done to it. */
  CHECK(parse("POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              "3\r\nabc\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nX-Checksum:  ab \r\n\r\n"
              "GET /next HTTP/1.1\r\nHost: y\r\n\r\n",
              &s) == 0);
  CHECK(s.heads == 2 && s.ends == 2 && s.body == 3);
  CHECK(s.fields == 3 && s.trailers == 2); /* host, transfer-encoding, host */
  CHECK_STR(s.target, "/next");
  CHECK_STR(s.last_name, "host"); /* the next request's head is headers again */
  CHECK(parse("POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              "0\r\nX-Checksum:  ab \r\n\r\n", &s) == 0);
  CHECK(s.fields == 2 && s.trailers == 1);
  CHECK_STR(s.last_name, "t:x-checksum");
  CHECK_STR(s.last_value, "ab");

  /* Smuggling shapes are refused with 400. */
  CHECK(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
              "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &s) == 400);
  CHECK(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
              &s) == 400);
  /* Transfer codings (RFC 9112 6.1): chunked once, nothing else. llhttp
   * took "identity, chunked" as chunked and the HTTP/1.0 ones below too. */
  CHECK(parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n", &s) ==
        400); /* llhttp's own check: chunked must come last */
  CHECK(parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
              &s) == 501);
  CHECK(parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", &s) ==
        501);
  CHECK(parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
              &s) == 400); /* llhttp's own check, as for the next one */
  CHECK(parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
              "0\r\n\r\n", &s) == 400);
  CHECK(parse("POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &s) == 400);
  CHECK(parse("POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", &s) ==
        400);
  CHECK(parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: , CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
              &s) == 0); /* empty list elements are allowed (RFC 9110 5.6.1) */
  CHECK(s.body == 3);
  CHECK(parse("GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", &s) == 400);       /* CVE-2023-30589 */
  CHECK(parse("GET / HTTP/1.1\r\n Content-Length: 1\r\n\r\n", &s) == 400); /* CVE-2024-27982 */
  CHECK(parse("GET / HTTP/1.1\r\nBad Name: y\r\n\r\n", &s) == 400);
  CHECK(parse("GET / HTTP/2.0\r\nHost: x\r\n\r\n", &s) != 0);

  /* Limits. */
  char big[2048];
  snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: %01500d\r\n\r\n", 0);
  CHECK(parse(big, &s) == 431);
  snprintf(big, sizeof big, "GET /%01500d HTTP/1.1\r\nHost: x\r\n\r\n", 0);
  CHECK(parse(big, &s) == 414);
  char many[1024] = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < 12; i++) snprintf(many + strlen(many), sizeof many - strlen(many), "X-%d: 1\r\n", i);
  strcat(many, "\r\n");
  CHECK(parse(many, &s) == 431);

  /* Absolute-form targets (RFC 9112 3.2.2): the authority, and the rest. */
  const struct {
    const char *target, *authority, *rest;
  } forms[] = {
      {"http://a.example/p?q", "a.example", "/p?q"}, {"HTTPS://a.example:8443", "a.example:8443", ""},
      {"http://a.example?x=1/2", "a.example", "?x=1/2"}, {"http://", "", ""},
  };
  for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
    const char *auth, *rest;
    size_t alen, rlen;
    CHECK(h1_absolute_form(forms[i].target, strlen(forms[i].target), &auth, &alen, &rest, &rlen));
    CHECK(alen == strlen(forms[i].authority) && memcmp(auth, forms[i].authority, alen) == 0);
    CHECK(rlen == strlen(forms[i].rest) && memcmp(rest, forms[i].rest, rlen) == 0);
  }
  const char *a, *r;
  size_t al, rl;
  CHECK(!h1_absolute_form("/p", 2, &a, &al, &r, &rl));
  CHECK(!h1_absolute_form("ftp://a/p", 9, &a, &al, &r, &rl));
  CHECK(!h1_absolute_form("*", 1, &a, &al, &r, &rl));
  CHECK_DONE();
}
