/* limits.max_connections_per_ip: client connections, TCP and QUIC
 * together, per client address across every gateway process (nginx's
 * limit_conn). Every connection is counted, so that a reload that sets or
 * lowers the limit finds the true numbers. */
#ifndef H3G_GATEWAY_PER_IP_H
#define H3G_GATEWAY_PER_IP_H

#include <stdbool.h>
#include <stdint.h>

struct gw_conf;

/* The shared tables for this many gateway processes, each sized for the
 * connections one may hold (TCP and QUIC): made once, before the master
 * forks. 0, or -1 after logging why. */
int per_ip_prepare(uint32_t processes, const struct gw_conf *conf);
/* This process counts in the table of its slot, which it empties first. */
void per_ip_attach(uint32_t slot);
/* Counts a new connection from ip unless it already has limit (0: no
 * limit); false when refused (nothing counted). */
bool per_ip_admit(const char *ip, uint32_t limit);
/* The connection per_ip_admit counted has ended. */
void per_ip_leave(const char *ip);
/* Connections refused so far (for /metrics). */
uint64_t per_ip_refused(void);

#endif
