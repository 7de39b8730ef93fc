/* HTTP/1.1 request parsing for the gateway's front and the worker: llhttp
 * in strict mode, the h1_guard checks llhttp 8.1.0 lacks, limits on the head
 * (bytes and field count), and a pause after each message so pipelined
 * requests are handled one at a time, in order.
 *
 * The caller feeds bytes; the parser calls back with one complete header
 * field at a time (name lower-cased), then the head, body chunks, and the
 * end of the message. */
#ifndef H3G_H1_PARSER_H
#define H3G_H1_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <llhttp.h>

#include "h1_guard.h"

struct h1_request_head {
  const char *method;
  size_t method_len;
  const char *target; /* as sent: origin-form, absolute-form, "*" or authority */
  size_t target_len;
  uint8_t version_minor; /* HTTP/1.x */
  bool keep_alive;       /* the client allows another request after this one */
  bool upgrade;          /* Upgrade (or CONNECT) requested */
  bool chunked;          /* Transfer-Encoding: chunked */
  bool has_content_length;
  uint64_t content_length;
};

struct h1_parser_ops {
  /* Each callback returns 0 to go on or an HTTP status (4xx/5xx) to fail the
   * request with. */
  int (*on_header)(void *ctx, const char *name, size_t nlen, const char *value, size_t vlen);
  int (*on_head)(void *ctx, const struct h1_request_head *head);
  int (*on_body)(void *ctx, const char *data, size_t len);
  int (*on_end)(void *ctx);
  /* A field of the trailer section after a chunked body; NULL drops them.
   * They never reach on_header: by then the head has been acted on (a
   * proxy rewrote its forwarding fields, an app has its scope), and a
   * "header" arriving now would slip past all of that. */
  int (*on_trailer)(void *ctx, const char *name, size_t nlen, const char *value, size_t vlen);
};

struct h1_limits {
  size_t max_head_bytes;  /* request line plus fields */
  uint32_t max_fields;
};

struct h1_parser {
  llhttp_t llhttp;
  struct h1_guard guard;
  const struct h1_parser_ops *ops;
  void *ctx;
  struct h1_limits limits;
  char *buf;        /* the request target, then field name + value being assembled */
  size_t buf_len, buf_cap;
  size_t target_len; /* bytes of buf holding the target */
  size_t name_len;   /* bytes of buf (after the target) holding the current name */
  bool in_value;
  bool message_done; /* paused after a message: call h1_parser_next() */
  bool in_message;   /* between the first byte of a request and its end */
  bool head_done;    /* fields from now on are trailers */
  size_t head_bytes;
  uint32_t fields;
  const char *refusal;     /* h1_parser_refuse's reason, until used */
  int error_status;        /* when feed fails: the status to answer with */
  const char *error_reason;
};

void h1_parser_init(struct h1_parser *p, const struct h1_parser_ops *ops, void *ctx,
                    const struct h1_limits *limits);
void h1_parser_free(struct h1_parser *p);
/* Parses up to len bytes. Returns how many were used: fewer than len when a
 * message ended (h1_parser_message_done() is then true and the rest belongs
 * to the next request). -1 on a malformed request: error_status and
 * error_reason say why; the connection must be closed after the answer. */
ssize_t h1_parser_feed(struct h1_parser *p, const char *data, size_t len);
bool h1_parser_message_done(const struct h1_parser *p);
/* Ready for the next pipelined request; also after an Upgrade request
 * that the caller answered without switching protocols. Not after CONNECT:
 * what follows it is the client's tunnel, so the connection must close. */
void h1_parser_next(struct h1_parser *p);
/* Called by a callback about to return a status: why (a static string),
 * for the answer's body and the log instead of a generic reason. */
void h1_parser_refuse(struct h1_parser *p, const char *why);
/* True between the start of a request and its end. */
bool h1_parser_in_message(const struct h1_parser *p);
/* The method and the target (as far as it came) of the request being
 * parsed, for logging one that is refused: false before the target. */
bool h1_parser_request_line(const struct h1_parser *p, const char **method, const char **target,
                            size_t *target_len);
/* The client closed its side: ends a body that runs until EOF. */
int h1_parser_finish(struct h1_parser *p);

/* An absolute-form target ("http://host/p?q", RFC 9112 3.2.2), whose
 * authority stands for Host: true, with the authority and the rest, which
 * is empty or starts with '/' or '?' (then the path is "/" before it).
 * False for any other form. */
bool h1_absolute_form(const char *target, size_t len, const char **authority, size_t *alen,
                      const char **rest, size_t *rlen);

#endif
