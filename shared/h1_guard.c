#include "h1_guard.h"

enum guard_state {
  G_START,      /* before the request line: empty lines are skipped */
  G_START_CR,   /* CR among the empty lines before the request line */
  G_IN_LINE,    /* inside the start line or a field line */
  G_CR,         /* CR at the end of a line: LF must follow */
  G_LINE_START, /* first byte of a field line, or the empty line */
  G_END_CR,     /* CR of the empty line that ends the head */
  G_DONE,       /* head complete */
};

void h1_guard_reset(struct h1_guard *g) { g->state = G_START; }

int h1_guard_head_done(const struct h1_guard *g) { return g->state == G_DONE; }

ssize_t h1_guard_scan(struct h1_guard *g, const char *data, size_t len) {
  enum guard_state s = g->state;
  size_t i;
  for (i = 0; i < len && s != G_DONE; i++) {
    char c = data[i];
    switch (s) {
    case G_START:
      s = c == '\r' ? G_START_CR : c == '\n' ? G_START : G_IN_LINE;
      break;
    case G_START_CR:
      if (c != '\n') return H1_GUARD_BARE_CR;
      s = G_START;
      break;
    case G_IN_LINE:
      /* A bare LF ends a line, as RFC 9112 2.2 lets a recipient accept. */
      s = c == '\r' ? G_CR : c == '\n' ? G_LINE_START : G_IN_LINE;
      break;
    case G_CR:
      if (c != '\n') return H1_GUARD_BARE_CR;
      s = G_LINE_START;
      break;
    case G_LINE_START:
      if (c == ' ' || c == '\t') return H1_GUARD_LEADING_WS;
      s = c == '\r' ? G_END_CR : c == '\n' ? G_DONE : G_IN_LINE;
      break;
    case G_END_CR:
      if (c != '\n') return H1_GUARD_BARE_CR;
      s = G_DONE;
      break;
    case G_DONE:
      break;
    }
  }
  g->state = (unsigned char)s;
  return (ssize_t)i;
}

const char *h1_guard_strerror(ssize_t result) {
  switch (result) {
  case H1_GUARD_BARE_CR:
    return "bare CR in message head";
  case H1_GUARD_LEADING_WS:
    return "whitespace before a header name (or obsolete line folding)";
  default:
    return "ok";
  }
}
