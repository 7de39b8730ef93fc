#include "units.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <strings.h>

static int parse_number(const char *text, double *value, const char **rest) {
  char *end;
  if (!isdigit((unsigned char)text[0])) return -EINVAL;
  errno = 0;
  *value = strtod(text, &end);
  if (errno != 0 || *value < 0) return -EINVAL;
  *rest = end;
  return 0;
}

struct unit {
  const char *suffix;
  double factor;
};

/* A number with one of the units' suffixes (or none, when "" is listed),
 * scaled and checked against max; round adds 0.5 before truncating. */
static int parse_scaled(const char *text, const struct unit *units, size_t n_units, double max,
                        bool round, uint64_t *out) {
  double v;
  const char *rest;
  if (parse_number(text, &v, &rest) != 0) return -EINVAL;
  for (size_t i = 0; i < n_units; i++) {
    if (strcasecmp(rest, units[i].suffix) != 0) continue;
    double r = v * units[i].factor;
    if (r > max) return -ERANGE;
    *out = (uint64_t)(round ? r + 0.5 : r);
    return 0;
  }
  return -EINVAL;
}

int h3g_parse_duration_ms(const char *text, uint64_t *ms) {
  static const struct unit units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
  return parse_scaled(text, units, sizeof units / sizeof units[0], 1e15, true, ms);
}

int h3g_parse_size(const char *text, uint64_t *bytes) {
  static const struct unit units[] = {
      {"", 1},           {"b", 1},          {"k", 1024},       {"kb", 1024},
      {"kib", 1024},     {"m", 1048576},    {"mb", 1048576},   {"mib", 1048576},
      {"g", 1073741824}, {"gb", 1073741824}, {"gib", 1073741824}};
  return parse_scaled(text, units, sizeof units / sizeof units[0], 1.8e19, false, bytes);
}
