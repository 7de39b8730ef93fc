/* A minimal unit-test harness: CHECK records failures and goes on; main
 * returns non-zero if any check failed. */
#ifndef H3G_TEST_CHECK_H
#define H3G_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;

#define CHECK(cond)                                                                               \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                    \
      check_failures++;                                                                           \
    }                                                                                             \
  } while (0)

#define CHECK_STR(a, b)                                                                           \
  do {                                                                                            \
    const char *a_ = (a), *b_ = (b);                                                              \
    if (strcmp(a_, b_) != 0) {                                                                    \
      fprintf(stderr, "%s:%d: \"%s\" != \"%s\"\n", __FILE__, __LINE__, a_, b_);                   \
      check_failures++;                                                                           \
    }                                                                                             \
  } while (0)

#define CHECK_DONE()                                                                              \
  do {                                                                                            \
    if (check_failures) fprintf(stderr, "%d check(s) failed\n", check_failures);                  \
    return check_failures ? 1 : 0;                                                                \
  } while (0)

#endif
