/* metrics_merge: the master's sum of its workers' /metrics texts. */
#include <event2/buffer.h>
#include <stdlib.h>

#include "check.h"
#include "metrics.h"

static char *merged(const char *const *texts, size_t n) {
  size_t lens[8];
  for (size_t i = 0; i < n; i++) lens[i] = strlen(texts[i]);
  struct evbuffer *out = evbuffer_new();
  metrics_merge(out, texts, lens, n);
  size_t len = evbuffer_get_length(out);
  char *s = malloc(len + 1);
  evbuffer_remove(out, s, len);
  s[len] = '\0';
  evbuffer_free(out);
  return s;
}

static void sums_counters_gauges_and_histograms(void) {
  const char *a = "# HELP req Requests.\n# TYPE req counter\n"
                  "req{code=\"200\"} 3\n"
                  "# HELP dur Duration.\n# TYPE dur histogram\n"
                  "dur_bucket{le=\"0.1\"} 1\ndur_bucket{le=\"+Inf\"} 3\ndur_sum 0.25\ndur_count 3\n"
                  "# HELP live Live.\n# TYPE live gauge\nlive 2\n";
  const char *b = "# HELP req Requests.\n# TYPE req counter\n"
                  "req{code=\"200\"} 4\nreq{code=\"404\"} 1\n"
                  "# HELP dur Duration.\n# TYPE dur histogram\n"
                  "dur_bucket{le=\"0.1\"} 2\ndur_bucket{le=\"+Inf\"} 5\ndur_sum 0.5\ndur_count 5\n"
                  "# HELP live Live.\n# TYPE live gauge\nlive 0\n";
  const char *texts[] = {a, b};
  char *m = merged(texts, 2);
  CHECK_STR(m, "# HELP req Requests.\n# TYPE req counter\n"
               "req{code=\"200\"} 7\nreq{code=\"404\"} 1\n"
               "# HELP dur Duration.\n# TYPE dur histogram\n"
               "dur_bucket{le=\"0.1\"} 3\ndur_bucket{le=\"+Inf\"} 8\ndur_sum 0.750000\ndur_count 8\n"
               "# HELP live Live.\n# TYPE live gauge\nlive 2\n");
  free(m);
}

/* The gateway prints three upstream families' HELP/TYPE first and then their
 * series interleaved per server; the sum puts each family's series under
 * its own header, as the text format requires. */
static void regroups_interleaved_families(void) {
  const char *a = "# HELP st State.\n# TYPE st gauge\n# HELP n Count.\n# TYPE n counter\n"
                  "st{s=\"a\"} 1\nn{s=\"a\"} 5\nst{s=\"b\"} 1\nn{s=\"b\"} 6\n";
  const char *texts[] = {a, a};
  char *m = merged(texts, 2);
  CHECK_STR(m, "# HELP st State.\n# TYPE st gauge\nst{s=\"a\"} 2\nst{s=\"b\"} 2\n"
               "# HELP n Count.\n# TYPE n counter\nn{s=\"a\"} 10\nn{s=\"b\"} 12\n");
  free(m);
}

static void ignores_what_is_not_a_sample(void) {
  const char *a = "# a free comment\nno_value\nbad 12abc\n\nok 1\n";
  const char *texts[] = {a, "ok 2"}; /* no final newline */
  char *m = merged(texts, 2);
  CHECK_STR(m, "ok 3\n");
  free(m);
}

static void nothing_in_nothing_out(void) {
  char *m = merged(NULL, 0);
  CHECK_STR(m, "");
  free(m);
}

int main(void) {
  sums_counters_gauges_and_histograms();
  regroups_interleaved_families();
  ignores_what_is_not_a_sample();
  nothing_in_nothing_out();
  CHECK_DONE();
}
