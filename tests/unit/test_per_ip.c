/* Connections per client address across gateway processes
 * (gateway/per_ip.c): the limit holds over the sum of every process's
 * table, a process that takes over a slot starts it empty, counting goes
 * on with no limit set (a reload may set one), and thousands of addresses
 * fit. One process here plays each slot in turn, as attach allows. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "config.h"
#include "per_ip.h"

static unsigned admitted(const char *ip, uint32_t limit, unsigned tries) {
  unsigned n = 0;
  for (unsigned i = 0; i < tries; i++) n += per_ip_admit(ip, limit);
  return n;
}

int main(void) {
  struct gw_conf conf;
  memset(&conf, 0, sizeof conf);
  conf.max_connections = 1000;
  conf.quic.max_connections = 1000;
  CHECK(per_ip_prepare(3, &conf) == 0);

  per_ip_attach(0);
  CHECK(admitted("192.0.2.1", 2, 3) == 2); /* the third is refused */
  CHECK(per_ip_refused() == 1);
  per_ip_leave("192.0.2.1");
  CHECK(admitted("192.0.2.1", 2, 1) == 1); /* a place given back */
  CHECK(admitted("192.0.2.2", 2, 2) == 2); /* another address, its own count */

  /* Slot 1 sees slot 0's two: one more under a limit of 3, none under 2. */
  per_ip_attach(1);
  CHECK(admitted("192.0.2.1", 2, 1) == 0);
  CHECK(admitted("192.0.2.1", 3, 2) == 1);

  /* Slot 0 taken over: its two are gone, slot 1's one stays. */
  per_ip_attach(0);
  CHECK(admitted("192.0.2.1", 3, 3) == 2);

  /* No limit: counted all the same, so a limit set later sees them. */
  per_ip_attach(2);
  CHECK(admitted("2001:db8::1", 0, 100) == 100);
  CHECK(admitted("2001:db8::1", 50, 1) == 0);
  for (int i = 0; i < 100; i++) per_ip_leave("2001:db8::1");
  CHECK(admitted("2001:db8::1", 1, 2) == 1);
  per_ip_leave("203.0.113.9"); /* never counted: nothing happens */

  /* As many addresses as the table is sized for (its connections). */
  unsigned ok = 0;
  char ip[64];
  for (int i = 0; i < 2000; i++) {
    snprintf(ip, sizeof ip, "10.0.%d.%d", i / 250, i % 250);
    ok += per_ip_admit(ip, 1);
  }
  CHECK(ok == 2000);
  CHECK_DONE();
}
