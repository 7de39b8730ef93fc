/* Latency samples of the load clients (h3load, wsload), in nanoseconds. */
#ifndef H3G_BENCH_LATENCY_H
#define H3G_BENCH_LATENCY_H

#include <stddef.h>
#include <stdint.h>

/* Monotonic clock, in nanoseconds. */
uint64_t latency_now_ns(void);
void latency_sort(uint64_t *ns, size_t n);
/* The p-quantile (0..1) of sorted samples, in milliseconds; 0 with none. */
double latency_ms(const uint64_t *sorted_ns, size_t n, double p);

#endif
