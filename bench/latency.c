#include "latency.h"

#include <stdlib.h>
#include <time.h>

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

void latency_sort(uint64_t *ns, size_t n) { qsort(ns, n, sizeof *ns, cmp_u64); }

double latency_ms(const uint64_t *sorted_ns, size_t n, double p) {
  if (n == 0) return 0;
  return (double)sorted_ns[(size_t)(p * (double)(n - 1) + 0.5)] / 1e6;
}

uint64_t latency_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
