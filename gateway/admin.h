/* The admin listener (off unless configured; meant for loopback or a
 * private network): GET /healthz and Prometheus GET /metrics. */
#ifndef H3G_GATEWAY_ADMIN_H
#define H3G_GATEWAY_ADMIN_H

#include "config.h"

/* Starts (or moves, on reload) the admin listener. 0, or -1 with err. */
int admin_start(const struct gw_conf *conf, char *err, size_t err_size);
void admin_stop(void);

#endif
