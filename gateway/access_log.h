/* The access log: one line per exchange, combined (nginx-like) or JSON. */
#ifndef H3G_GATEWAY_ACCESS_LOG_H
#define H3G_GATEWAY_ACCESS_LOG_H

#include "config.h"

struct xchg;

/* Opens (or reopens, on reload) the file the config names. 0 or -errno. */
int access_log_open(const struct gw_conf *conf);
void access_log_write(const struct xchg *x);

#endif
