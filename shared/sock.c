#include "sock.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <unistd.h>

void h3g_udp_set_segment(struct msghdr *msg, union h3g_udp_segment_ctrl *ctrl, uint16_t seg) {
  memset(ctrl, 0, sizeof *ctrl);
  msg->msg_control = ctrl->buf;
  msg->msg_controllen = sizeof ctrl->buf;
  struct cmsghdr *cm = CMSG_FIRSTHDR(msg);
  cm->cmsg_level = SOL_UDP;
  cm->cmsg_type = UDP_SEGMENT;
  cm->cmsg_len = CMSG_LEN(sizeof seg);
  memcpy(CMSG_DATA(cm), &seg, sizeof seg);
}

int h3g_set_nonblock(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return -errno;
  return 0;
}

void h3g_set_keepalive(int fd, unsigned idle_s, unsigned interval_s, unsigned count) {
  int on = 1, idle = (int)idle_s, interval = (int)interval_s, probes = (int)count;
  (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
}

void h3g_set_nodelay(int fd) {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int h3g_listen(const struct sockaddr *sa, socklen_t len, int backlog, bool reuseport) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  if (sa->sa_family == AF_UNIX) {
    /* A file left by a previous run would make bind fail with EADDRINUSE. */
    const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
    if (un->sun_path[0] != '\0') unlink(un->sun_path);
  } else {
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) goto err_close;
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
      goto err_close;
    if (sa->sa_family == AF_INET6) (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  }
  if (bind(fd, sa, len) < 0 || listen(fd, backlog) < 0) goto err_close;
  return fd;

err_close:;
  int err = errno;
  close(fd);
  return -err;
}

unsigned long h3g_raise_nofile_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (1u << 20) ? (1u << 20) : rl.rlim_max;
  if (rl.rlim_cur < want) {
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) getrlimit(RLIMIT_NOFILE, &rl);
  }
  return (unsigned long)rl.rlim_cur;
}

bool h3g_out_of_files(int err) { return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM; }
