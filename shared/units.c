#include "units.h"

#include <ctype.h>
#include <errno.h>
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

int h3g_parse_duration_ms(const char *text, uint64_t *ms) {
  static const struct {
    const char *suffix;
    double factor;
  } units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
  double v;
  const char *rest;
  if (parse_number(text, &v, &rest) != 0) return -EINVAL;
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    if (strcasecmp(rest, units[i].suffix) == 0) {
      double r = v * units[i].factor;
      if (r > 1e15) return -ERANGE;
      *ms = (uint64_t)(r + 0.5);
      return 0;
    }
  }
  return -EINVAL;
}

int h3g_parse_size(const char *text, uint64_t *bytes) {
  static const struct {
    const char *suffix;
    double factor;
  } units[] = {{"", 1},          {"b", 1},          {"k", 1024},       {"kb", 1024},
               {"kib", 1024},    {"m", 1048576},    {"mb", 1048576},   {"mib", 1048576},
               {"g", 1073741824}, {"gb", 1073741824}, {"gib", 1073741824}};
  double v;
  const char *rest;
  if (parse_number(text, &v, &rest) != 0) return -EINVAL;
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    if (strcasecmp(rest, units[i].suffix) == 0) {
      double r = v * units[i].factor;
      if (r > 1.8e19) return -ERANGE;
      *bytes = (uint64_t)r;
      return 0;
    }
  }
  return -EINVAL;
}
