/* The fuzz targets' check: a broken promise names itself and aborts, which
 * libFuzzer reports as a finding with the input that caused it. */
#ifndef H3G_FUZZ_REQUIRE_H
#define H3G_FUZZ_REQUIRE_H

#include <stdio.h>
#include <stdlib.h>

#define REQUIRE(c)                                                    \
  do {                                                                \
    if (!(c)) {                                                       \
      fprintf(stderr, "%s:%d: broken: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                        \
    }                                                                 \
  } while (0)

#endif
