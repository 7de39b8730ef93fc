/* The process pool: binding, forking, restarting, signals. */
#ifndef H3G_BACKEND_SUPERVISOR_H
#define H3G_BACKEND_SUPERVISOR_H

#include "options.h"

/* Runs until stopped; returns the process exit code. */
int supervisor_run(const struct worker_options *opt);

#endif
