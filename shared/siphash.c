#include "siphash.h"

#include <string.h>

#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define ROUND(v0, v1, v2, v3)                                                                     \
  do {                                                                                            \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                     \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                        \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                        \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                     \
  } while (0)

static uint64_t load64_le(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

uint64_t siphash24(const uint64_t key[2], const void *data, size_t len) {
  const uint8_t *p = data;
  uint64_t v0 = 0x736f6d6570736575ull ^ key[0], v1 = 0x646f72616e646f6dull ^ key[1];
  uint64_t v2 = 0x6c7967656e657261ull ^ key[0], v3 = 0x7465646279746573ull ^ key[1];
  size_t blocks = len / 8;
  for (size_t i = 0; i < blocks; i++, p += 8) {
    uint64_t m = load64_le(p);
    v3 ^= m;
    ROUND(v0, v1, v2, v3);
    ROUND(v0, v1, v2, v3);
    v0 ^= m;
  }
  uint8_t last[8] = {0};
  memcpy(last, p, len % 8);
  uint64_t b = ((uint64_t)len << 56) | load64_le(last);
  v3 ^= b;
  ROUND(v0, v1, v2, v3);
  ROUND(v0, v1, v2, v3);
  v0 ^= b;
  v2 ^= 0xff;
  for (int i = 0; i < 4; i++) ROUND(v0, v1, v2, v3);
  return v0 ^ v1 ^ v2 ^ v3;
}
