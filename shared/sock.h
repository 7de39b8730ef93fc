/* Socket set-up shared by the gateway and the worker. */
#ifndef H3G_SOCK_H
#define H3G_SOCK_H

#include <stdbool.h>
#include <stdint.h>
#include <netinet/udp.h>
#include <sys/socket.h>

/* UDP GSO and GRO (Linux 4.18, 5.0), for headers that predate them. */
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

/* Control-message room for one UDP_SEGMENT size, aligned for cmsghdr. */
union h3g_udp_segment_ctrl {
  char buf[CMSG_SPACE(sizeof(uint16_t))];
  struct cmsghdr align;
};
/* UDP GSO for one sendmsg: the kernel cuts msg's payload into datagrams of
 * seg bytes (the last may be shorter). Fills ctrl and points msg at it. */
void h3g_udp_set_segment(struct msghdr *msg, union h3g_udp_segment_ctrl *ctrl, uint16_t seg);

int h3g_set_nonblock(int fd);
/* A non-blocking, close-on-exec listening TCP or unix socket. A stale unix
 * socket file is replaced. Returns the fd or -errno. */
int h3g_listen(const struct sockaddr *sa, socklen_t len, int backlog, bool reuseport);
/* TCP_NODELAY on TCP sockets; a no-op on unix sockets. */
/* TCP keepalive probes after idle_s without traffic, interval_s apart,
 * count of them unanswered ending the connection (ETIMEDOUT). */
void h3g_set_keepalive(int fd, unsigned idle_s, unsigned interval_s, unsigned count);
void h3g_set_nodelay(int fd);
/* True for the errors that say the process (or the system) is out of file
 * descriptors or socket memory, not that the peer did anything: EMFILE,
 * ENFILE, ENOBUFS, ENOMEM. */
bool h3g_out_of_files(int err);
/* Raises the soft open-files limit to the hard one (at most 1,048,576), as
 * Go servers such as Caddy do at start: a shell's soft limit (often 1024)
 * would cap a server at about a thousand connections while the hard one
 * allows far more. Returns the soft limit now in force. */
unsigned long h3g_raise_nofile_limit(void);

#endif
