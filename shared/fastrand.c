#include "fastrand.h"

#include <sys/random.h>
#include <time.h>

static uint64_t state[4];
static int seeded;

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static void seed(void) {
  if (getrandom(state, sizeof state, 0) != (ssize_t)sizeof state) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    state[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull;
    state[1] = (uint64_t)ts.tv_sec ^ 0xbf58476d1ce4e5b9ull;
    state[2] = (uint64_t)(uintptr_t)&ts;
    state[3] = 0x94d049bb133111ebull;
  }
  seeded = 1;
}

uint64_t fastrand64(void) {
  if (!seeded) seed();
  uint64_t result = rotl(state[1] * 5, 7) * 9;
  uint64_t t = state[1] << 17;
  state[2] ^= state[0];
  state[3] ^= state[1];
  state[1] ^= state[2];
  state[0] ^= state[3];
  state[2] ^= t;
  state[3] = rotl(state[3], 45);
  return result;
}

void fastrand_reseed(void) { seed(); }
