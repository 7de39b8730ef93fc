#include "h2_out.h"

#include <string.h>

enum { STAGE = 16384 };

int h2_send_into(nghttp2_session *session, struct evbuffer *out, size_t high_water) {
  struct evbuffer_iovec v = {0};
  size_t used = 0;
  int rc = 0;
  while (evbuffer_get_length(out) + used < high_water) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(session, &data);
    if (n < 0) {
      rc = -1;
      break;
    }
    if (n == 0) break;
    if (used + (size_t)n > v.iov_len) { /* the staged chunk is full: hand it over */
      if (used > 0) {
        v.iov_len = used;
        evbuffer_commit_space(out, &v, 1);
      }
      used = 0;
      v.iov_len = 0;
      if ((size_t)n >= STAGE) {
        evbuffer_add(out, data, (size_t)n);
        continue;
      }
      if (evbuffer_reserve_space(out, STAGE, &v, 1) < 1) {
        rc = -1;
        break;
      }
    }
    memcpy((uint8_t *)v.iov_base + used, data, (size_t)n);
    used += (size_t)n;
  }
  if (used > 0) {
    v.iov_len = used;
    evbuffer_commit_space(out, &v, 1);
  }
  return rc;
}
