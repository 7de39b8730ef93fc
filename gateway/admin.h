/* The admin listener (off unless configured; meant for loopback or a
 * private network): GET /healthz and Prometheus GET /metrics. */
#ifndef H3G_GATEWAY_ADMIN_H
#define H3G_GATEWAY_ADMIN_H

#include <stdbool.h>

#include "config.h"

/* Starts (or moves, on reload) the admin listener. 0, or -1 with err. */
int admin_start(const struct gw_conf *conf, char *err, size_t err_size);
void admin_stop(void);

/* Under a master (master.c), /metrics is the sum over the worker processes.
 * fetch gets the admin connection and must answer it, once, through
 * admin_reply_metrics. */
struct bufferevent;
struct evbuffer;
typedef void (*admin_metrics_fetch)(struct bufferevent *bev, bool head);
void admin_set_metrics_fetch(admin_metrics_fetch fetch);
void admin_reply_metrics(struct bufferevent *bev, bool head, struct evbuffer *body);
/* In a forked worker: closes the master's admin socket without touching the
 * master's event loop, which the fork shares. */
void admin_forget(void);

#endif
