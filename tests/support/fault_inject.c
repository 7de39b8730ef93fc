/* Fault injection for the integration tests, loaded into a server with
 * LD_PRELOAD. It makes chosen calls fail, so the tests reach error paths
 * that a healthy machine never takes (a fork refused under a process limit,
 * a mapping refused for lack of memory):
 *
 *   H3G_FAIL_FORK=2,3          the 2nd and 3rd fork() fail with EAGAIN
 *   H3G_FAIL_SOCKETPAIR=1      the 1st socketpair() fails with EMFILE
 *   H3G_FAIL_MMAP_SHARED=1     the 1st shared anonymous mmap() fails with ENOMEM
 *   H3G_FAIL_REUSEPORT_BPF=1   the 1st SO_ATTACH_REUSEPORT_CBPF fails with EPERM
 *                              (a seccomp policy or a kernel without it)
 *   H3G_FAIL_BIND=5            the 5th bind() fails with EADDRINUSE
 *
 * Calls are counted per process; a forked child goes on from its parent's
 * count. Only shared anonymous mappings are counted for mmap: malloc and the
 * loader map private memory, and their calls must not shift the numbers; for
 * setsockopt, only the one option.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

/* Whether call number n (from 1) is in the comma-separated list in var. */
static bool chosen(const char *var, unsigned n) {
  const char *p = getenv(var);
  while (p && *p) {
    char *end;
    unsigned long v = strtoul(p, &end, 10);
    if (end == p) return false;
    if (v == n) return true;
    p = *end == ',' ? end + 1 : NULL;
  }
  return false;
}

static void *real(const char *name) {
  void *f = dlsym(RTLD_NEXT, name);
  if (f == NULL) abort(); /* nothing to pass the call on to */
  return f;
}

pid_t fork(void) {
  static unsigned calls;
  if (chosen("H3G_FAIL_FORK", ++calls)) {
    errno = EAGAIN;
    return -1;
  }
  pid_t (*next)(void) = real("fork");
  return next();
}

int socketpair(int domain, int type, int protocol, int sv[2]) {
  static unsigned calls;
  if (chosen("H3G_FAIL_SOCKETPAIR", ++calls)) {
    errno = EMFILE;
    return -1;
  }
  int (*next)(int, int, int, int[2]) = real("socketpair");
  return next(domain, type, protocol, sv);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
  static unsigned calls;
  bool shared_anon = (flags & MAP_SHARED) && (flags & MAP_ANONYMOUS);
  if (shared_anon && chosen("H3G_FAIL_MMAP_SHARED", ++calls)) {
    errno = ENOMEM;
    return MAP_FAILED;
  }
  void *(*next)(void *, size_t, int, int, int, off_t) = real("mmap");
  return next(addr, len, prot, flags, fd, off);
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t len) {
  static unsigned calls;
  bool steering = level == SOL_SOCKET && name == SO_ATTACH_REUSEPORT_CBPF;
  if (steering && chosen("H3G_FAIL_REUSEPORT_BPF", ++calls)) {
    errno = EPERM;
    return -1;
  }
  int (*next)(int, int, int, const void *, socklen_t) = real("setsockopt");
  return next(fd, level, name, value, len);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  static unsigned calls;
  if (chosen("H3G_FAIL_BIND", ++calls)) {
    errno = EADDRINUSE;
    return -1;
  }
  int (*next)(int, const struct sockaddr *, socklen_t) = real("bind");
  return next(fd, addr, len);
}
