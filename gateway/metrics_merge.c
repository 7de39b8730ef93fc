/* Summing the /metrics texts of several gateway processes into one.
 *
 * Each worker process renders its own Prometheus text (metrics.c); the
 * master asks them all and serves the sum, so a scrape sees the whole
 * gateway whichever process it would have reached. Counters, histogram
 * buckets and gauges alike are sums: requests, connections and in-flight
 * exchanges add up across processes.
 *
 * Families are regrouped by name (HELP and TYPE first, then every series of
 * the family), in the order they first appear, as the text format wants. */
#include "metrics.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct series {
  char *key; /* name{labels} */
  double value;
};

struct family {
  char *name;
  char *help, *type; /* whole lines, or NULL */
  struct series *series;
  size_t n_series, cap_series;
};

struct merge {
  struct family *fams;
  size_t n_fams, cap_fams;
};

static void *grow(void *p, size_t *cap, size_t n, size_t size) {
  if (n < *cap) return p;
  size_t c = *cap ? *cap * 2 : 16;
  void *q = realloc(p, c * size);
  if (q == NULL) abort(); /* a scrape of the master's own small heap: nothing sane left */
  *cap = c;
  return q;
}

static char *dup_n(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d == NULL) abort();
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

static struct family *family_named(struct merge *m, const char *name, size_t len) {
  for (size_t i = 0; i < m->n_fams; i++)
    if (strlen(m->fams[i].name) == len && memcmp(m->fams[i].name, name, len) == 0) return &m->fams[i];
  m->fams = grow(m->fams, &m->cap_fams, m->n_fams, sizeof *m->fams);
  struct family *f = &m->fams[m->n_fams++];
  *f = (struct family){.name = dup_n(name, len)};
  return f;
}

/* The family of a series: a declared name equal to the series name or to it
 * less a histogram suffix; a family of its own otherwise. */
static struct family *family_of_series(struct merge *m, const char *name, size_t len) {
  static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
  for (size_t i = 0; i < m->n_fams; i++) {
    size_t fl = strlen(m->fams[i].name);
    if (fl > len || memcmp(m->fams[i].name, name, fl) != 0) continue;
    if (fl == len) return &m->fams[i];
    for (size_t s = 0; s < 3; s++)
      if (strlen(suffixes[s]) == len - fl && memcmp(name + fl, suffixes[s], len - fl) == 0)
        return &m->fams[i];
  }
  return family_named(m, name, len);
}

static void add_series(struct family *f, const char *key, size_t key_len, double value) {
  for (size_t i = 0; i < f->n_series; i++)
    if (strlen(f->series[i].key) == key_len && memcmp(f->series[i].key, key, key_len) == 0) {
      f->series[i].value += value;
      return;
    }
  f->series = grow(f->series, &f->cap_series, f->n_series, sizeof *f->series);
  f->series[f->n_series++] = (struct series){.key = dup_n(key, key_len), .value = value};
}

/* "# HELP name text" or "# TYPE name kind": keeps the first of each. */
static void add_comment(struct merge *m, const char *line, size_t len) {
  bool help = len > 7 && memcmp(line, "# HELP ", 7) == 0;
  bool type = len > 7 && memcmp(line, "# TYPE ", 7) == 0;
  if (!help && !type) return;
  const char *name = line + 7, *end = memchr(name, ' ', len - 7);
  size_t name_len = end ? (size_t)(end - name) : len - 7;
  struct family *f = family_named(m, name, name_len);
  char **slot = help ? &f->help : &f->type;
  if (*slot == NULL) *slot = dup_n(line, len);
}

static void add_sample(struct merge *m, const char *line, size_t len) {
  const char *space = NULL;
  for (size_t i = len; i > 0; i--)
    if (line[i - 1] == ' ') {
      space = line + i - 1;
      break;
    }
  if (space == NULL || space == line) return;
  char num[64];
  size_t nl = len - (size_t)(space + 1 - line);
  if (nl == 0 || nl >= sizeof num) return;
  memcpy(num, space + 1, nl);
  num[nl] = '\0';
  char *end;
  double v = strtod(num, &end);
  if (*end != '\0') return;
  size_t key_len = (size_t)(space - line);
  const char *brace = memchr(line, '{', key_len);
  size_t name_len = brace ? (size_t)(brace - line) : key_len;
  add_series(family_of_series(m, line, name_len), line, key_len, v);
}

static void add_text(struct merge *m, const char *text, size_t len) {
  const char *p = text, *end = text + len;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    size_t line_len = nl ? (size_t)(nl - p) : (size_t)(end - p);
    if (line_len > 0) {
      if (p[0] == '#') add_comment(m, p, line_len);
      else add_sample(m, p, line_len);
    }
    p += line_len + 1;
  }
}

static void print_value(struct evbuffer *out, double v) {
  if (v == floor(v) && fabs(v) < 1e18) evbuffer_add_printf(out, "%.0f\n", v);
  else evbuffer_add_printf(out, "%.6f\n", v);
}

void metrics_merge(struct evbuffer *out, const char *const *texts, const size_t *lens, size_t n) {
  struct merge m = {0};
  for (size_t i = 0; i < n; i++) add_text(&m, texts[i], lens[i]);
  for (size_t i = 0; i < m.n_fams; i++) {
    struct family *f = &m.fams[i];
    if (f->help) evbuffer_add_printf(out, "%s\n", f->help);
    if (f->type) evbuffer_add_printf(out, "%s\n", f->type);
    for (size_t j = 0; j < f->n_series; j++) {
      evbuffer_add_printf(out, "%s ", f->series[j].key);
      print_value(out, f->series[j].value);
      free(f->series[j].key);
    }
    free(f->series);
    free(f->name);
    free(f->help);
    free(f->type);
  }
  free(m.fams);
}
