#include "metrics.h"

#include <string.h>

#include "down.h"
#include "gw.h"
#include "per_ip.h"
#include "quic.h"
#include "upstream.h"
#include "xchg.h"

enum { PROTOCOLS = 4, STATUSES = 600 };

static const double bucket_s[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
enum { BUCKETS = sizeof bucket_s / sizeof bucket_s[0] };

static struct {
  uint64_t by_status[PROTOCOLS][STATUSES]; /* status 0 (client left first) counts as 499 */
  uint64_t buckets[PROTOCOLS][BUCKETS];
  uint64_t count[PROTOCOLS];
  double sum_s[PROTOCOLS];
  int64_t in_flight;
} M;

static const char *const proto_label[PROTOCOLS] = {"1.0", "1.1", "2", "3"};

void metrics_request_started(void) { M.in_flight++; }

void metrics_request_done(const struct xchg *x, uint64_t duration_us) {
  M.in_flight--;
  if (x->pinned) return; /* the gateway's own health probe, not a client's request */
  int p = (int)x->proto;
  int status = x->status ? x->status : 499;
  if (status >= STATUSES) status = STATUSES - 1;
  M.by_status[p][status]++;
  double s = (double)duration_us / 1e6;
  for (int b = 0; b < BUCKETS; b++)
    if (s <= bucket_s[b]) M.buckets[p][b]++;
  M.count[p]++;
  M.sum_s[p] += s;
}

static void render_requests(struct evbuffer *out) {
  evbuffer_add_printf(out, "# HELP h3gate_requests_total Requests answered, by client protocol and status.\n"
                           "# TYPE h3gate_requests_total counter\n");
  for (int p = 0; p < PROTOCOLS; p++)
    for (int st = 0; st < STATUSES; st++)
      if (M.by_status[p][st])
        evbuffer_add_printf(out, "h3gate_requests_total{protocol=\"%s\",code=\"%d\"} %llu\n",
                            proto_label[p], st, (unsigned long long)M.by_status[p][st]);
  evbuffer_add_printf(out, "# HELP h3gate_request_duration_seconds Time from request to the end of the response.\n"
                           "# TYPE h3gate_request_duration_seconds histogram\n");
  for (int p = 0; p < PROTOCOLS; p++) {
    if (!M.count[p]) continue;
    for (int b = 0; b < BUCKETS; b++)
      evbuffer_add_printf(out, "h3gate_request_duration_seconds_bucket{protocol=\"%s\",le=\"%g\"} %llu\n",
                          proto_label[p], bucket_s[b], (unsigned long long)M.buckets[p][b]);
    evbuffer_add_printf(out,
                        "h3gate_request_duration_seconds_bucket{protocol=\"%s\",le=\"+Inf\"} %llu\n"
                        "h3gate_request_duration_seconds_sum{protocol=\"%s\"} %.6f\n"
                        "h3gate_request_duration_seconds_count{protocol=\"%s\"} %llu\n",
                        proto_label[p], (unsigned long long)M.count[p], proto_label[p], M.sum_s[p],
                        proto_label[p], (unsigned long long)M.count[p]);
  }
  evbuffer_add_printf(out, "# HELP h3gate_requests_in_flight Exchanges not finished yet.\n"
                           "# TYPE h3gate_requests_in_flight gauge\n"
                           "h3gate_requests_in_flight %lld\n", (long long)M.in_flight);
}

void metrics_render(struct evbuffer *out) {
  render_requests(out);
  evbuffer_add_printf(out, "# HELP h3gate_client_connections Open client connections.\n"
                           "# TYPE h3gate_client_connections gauge\n"
                           "h3gate_client_connections{transport=\"tcp\"} %zu\n"
                           "h3gate_client_connections{transport=\"quic\"} %zu\n",
                      down_count(), quic_connection_count());
  evbuffer_add_printf(out, "# HELP h3gate_connections_refused_total Client connections refused at "
                           "limits.max_connections_per_ip.\n"
                           "# TYPE h3gate_connections_refused_total counter\n"
                           "h3gate_connections_refused_total{reason=\"per_ip\"} %llu\n",
                      (unsigned long long)per_ip_refused());
  evbuffer_add_printf(out, "# HELP h3gate_quic_library_bytes Heap held by the QUIC and HTTP/3 libraries.\n"
                           "# TYPE h3gate_quic_library_bytes gauge\n"
                           "h3gate_quic_library_bytes{library=\"ngtcp2\"} %lld\n"
                           "h3gate_quic_library_bytes{library=\"nghttp3\"} %lld\n",
                      (long long)quic_mem_stats.ngtcp2_bytes, (long long)quic_mem_stats.nghttp3_bytes);
  struct gw_runtime *rt = gw.rt;
  evbuffer_add_printf(out, "# HELP h3gate_upstream_server_state Upstream servers (1 for the current state).\n"
                           "# TYPE h3gate_upstream_server_state gauge\n"
                           "# HELP h3gate_upstream_requests_total Requests put on each upstream server.\n"
                           "# TYPE h3gate_upstream_requests_total counter\n"
                           "# HELP h3gate_upstream_in_flight Requests on each upstream server now.\n"
                           "# TYPE h3gate_upstream_in_flight gauge\n");
  for (size_t i = 0; i < rt->n_pools; i++) up_pool_render_metrics(rt->pools[i], out);
}
