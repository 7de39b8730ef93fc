#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <Python.h>

#include "asgi.h"
#include "log.h"
#include "runtime_py.h"
#include "server.h"

enum {
  EXIT_APP_LOAD = 1,
  EXIT_STARTUP = 3,
};

static int init_python(const struct worker_options *o) {
  if (PyImport_AppendInittab("_h3gate", server_module_init) != 0) return -1;
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.parse_argv = 0;
  /* Debian's python3 finds its stdlib from the compiled-in prefix; a user's
   * PYTHONPATH/PYTHONHOME still applies, as with any python3. */
  wchar_t *argv0 = Py_DecodeLocale("h3gate-worker", NULL);
  PyStatus st = PyConfig_SetArgv(&config, 1, &argv0);
  PyMem_RawFree(argv0);
  if (!PyStatus_Exception(st)) st = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(st)) {
    log_error("could not start Python: %s", st.err_msg ? st.err_msg : "unknown error");
    return -1;
  }
  /* The app directory goes first on sys.path, as with uvicorn --app-dir. */
  char *dir = realpath(o->app_dir, NULL);
  if (dir == NULL) {
    log_error("--app-dir %s: no such directory", o->app_dir);
    return -1;
  }
  PyObject *sys_path = PySys_GetObject("path");
  PyObject *d = PyUnicode_DecodeFSDefault(dir);
  free(dir);
  if (sys_path == NULL || d == NULL || PyList_Insert(sys_path, 0, d) != 0) {
    Py_XDECREF(d);
    PyErr_Print();
    return -1;
  }
  Py_DECREF(d);
  return 0;
}

static PyObject *load_runtime(void) {
  PyObject *code = Py_CompileString(runtime_py_source, "h3gate/runtime.py", Py_file_input);
  if (code == NULL) return NULL;
  PyObject *mod = PyImport_ExecCodeModule("h3gate_runtime", code);
  Py_DECREF(code);
  return mod;
}

/* The app, or NULL after logging one clear line. */
static PyObject *load_app(PyObject *runtime, const struct worker_options *o) {
  PyObject *app = PyObject_CallMethod(runtime, "load_app", "sO", o->app,
                                      o->factory ? Py_True : Py_False);
  if (app != NULL) return app;
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  PyObject *text = value ? PyObject_Str(value) : NULL;
  const char *msg = text ? PyUnicode_AsUTF8(text) : NULL;
  log_error("cannot load app \"%s\": %s", o->app, msg ? msg : "unknown error");
  PyErr_Clear();
  Py_XDECREF(text);
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
  return NULL;
}

int worker_check_app(const struct worker_options *o) {
  if (init_python(o) != 0) return EXIT_APP_LOAD;
  PyObject *runtime = load_runtime();
  if (runtime == NULL) {
    PyErr_Print();
    return EXIT_APP_LOAD;
  }
  PyObject *app = load_app(runtime, o);
  int rc = app ? 0 : EXIT_APP_LOAD;
  Py_XDECREF(app);
  Py_DECREF(runtime);
  fflush(stdout);
  fflush(stderr);
  /* Skip finalization: the app may have started threads we don't own. */
  _exit(rc);
}

int worker_main(const struct worker_options *o, const int *fds, size_t n_fds, int ready_fd,
                uint32_t index) {
  struct worker_config *cfg = server_config_mut();
  *cfg = o->config;
  cfg->worker_index = index;
  server_set_ready_fd(ready_fd);
  if (init_python(o) != 0) return EXIT_APP_LOAD;
  if (asgi_init_constants() != 0) {
    PyErr_Print();
    return EXIT_APP_LOAD;
  }
  PyObject *runtime = load_runtime();
  if (runtime == NULL) {
    PyErr_Print();
    return EXIT_APP_LOAD;
  }
  PyObject *app = load_app(runtime, o);
  if (app == NULL) return EXIT_APP_LOAD;
  for (size_t i = 0; i < n_fds; i++) {
    if (server_add_listener(fds[i]) != 0) {
      log_error("cannot use listening socket %d", fds[i]);
      return EXIT_APP_LOAD;
    }
  }
  asgi_env.root_path = PyUnicode_FromString(o->root_path);
  asgi_env.log_exception = PyObject_GetAttrString(runtime, "log_exception");
  asgi_env.access_log = o->config.access_log;
  asgi_env.body_buffer_limit = 1 << 20;
  asgi_env.send_high_water = 512 * 1024;
  asgi_env.ws_max_size = o->config.ws_max_size;
  asgi_env.ws_ping_interval_ms = o->config.ws_ping_interval_ms;
  asgi_env.ws_ping_timeout_ms = o->config.ws_ping_timeout_ms;
  PyObject *module = PyImport_ImportModule("_h3gate");
  PyObject *options = Py_BuildValue("{s:s,s:s}", "loop", o->loop, "lifespan", o->lifespan);
  if (!asgi_env.root_path || !asgi_env.log_exception || !module || !options) {
    PyErr_Print();
    return EXIT_APP_LOAD;
  }
  PyObject *r = PyObject_CallMethod(runtime, "serve", "OOO", module, app, options);
  int rc;
  if (r == NULL) {
    PyErr_Print();
    rc = EXIT_STARTUP;
  } else {
    rc = (int)PyLong_AsLong(r);
    Py_DECREF(r);
  }
  Py_DECREF(app);
  Py_DECREF(runtime);
  Py_DECREF(module);
  Py_DECREF(options);
  /* Like python3 itself: atexit handlers run and non-daemon threads are joined. */
  if (Py_FinalizeEx() < 0 && rc == 0) rc = 120;
  return rc;
}
