/* libFuzzer target: the HTTP/1.1 request parser (llhttp under our limits
 * and request-smuggling guard) over arbitrary bytes in arbitrary pieces,
 * pipelined requests included.
 *
 * The first input byte sets the piece size. Beyond what the sanitizers
 * catch it checks: a field name is non-empty lower-case token characters,
 * a value has no CR, LF or NUL and no surrounding blanks, at most
 * max_fields fields per request (trailers included), trailers only after
 * the head and headers never after it, a body only between a head and its end,
 * a declared Content-Length never exceeded, a status only in 4xx-5xx. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "h1_parser.h"
#include "require.h"

struct state {
  bool in_body, connect;
  unsigned fields;
  bool has_length;
  uint64_t length, body;
};

static const struct h1_limits limits = {.max_head_bytes = 2048, .max_fields = 16};

static bool token_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static void check_field(struct state *s, const char *name, size_t nlen, const char *value, size_t vlen) {
  REQUIRE(nlen > 0);
  for (size_t i = 0; i < nlen; i++) REQUIRE(name[i] != '\0' && token_char(name[i]));
  for (size_t i = 0; i < vlen; i++) REQUIRE(value[i] != '\r' && value[i] != '\n' && value[i] != '\0');
  if (vlen > 0) REQUIRE(value[0] != ' ' && value[0] != '\t' && value[vlen - 1] != ' ' && value[vlen - 1] != '\t');
  REQUIRE(++s->fields <= limits.max_fields);
}

static int on_header(void *ctx, const char *name, size_t nlen, const char *value, size_t vlen) {
  struct state *s = ctx;
  REQUIRE(!s->in_body); /* never a trailer */
  check_field(s, name, nlen, value, vlen);
  return 0;
}

static int on_trailer(void *ctx, const char *name, size_t nlen, const char *value, size_t vlen) {
  struct state *s = ctx;
  REQUIRE(s->in_body);
  check_field(s, name, nlen, value, vlen);
  return 0;
}

static int on_head(void *ctx, const struct h1_request_head *head) {
  struct state *s = ctx;
  REQUIRE(!s->in_body);
  REQUIRE(head->method_len > 0 && head->target_len > 0);
  REQUIRE(!(head->chunked && head->has_content_length)); /* the guard refuses both */
  s->in_body = true;
  s->connect = head->method_len == 7 && memcmp(head->method, "CONNECT", 7) == 0;
  s->has_length = head->has_content_length && !s->connect; /* CONNECT has no content */
  s->length = head->content_length;
  s->body = 0;
  return 0;
}

static int on_body(void *ctx, const char *data, size_t len) {
  struct state *s = ctx;
  (void)data;
  REQUIRE(s->in_body);
  s->body += len;
  if (s->has_length) REQUIRE(s->body <= s->length);
  return 0;
}

static int on_end(void *ctx) {
  struct state *s = ctx;
  REQUIRE(s->in_body);
  if (s->has_length) REQUIRE(s->body == s->length);
  *s = (struct state){.connect = s->connect};
  return 0;
}

static const struct h1_parser_ops ops = {on_header, on_head, on_body, on_end, on_trailer};

int LLVMFuzzerTestOneInput(const uint8_t *input, size_t size) {
  if (size < 1) return 0;
  size_t step = 1 + input[0];
  const char *data = (const char *)input + 1;
  size_t len = size - 1;
  struct state s = {0};
  struct h1_parser p;
  h1_parser_init(&p, &ops, &s, &limits);
  int stalls = 0;
  for (size_t off = 0; off < len;) {
    size_t piece = len - off < step ? len - off : step;
    ssize_t n = h1_parser_feed(&p, data + off, piece);
    stalls = n == 0 ? stalls + 1 : 0;
    REQUIRE(stalls < 2); /* after h1_parser_next it reads on */
    if (n < 0) {
      REQUIRE(p.error_status >= 400 && p.error_status < 600 && p.error_reason != NULL);
      break;
    }
    REQUIRE((size_t)n <= piece);
    off += (size_t)n;
    if (h1_parser_message_done(&p)) {
      if (s.connect) break; /* a tunnel follows: both programs refuse and close */
      h1_parser_next(&p);
    } else {
      REQUIRE((size_t)n == piece); /* short only at a message's end */
    }
  }
  if (h1_parser_in_message(&p)) (void)h1_parser_finish(&p);
  h1_parser_free(&p);
  return 0;
}
