/* Durations, sizes and addresses as users write them in configs and
 * flags; the Date field's format. */
#include <errno.h>

#include "addr.h"
#include "check.h"
#include "http_date.h"
#include "units.h"

int main(void) {
  uint64_t v;
  CHECK(h3g_parse_duration_ms("5s", &v) == 0 && v == 5000);
  CHECK(h3g_parse_duration_ms("250ms", &v) == 0 && v == 250);
  CHECK(h3g_parse_duration_ms("2m", &v) == 0 && v == 120000);
  CHECK(h3g_parse_duration_ms("1.5", &v) == 0 && v == 1500);
  CHECK(h3g_parse_duration_ms("1h", &v) == 0 && v == 3600000);
  CHECK(h3g_parse_duration_ms("5 s", &v) != 0);
  CHECK(h3g_parse_duration_ms("-1s", &v) != 0);
  CHECK(h3g_parse_duration_ms("soon", &v) != 0);
  CHECK(h3g_parse_size("256k", &v) == 0 && v == 262144);
  CHECK(h3g_parse_size("1MiB", &v) == 0 && v == 1048576);
  CHECK(h3g_parse_size("2g", &v) == 0 && v == 2147483648u);
  CHECK(h3g_parse_size("12", &v) == 0 && v == 12);
  CHECK(h3g_parse_size("12x", &v) != 0);

  struct h3g_hostport hp;
  const char *why;
  CHECK(h3g_hostport_parse("127.0.0.1:8443", &hp, &why) == 0);
  CHECK_STR(hp.host, "127.0.0.1");
  CHECK(hp.port == 8443 && !hp.is_unix);
  CHECK(h3g_hostport_parse("[::1]:80", &hp, &why) == 0);
  CHECK_STR(hp.host, "::1");
  CHECK(h3g_hostport_parse(":8080", &hp, &why) == 0 && hp.host[0] == '\0' && hp.port == 8080);
  CHECK(h3g_hostport_parse("backend.internal:8000", &hp, &why) == 0);
  CHECK(h3g_hostport_parse("unix:/run/x.sock", &hp, &why) == 0 && hp.is_unix);
  CHECK_STR(hp.path, "/run/x.sock");
  CHECK(h3g_hostport_parse("::1:80", &hp, &why) != 0);
  CHECK(h3g_hostport_parse("host:99999", &hp, &why) != 0);
  CHECK(h3g_hostport_parse("host", &hp, &why) != 0);

  struct sockaddr_storage ss;
  socklen_t len;
  char text[64];
  CHECK(h3g_hostport_parse("[::1]:443", &hp, &why) == 0);
  CHECK(h3g_hostport_to_sockaddr(&hp, &ss, &len) == 0);
  h3g_sockaddr_format((struct sockaddr *)&ss, len, text, sizeof text);
  CHECK_STR(text, "[::1]:443");
  CHECK(h3g_hostport_parse("example.com:443", &hp, &why) == 0);
  CHECK(h3g_hostport_to_sockaddr(&hp, &ss, &len) == -EAGAIN);

  char date[64];
  h3g_http_date_of(784111777, date); /* RFC 9110 5.6.7's example */
  CHECK_STR(date, "Sun, 06 Nov 1994 08:49:37 GMT");
  h3g_http_date_of(951782400, date); /* a leap day */
  CHECK_STR(date, "Tue, 29 Feb 2000 00:00:00 GMT");
  CHECK(strlen(h3g_http_date()) == HTTP_DATE_LEN);
  CHECK_DONE();
}
