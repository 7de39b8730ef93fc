/* The worker process's server: listening sockets, the connection table,
 * the flush pass, timers and graceful stop, and the _h3gate Python module. */
#ifndef H3G_BACKEND_SERVER_H
#define H3G_BACKEND_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <Python.h>

#include "cidr.h"

/* Settings every worker process runs with; filled from the command line,
 * read-only once serving. */
struct worker_config {
  struct cidr_list forwarded_allow;
  uint32_t h2_max_concurrent_streams;
  uint32_t h2_stream_window;
  uint32_t h2_conn_window;
  uint32_t h2_max_frame_size;
  size_t max_header_bytes;
  size_t ws_max_size;
  uint64_t ws_ping_interval_ms; /* 0: no keepalive pings */
  uint64_t ws_ping_timeout_ms;
  uint64_t keepalive_timeout_ms;
  uint64_t head_timeout_ms;     /* a request head must be in within this */
  uint64_t graceful_timeout_ms;
  uint64_t max_requests;
  uint64_t limit_concurrency;   /* apps running at once in a process, then 503; 0: no limit */
  uint32_t worker_index;
  uint32_t worker_count;
  bool access_log;
};

struct listener;

const struct worker_config *server_config(void);
struct worker_config *server_config_mut(void);
/* scope["server"] for connections accepted on l: (host, port) or (path, None). */
PyObject *listener_server_tuple(struct listener *l);

/* Registers an inherited listening fd before the server starts. */
int server_add_listener(int fd);
/* Creates the _h3gate module; call before Py_Initialize via PyImport_AppendInittab. */
PyObject *server_module_init(void);
/* Where the worker tells the supervisor it is ready (-1: nobody listens). */
void server_set_ready_fd(int fd);

#endif
