/* libFuzzer target: the small parsers of text that comes from outside:
 * the worker's X-Forwarded-For, Forwarded and Via readers (from any peer
 * on a trusted network), and the config's durations, sizes, addresses and
 * network lists (from the config file), and the split of an absolute-form
 * request target. The first input byte picks one.
 *
 * Beyond what the sanitizers catch it checks that a client host found is
 * NUL-terminated inside its buffer and a port in range, and that a parsed
 * size or duration round-trips through nothing stranger than a number. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "cidr.h"
#include "forwarded.h"
#include "h1_parser.h"
#include "units.h"
#include "require.h"

static void check_client(int rc, const struct forwarded_client *c) {
  if (rc != 0) return;
  REQUIRE(memchr(c->host, '\0', sizeof c->host) != NULL);
  REQUIRE(c->port >= -1 && c->port <= 65535);
}

int LLVMFuzzerTestOneInput(const uint8_t *input, size_t size) {
  if (size < 1) return 0;
  size_t len = size - 1;
  char *text = malloc(size); /* the rest, NUL-terminated, for the config's parsers */
  memcpy(text, input + 1, len);
  text[len] = '\0';
  char *field = malloc(len ? len : 1); /* the rest, exactly, as a header value comes */
  memcpy(field, input + 1, len);
  static struct cidr_list trusted;
  static bool ready;
  if (!ready) {
    const char *bad;
    REQUIRE(cidr_list_parse("127.0.0.0/8, 10.0.0.0/8, ::1, fd00::/8", &trusted, &bad) == 0);
    ready = true;
  }
  struct forwarded_client client;
  char proto[16], via[16];
  uint64_t n;
  switch (input[0] % 8) {
  case 0:
    check_client(forwarded_xff_client(field, len, &trusted, &client), &client);
    break;
  case 1:
    if (forwarded_rfc7239_client(field, len, &trusted, &client, proto, sizeof proto) == 0) {
      check_client(0, &client);
      REQUIRE(memchr(proto, '\0', sizeof proto) != NULL);
    }
    break;
  case 2:
    if (forwarded_via_protocol(field, len, via, sizeof via) == 0) REQUIRE(memchr(via, '\0', sizeof via) != NULL);
    break;
  case 3:
    (void)h3g_parse_duration_ms(text, &n);
    break;
  case 4:
    (void)h3g_parse_size(text, &n);
    break;
  case 5: {
    struct h3g_hostport hp;
    const char *why;
    if (h3g_hostport_parse(text, &hp, &why) == 0) REQUIRE(memchr(hp.host, '\0', sizeof hp.host) != NULL);
    else REQUIRE(why != NULL);
    break;
  }
  case 6: {
    struct cidr_list list;
    const char *bad;
    (void)cidr_list_parse(text, &list, &bad);
    (void)cidr_list_match_text(&trusted, field, len);
    break;
  }
  case 7: {
    const char *authority, *rest;
    size_t alen, rlen;
    if (h1_absolute_form(field, len, &authority, &alen, &rest, &rlen)) {
      /* the two pieces lie inside the target, in order, and end it */
      REQUIRE(authority >= field && authority + alen == rest && rest + rlen == field + len);
      REQUIRE(rlen == 0 || rest[0] == '/' || rest[0] == '?');
    }
    break;
  }
  }
  free(field);
  free(text);
  return 0;
}
