/* The master process (workers > 1): sockets per worker slot, the worker
 * processes, signals, and the admin listener for all of them. */
#ifndef H3G_GATEWAY_MASTER_H
#define H3G_GATEWAY_MASTER_H

#include "config.h"

/* What a worker process gets from the master. */
struct gw_child {
  int slot;           /* 0..workers-1: also the first byte of its QUIC connection IDs */
  const int *tcp_fds; /* one per conf->listens entry */
  const int *udp_fds; /* one per conf->listens entry; -1 where HTTP/3 is off */
  int ctl_fd;         /* to the master: readiness and /metrics */
};

/* Runs the master until it stops; returns the exit code. Owns conf. */
int master_run(struct gw_conf *conf);

/* A gateway process: alone (child NULL) or as a master's worker (main.c). */
int gateway_serve(struct gw_conf *conf, const struct gw_child *child);

/* In a worker: answers the master's requests on ctl_fd, says it is ready,
 * and calls on_gone if the master goes away. */
void master_link_start(int ctl_fd, void (*on_gone)(void));

#endif
