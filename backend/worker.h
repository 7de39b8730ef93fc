/* One worker process: embedded CPython, the app, the asyncio loop. */
#ifndef H3G_BACKEND_WORKER_H
#define H3G_BACKEND_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include "options.h"

/* Imports the app and exits: 0, or 1 after one line naming the module and
 * the Python error. Run in a child before the supervisor binds. */
int worker_check_app(const struct worker_options *o);
/* Serves on the given listening fds until stopped. Returns the exit code:
 * 0 after a stop, 1 when the app could not be loaded, 3 when lifespan
 * startup failed. */
int worker_main(const struct worker_options *o, const int *fds, size_t n_fds, int ready_fd,
                uint32_t index);

#endif
