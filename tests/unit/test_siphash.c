/* SipHash-2-4 against the reference vectors of the paper (key 00..0f,
 * messages 00, 00 01, 00 01 02, ...). */
#include "check.h"
#include "siphash.h"

int main(void) {
  uint64_t key[2] = {0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull};
  uint8_t msg[64];
  for (int i = 0; i < 64; i++) msg[i] = (uint8_t)i;
  CHECK(siphash24(key, msg, 0) == 0x726fdb47dd0e0e31ull);
  CHECK(siphash24(key, msg, 1) == 0x74f839c593dc67fdull);
  CHECK(siphash24(key, msg, 8) == 0x93f5f5799a932462ull);
  CHECK(siphash24(key, msg, 15) == 0xa129ca6149be45e5ull);
  CHECK(siphash24(key, msg, 63) == 0x958a324ceb064572ull);
  CHECK_DONE();
}
