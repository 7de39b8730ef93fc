/* limits.max_connections_per_ip: client connections, TCP and QUIC
 * together, per client address in this gateway process (nginx's
 * limit_conn). Every connection is counted, so that a reload that sets or
 * lowers the limit finds the true numbers. */
#ifndef H3G_GATEWAY_PER_IP_H
#define H3G_GATEWAY_PER_IP_H

#include <stdbool.h>
#include <stdint.h>

/* Counts a new connection from ip unless it already has limit (0: no
 * limit); false when refused (nothing counted). */
bool per_ip_admit(const char *ip, uint32_t limit);
/* The connection per_ip_admit counted has ended. */
void per_ip_leave(const char *ip);
/* Connections refused so far (for /metrics). */
uint64_t per_ip_refused(void);

#endif
