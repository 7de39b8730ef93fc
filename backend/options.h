/* h3gate-worker's command line (the names uvicorn and gunicorn users know). */
#ifndef H3G_BACKEND_OPTIONS_H
#define H3G_BACKEND_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "server.h"

enum { MAX_BINDS = 8, MAX_RELOAD_DIRS = 16 };

struct worker_options {
  const char *app;
  const char *binds[MAX_BINDS];
  int n_binds;
  const char *uds;
  int workers;
  const char *app_dir;
  bool reload;          /* restart the workers when a Python file changes */
  const char *reload_dirs[MAX_RELOAD_DIRS]; /* what --reload watches (default: app_dir) */
  int n_reload_dirs;
  bool factory;
  const char *root_path;
  const char *lifespan; /* auto, on, off */
  const char *loop;     /* auto, asyncio, uvloop */
  int backlog;
  double graceful_timeout_s;
  struct worker_config config; /* what each worker process serves with */
};

/* Parses argv. Returns 0 to run, 1 when --help/--version was answered,
 * 2 on a usage error (already reported). */
int options_parse(int argc, char **argv, struct worker_options *out);

#endif
