/* h3gate-worker: serves one ASGI app over HTTP/2 and HTTP/1.1 in a pool of
 * worker processes. See options.c for the command line. */
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "options.h"
#include "sock.h"
#include "supervisor.h"
#include "worker.h"

/* Imports the app once in a throwaway child, so a broken app fails with one
 * clear line before any port is bound, and the supervisor itself never
 * loads Python. With --reload it only says so: the supervisor waits for the
 * save that fixes it, as uvicorn --reload does. */
static int check_app(const struct worker_options *opt) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) return 1;
  if (pid == 0) _exit(worker_check_app(opt));
  int status;
  while (waitpid(pid, &status, 0) < 0) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int main(int argc, char **argv) {
  h3g_log_init("h3gate-worker");
  struct worker_options opt;
  int rc = options_parse(argc, argv, &opt);
  if (rc == 1) return 0;
  if (rc != 0) return rc;
  if (check_app(&opt) != 0 && !opt.reload) return 1;
  h3g_raise_nofile_limit(); /* worker processes inherit it */
  return supervisor_run(&opt);
}
