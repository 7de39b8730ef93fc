/* Socket set-up shared by the gateway and the worker. */
#ifndef H3G_SOCK_H
#define H3G_SOCK_H

#include <stdbool.h>
#include <sys/socket.h>

int h3g_set_nonblock(int fd);
/* A non-blocking, close-on-exec listening TCP or unix socket. A stale unix
 * socket file is replaced. Returns the fd or -errno. */
int h3g_listen(const struct sockaddr *sa, socklen_t len, int backlog, bool reuseport);
/* TCP_NODELAY on TCP sockets; a no-op on unix sockets. */
void h3g_set_nodelay(int fd);

#endif
