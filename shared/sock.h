/* Socket set-up shared by the gateway and the worker. */
#ifndef H3G_SOCK_H
#define H3G_SOCK_H

#include <stdbool.h>
#include <netinet/udp.h>
#include <sys/socket.h>

/* UDP GSO and GRO (Linux 4.18, 5.0), for headers that predate them. */
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

int h3g_set_nonblock(int fd);
/* A non-blocking, close-on-exec listening TCP or unix socket. A stale unix
 * socket file is replaced. Returns the fd or -errno. */
int h3g_listen(const struct sockaddr *sa, socklen_t len, int backlog, bool reuseport);
/* TCP_NODELAY on TCP sockets; a no-op on unix sockets. */
void h3g_set_nodelay(int fd);

#endif
