/* --reload: folders watched with inotify. One watch per folder (inotify is
 * not recursive), the folder's path kept by watch descriptor so that a
 * folder made later can be watched by its full path. */
#include "code_watch.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

enum {
  /* A project tree is tens or hundreds of folders; this bounds what a
   * --app-dir pointed at / by mistake costs (the kernel's own default
   * limit is 8192 watches per user). */
  WATCH_MAX_DIRS = 4096,
};

/* What a change to a file in a watched folder looks like. */
#define WATCH_EVENTS (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ONLYDIR)

struct code_watch {
  int fd;
  char **path_of; /* by watch descriptor */
  int cap;
  int n_dirs;
  bool warned_full;
};

static bool skipped_folder(const char *name) {
  return name[0] == '.' || strcmp(name, "__pycache__") == 0;
}

static bool is_python_file(const char *name) {
  size_t n = strlen(name);
  return n > 3 && strcmp(name + n - 3, ".py") == 0 && name[0] != '.';
}

static int remember(struct code_watch *w, int wd, const char *dir) {
  if (wd >= w->cap) {
    int cap = w->cap ? w->cap : 64;
    while (cap <= wd) cap *= 2;
    char **grown = realloc(w->path_of, (size_t)cap * sizeof *grown);
    if (grown == NULL) return -1;
    memset(grown + w->cap, 0, (size_t)(cap - w->cap) * sizeof *grown);
    w->path_of = grown;
    w->cap = cap;
  }
  char *copy = strdup(dir);
  if (copy == NULL) return -1;
  if (w->path_of[wd] == NULL) w->n_dirs++; /* the same folder watched again keeps its wd */
  free(w->path_of[wd]);
  w->path_of[wd] = copy;
  return 0;
}

static bool is_folder(const struct dirent *e, const char *path) {
  if (e->d_type == DT_DIR) return true;
  if (e->d_type != DT_UNKNOWN) return false; /* symbolic links too: no loops */
  struct stat st;
  return lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static void watch_tree(struct code_watch *w, const char *dir) {
  if (w->n_dirs >= WATCH_MAX_DIRS) {
    if (!w->warned_full) log_warn("--reload: watching the first %d folders only", WATCH_MAX_DIRS);
    w->warned_full = true;
    return;
  }
  int wd = inotify_add_watch(w->fd, dir, WATCH_EVENTS);
  if (wd < 0) {
    log_warn("--reload: cannot watch %s: %s", dir, strerror(errno));
    return;
  }
  if (remember(w, wd, dir) != 0) return;
  DIR *d = opendir(dir);
  if (d == NULL) return;
  struct dirent *e;
  char path[PATH_MAX];
  while ((e = readdir(d)) != NULL) {
    if (skipped_folder(e->d_name)) continue;
    if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;
    if (is_folder(e, path)) watch_tree(w, path);
  }
  closedir(d);
}

struct code_watch *code_watch_new(const char *const *dirs, int n_dirs) {
  struct code_watch *w = calloc(1, sizeof *w);
  if (w == NULL) return NULL;
  w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (w->fd < 0) {
    log_error("--reload: inotify: %s", strerror(errno));
    free(w);
    return NULL;
  }
  for (int i = 0; i < n_dirs; i++) watch_tree(w, dirs[i]);
  log_info("--reload: watching %d folders for changed Python files", w->n_dirs);
  return w;
}

int code_watch_fd(const struct code_watch *w) { return w->fd; }

/* One event: true when it changes the app's code. */
static bool note_event(struct code_watch *w, const struct inotify_event *ev) {
  if (ev->mask & IN_Q_OVERFLOW) return true; /* events were lost: assume the worst */
  if (ev->mask & IN_IGNORED) { /* the folder went */
    if (ev->wd >= 0 && ev->wd < w->cap && w->path_of[ev->wd]) {
      free(w->path_of[ev->wd]);
      w->path_of[ev->wd] = NULL;
      w->n_dirs--;
    }
    return false;
  }
  if (ev->len == 0 || ev->wd < 0 || ev->wd >= w->cap || w->path_of[ev->wd] == NULL) return false;
  if (ev->mask & IN_ISDIR) {
    if (skipped_folder(ev->name)) return false;
    if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
      char path[PATH_MAX];
      if (snprintf(path, sizeof path, "%s/%s", w->path_of[ev->wd], ev->name) < (int)sizeof path)
        watch_tree(w, path);
    }
    return true; /* a package came or went */
  }
  /* Creating an empty file changes nothing yet: its write will say. */
  return is_python_file(ev->name) && !(ev->mask & IN_CREATE);
}

bool code_watch_changed(struct code_watch *w) {
  /* The alignment inotify(7) asks of the buffer. */
  char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
  bool changed = false;
  ssize_t n;
  while ((n = read(w->fd, buf, sizeof buf)) > 0) {
    for (char *p = buf; p < buf + n;) {
      const struct inotify_event *ev = (const struct inotify_event *)p;
      if (note_event(w, ev)) changed = true;
      p += sizeof *ev + ev->len;
    }
  }
  return changed;
}

void code_watch_free(struct code_watch *w) {
  if (w == NULL) return;
  close(w->fd);
  for (int i = 0; i < w->cap; i++) free(w->path_of[i]);
  free(w->path_of);
  free(w);
}
