/* --reload: the app's source folders watched with inotify, so that the
 * supervisor restarts its workers on new code, as uvicorn --reload does
 * during development. */
#ifndef H3G_BACKEND_CODE_WATCH_H
#define H3G_BACKEND_CODE_WATCH_H

#include <stdbool.h>

struct code_watch;

/* Watches each folder and the folders below it (not hidden ones, nor
 * __pycache__). NULL when inotify is not available (said in the log). */
struct code_watch *code_watch_new(const char *const *dirs, int n_dirs);
/* For poll: readable when something changed. */
int code_watch_fd(const struct code_watch *w);
/* Reads what happened; true when a Python file was written, created,
 * moved or deleted. Folders made since are watched too. */
bool code_watch_changed(struct code_watch *w);
void code_watch_free(struct code_watch *w);

#endif
