/* libFuzzer target: the gateway's YAML config loader over arbitrary text.
 *
 * Beyond what the sanitizers catch it checks the promise made to
 * operators: a config that is refused is refused with
 * "FILE:LINE:COLUMN: what is wrong", never without a place or a reason. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "require.h"

/* "N:" at s, for a positive N; returns what follows, or NULL. */
static const char *number_and_colon(const char *s) {
  if (!isdigit((unsigned char)*s) || *s == '0') return NULL;
  while (isdigit((unsigned char)*s)) s++;
  return *s == ':' ? s + 1 : NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *input, size_t size) {
  static int fd = -1;
  static char path[64];
  if (fd < 0) {
    fd = memfd_create("gateway.yaml", 0);
    REQUIRE(fd >= 0);
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  REQUIRE(ftruncate(fd, 0) == 0);
  REQUIRE(pwrite(fd, input, size, 0) == (ssize_t)size);
  char err[512] = "";
  struct gw_conf *conf = conf_load(path, err, sizeof err);
  if (conf != NULL) {
    conf_free(conf);
    return 0;
  }
  size_t plen = strlen(path);
  REQUIRE(strncmp(err, path, plen) == 0 && err[plen] == ':');
  const char *line_end = number_and_colon(err + plen + 1);
  REQUIRE(line_end != NULL);
  const char *col_end = number_and_colon(line_end);
  REQUIRE(col_end != NULL && col_end[0] == ' ' && col_end[1] != '\0');
  return 0;
}
