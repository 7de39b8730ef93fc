/* What the worker believes a trusted proxy says about the client. */
#include "check.h"
#include "cidr.h"
#include "forwarded.h"

int main(void) {
  struct cidr_list trusted;
  const char *bad;
  CHECK(cidr_list_parse("127.0.0.1, 10.0.0.0/8,::1,unix", &trusted, &bad) == 0);
  struct forwarded_client fc;
  const char *xff = "203.0.113.9, 10.1.2.3";
  CHECK(forwarded_xff_client(xff, strlen(xff), &trusted, &fc) == 0);
  CHECK_STR(fc.host, "203.0.113.9"); /* the trusted hop on the right is skipped */
  xff = "198.51.100.1, 203.0.113.9";
  CHECK(forwarded_xff_client(xff, strlen(xff), &trusted, &fc) == 0);
  CHECK_STR(fc.host, "203.0.113.9"); /* a client-supplied entry on the left is ignored */
  xff = "10.0.0.1,127.0.0.1";
  CHECK(forwarded_xff_client(xff, strlen(xff), &trusted, &fc) == 0);
  CHECK_STR(fc.host, "10.0.0.1"); /* all trusted: the leftmost */
  xff = "2001:db8::5";
  CHECK(forwarded_xff_client(xff, strlen(xff), &trusted, &fc) == 0);
  CHECK_STR(fc.host, "2001:db8::5");
  CHECK(forwarded_xff_client("", 0, &trusted, &fc) != 0);
  xff = "<script>";
  CHECK(forwarded_xff_client(xff, strlen(xff), &trusted, &fc) != 0);

  char proto[16];
  const char *fwd = "for=1.2.3.4;proto=http, for=\"[2001:db8::7]:4711\";proto=https;by=x";
  CHECK(forwarded_rfc7239_client(fwd, strlen(fwd), &trusted, &fc, proto, sizeof proto) == 0);
  CHECK_STR(fc.host, "2001:db8::7"); /* the nearest hop, not trusted: the client */
  CHECK(fc.port == 4711);
  CHECK_STR(proto, "https");
  fwd = "for=192.0.2.60:8080;proto=HTTP";
  CHECK(forwarded_rfc7239_client(fwd, strlen(fwd), &trusted, &fc, proto, sizeof proto) == 0);
  CHECK_STR(fc.host, "192.0.2.60");
  CHECK(fc.port == 8080);
  CHECK_STR(proto, "http");
  /* a trusted load balancer in front of the gateway vouches for its client */
  fwd = "for=\"203.0.113.7:4711\";proto=https, for=\"10.0.0.5:50000\";proto=http";
  CHECK(forwarded_rfc7239_client(fwd, strlen(fwd), &trusted, &fc, proto, sizeof proto) == 0);
  CHECK_STR(fc.host, "203.0.113.7");
  CHECK(fc.port == 4711);
  CHECK_STR(proto, "https");
  /* what the client itself put on the left is not believed */
  fwd = "for=198.51.100.1, for=203.0.113.7, for=\"10.0.0.5:1\"";
  CHECK(forwarded_rfc7239_client(fwd, strlen(fwd), &trusted, &fc, proto, sizeof proto) == 0);
  CHECK_STR(fc.host, "203.0.113.7");
  /* an obfuscated node stops the walk, and has no address to give */
  fwd = "for=203.0.113.7, for=_hidden, for=127.0.0.1";
  CHECK(forwarded_rfc7239_client(fwd, strlen(fwd), &trusted, &fc, proto, sizeof proto) == 0);
  CHECK_STR(fc.host, "_hidden");
  /* all trusted: the leftmost */
  fwd = "for=10.0.0.1, for=127.0.0.1";
  CHECK(forwarded_rfc7239_client(fwd, strlen(fwd), &trusted, &fc, proto, sizeof proto) == 0);
  CHECK_STR(fc.host, "10.0.0.1");
  CHECK(forwarded_rfc7239_client("", 0, &trusted, &fc, proto, sizeof proto) != 0);
  /* node ports (RFC 7239 6): a bracketed IPv6 with and without one, an
   * obfuscated one, none after the colon, one out of range */
  const struct {
    const char *node, *host;
    int port;
  } nodes[] = {
      {"for=\"[2001:db8::7]\"", "2001:db8::7", -1}, {"for=\"[::1]:_a1\"", "::1", -1},
      {"for=192.0.2.1:_gazonk", "192.0.2.1", -1},    {"for=192.0.2.1:", "192.0.2.1", -1},
      {"for=\"[::1]:65535\"", "::1", 65535},       {"for=192.0.2.1:65536", "", -1},
      {"for=\"[::1\"", "", -1},
  };
  for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
    CHECK(forwarded_rfc7239_client(nodes[i].node, strlen(nodes[i].node), &trusted, &fc, proto, sizeof proto) == 0);
    CHECK_STR(fc.host, nodes[i].host);
    CHECK(fc.port == nodes[i].port);
  }

  char v[8];
  /* the first entry: the protocol the client used before any proxy */
  const char *via = "3 edge (cdn, v2), 1.1 h3gate";
  CHECK(forwarded_via_protocol(via, strlen(via), v, sizeof v) == 0);
  CHECK_STR(v, "3");
  via = "  2 h3gate , 1.1 other";
  CHECK(forwarded_via_protocol(via, strlen(via), v, sizeof v) == 0);
  CHECK_STR(v, "2");
  via = "HTTP/2 h3gate";
  CHECK(forwarded_via_protocol(via, strlen(via), v, sizeof v) == 0);
  CHECK_STR(v, "2");
  via = "1.1 h3gate";
  CHECK(forwarded_via_protocol(via, strlen(via), v, sizeof v) == 0);
  CHECK_STR(v, "1.1");
  via = "h3gate";
  CHECK(forwarded_via_protocol(via, strlen(via), v, sizeof v) != 0);

  /* cidr matching */
  CHECK(cidr_list_match_text(&trusted, "10.200.1.1", 10));
  CHECK(!cidr_list_match_text(&trusted, "11.0.0.1", 8));
  CHECK(cidr_list_match_text(&trusted, "::1", 3));
  CHECK(cidr_list_parse("10.0.0.0/33", &trusted, &bad) != 0);
  CHECK(cidr_list_parse("*", &trusted, &bad) == 0 && trusted.any);
  CHECK_DONE();
}
