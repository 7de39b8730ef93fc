/* Counters for the admin listener's Prometheus /metrics: requests by
 * protocol and status, duration histograms, in-flight exchanges. */
#ifndef H3G_GATEWAY_METRICS_H
#define H3G_GATEWAY_METRICS_H

#include <stdint.h>
#include <event2/buffer.h>

struct xchg;

void metrics_request_started(void);
/* At the end of an exchange (what the access log sees). */
void metrics_request_done(const struct xchg *x, uint64_t duration_us);
/* Appends the Prometheus text exposition (version 0.0.4). */
void metrics_render(struct evbuffer *out);
/* Appends the sum of n such texts (several gateway processes): each series
 * summed by name and labels, families regrouped (metrics_merge.c). */
void metrics_merge(struct evbuffer *out, const char *const *texts, const size_t *lens, size_t n);

#endif
