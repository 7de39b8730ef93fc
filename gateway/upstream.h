/* Upstream pools: named groups of backend servers (host:port resolved by
 * DNS and re-resolved, or unix:/path), several HTTP/2 connections per
 * server, balancing, passive and active health, retries. */
#ifndef H3G_GATEWAY_UPSTREAM_H
#define H3G_GATEWAY_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "config.h"

struct up_pool;
struct xchg;

struct up_pool *up_pool_new(const struct conf_upstream *cu, const struct gw_conf *conf);
/* Starts name resolution and health checks. */
void up_pool_start(struct up_pool *p);
/* Closes idle connections; the pool stays usable for exchanges in flight. */
void up_pool_retire(struct up_pool *p);
void up_pool_free(struct up_pool *p);
const char *up_pool_name(const struct up_pool *p);
uint32_t up_pool_retries(const struct up_pool *p);

/* Prometheus lines for the pool's servers. */
void up_pool_render_metrics(const struct up_pool *p, struct evbuffer *out);

/* Puts the exchange on a server's connection, or queues it until one has
 * room. Errors come back through xchg_up_failed / local responses. */
void up_pool_dispatch(struct up_pool *p, struct xchg *x);
/* The front is gone: take the exchange off its queue or reset its stream. */
void up_cancel(struct xchg *x);
/* More request body (or its end) is ready for the exchange's stream. */
void up_resume_req(struct xchg *x);
/* The front passed n response bytes on: return upstream credit. */
void up_consumed(struct xchg *x, size_t n);

#endif
