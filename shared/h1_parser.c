#include "h1_parser.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_list.h"

static struct h1_parser *parser_of(llhttp_t *l) { return l->data; }

/* Why a callback refused the request, for the answer and the log: what it
 * said with h1_parser_refuse, else what its status means. */
static const char *refusal(struct h1_parser *p, int status, const char *otherwise) {
  const char *why = p->refusal;
  p->refusal = NULL;
  if (why) return why;
  switch (status) {
  case 413: return "request body too large";
  case 431: return "request header fields too large";
  case 503: return "out of memory";
  default: return otherwise;
  }
}

void h1_parser_refuse(struct h1_parser *p, const char *why) { p->refusal = why; }

static int fail(struct h1_parser *p, int status, const char *reason) {
  p->error_status = status;
  p->error_reason = reason;
  llhttp_set_error_reason(&p->llhttp, reason);
  return HPE_USER;
}

static int buf_append(struct h1_parser *p, const char *at, size_t len) {
  if (len == 0) return 0; /* llhttp may call with none, before buf exists */
  if (p->buf_len + len > p->buf_cap) {
    size_t cap = p->buf_cap ? p->buf_cap : 1024;
    while (cap < p->buf_len + len) cap *= 2;
    char *b = realloc(p->buf, cap);
    if (b == NULL) return -ENOMEM;
    p->buf = b;
    p->buf_cap = cap;
  }
  memcpy(p->buf + p->buf_len, at, len);
  p->buf_len += len;
  return 0;
}

static int count_head(struct h1_parser *p, size_t len) {
  p->head_bytes += len;
  if (p->head_bytes > p->limits.max_head_bytes) return -1;
  return 0;
}

static int on_message_begin(llhttp_t *l) {
  struct h1_parser *p = parser_of(l);
  p->buf_len = p->target_len = p->name_len = 0;
  p->in_value = false;
  p->head_bytes = 0;
  p->fields = 0;
  p->in_message = true;
  p->head_done = false;
  return 0;
}

static int on_url(llhttp_t *l, const char *at, size_t len) {
  struct h1_parser *p = parser_of(l);
  if (count_head(p, len) != 0) return fail(p, 414, "request target too long");
  if (buf_append(p, at, len) != 0) return fail(p, 503, "out of memory");
  p->target_len = p->buf_len;
  return 0;
}

/* RFC 9110 5.6.2 tchar. llhttp 8.1 lets a space through in a field name
 * ("Transfer-Encoding : chunked" is a classic smuggling shape). */
static bool is_tchar(unsigned char c) {
  static const char extra[] = "!#$%&'*+-.^_`|~";
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c != 0 && strchr(extra, c) != NULL);
}

/* RFC 9112 6.1: chunked is the only transfer coding a request may use
 * here (our side upstream is HTTP/2, which has none). llhttp 8.1 only
 * looks at the last coding, so "identity, chunked" passed as chunked; any
 * other coding now gets 501, as the RFC and nginx answer. (chunked twice,
 * in one field or two, llhttp refuses itself.) */
static int check_transfer_codings(struct h1_parser *p, const char *v, size_t len) {
  size_t pos = 0, n;
  const char *coding;
  while (h3g_list_next(v, len, &pos, &coding, &n))
    if (n != 7 || strncasecmp(coding, "chunked", 7) != 0)
      return fail(p, 501, "transfer coding not implemented");
  return 0;
}

/* Emits the field assembled in buf after the target. */
static int emit_field(struct h1_parser *p) {
  if (p->name_len == 0) return fail(p, 400, "empty header field name"); /* buf may not exist yet */
  char *name = p->buf + p->target_len;
  for (size_t i = 0; i < p->name_len; i++) {
    if (!is_tchar((unsigned char)name[i])) return fail(p, 400, "invalid header field name");
    if (name[i] >= 'A' && name[i] <= 'Z') name[i] = (char)(name[i] + 32);
  }
  const char *value = name + p->name_len;
  size_t vlen = p->buf_len - p->target_len - p->name_len;
  /* llhttp leaves trailing whitespace of the value to us (RFC 9110 5.5). */
  while (vlen > 0 && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t')) vlen--;
  if (!p->head_done && p->name_len == 17 && memcmp(name, "transfer-encoding", 17) == 0) {
    int rc = check_transfer_codings(p, value, vlen);
    if (rc) return rc;
  }
  int status = !p->head_done      ? p->ops->on_header(p->ctx, name, p->name_len, value, vlen)
               : p->ops->on_trailer ? p->ops->on_trailer(p->ctx, name, p->name_len, value, vlen)
                                    : 0;
  p->buf_len = p->target_len;
  p->name_len = 0;
  p->in_value = false;
  return status ? fail(p, status, refusal(p, status, "request header refused")) : 0;
}

static int on_header_field(llhttp_t *l, const char *at, size_t len) {
  struct h1_parser *p = parser_of(l);
  if (count_head(p, len) != 0) return fail(p, 431, "request header fields too large");
  if (buf_append(p, at, len) != 0) return fail(p, 503, "out of memory");
  p->name_len += len;
  return 0;
}

static int on_header_field_complete(llhttp_t *l) {
  struct h1_parser *p = parser_of(l);
  if (++p->fields > p->limits.max_fields) return fail(p, 431, "too many request header fields");
  p->in_value = true;
  return 0;
}

static int on_header_value(llhttp_t *l, const char *at, size_t len) {
  struct h1_parser *p = parser_of(l);
  if (count_head(p, len) != 0) return fail(p, 431, "request header fields too large");
  if (buf_append(p, at, len) != 0) return fail(p, 503, "out of memory");
  return 0;
}

static int on_header_value_complete(llhttp_t *l) { return emit_field(parser_of(l)); }

static int on_headers_complete(llhttp_t *l) {
  struct h1_parser *p = parser_of(l);
  if (p->in_value) {
    int rc = emit_field(p); /* a field with an empty value */
    if (rc) return rc;
  }
  const char *method = llhttp_method_name((llhttp_method_t)llhttp_get_method(l));
  struct h1_request_head head = {
      .method = method,
      .method_len = strlen(method),
      .target = p->buf,
      .target_len = p->target_len,
      .version_minor = llhttp_get_http_minor(l),
      .keep_alive = llhttp_should_keep_alive(l),
      .upgrade = llhttp_get_upgrade(l),
      .chunked = (l->flags & F_CHUNKED) != 0,
      .has_content_length = (l->flags & F_CONTENT_LENGTH) != 0,
      .content_length = l->content_length,
  };
  if (llhttp_get_http_major(l) != 1) return fail(p, 505, "HTTP version not supported");
  if (p->target_len == 0) return fail(p, 400, "empty request target");
  /* RFC 9112 6.1: HTTP/1.0 has no chunked coding, so its framing is faulty
   * (a MUST, whatever Content-Length says); an old proxy may have passed
   * the field on without knowing it. */
  if (head.version_minor == 0 && (l->flags & F_TRANSFER_ENCODING))
    return fail(p, 400, "Transfer-Encoding in an HTTP/1.0 request");
  p->head_done = true;
  int status = p->ops->on_head(p->ctx, &head);
  if (status) return fail(p, status, refusal(p, status, "request refused"));
  return 0;
}

static int on_body(llhttp_t *l, const char *at, size_t len) {
  struct h1_parser *p = parser_of(l);
  int status = p->ops->on_body(p->ctx, at, len);
  return status ? fail(p, status, refusal(p, status, "request body refused")) : 0;
}

static int on_message_complete(llhttp_t *l) {
  struct h1_parser *p = parser_of(l);
  int status = p->ops->on_end(p->ctx);
  if (status) return fail(p, status, refusal(p, status, "request refused"));
  p->message_done = true;
  p->in_message = false;
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void h1_parser_init(struct h1_parser *p, const struct h1_parser_ops *ops, void *ctx,
                    const struct h1_limits *limits) {
  memset(p, 0, sizeof *p);
  llhttp_init(&p->llhttp, HTTP_REQUEST, &settings);
  p->llhttp.data = p;
  h1_guard_reset(&p->guard);
  p->ops = ops;
  p->ctx = ctx;
  p->limits = *limits;
}

void h1_parser_free(struct h1_parser *p) {
  free(p->buf);
  p->buf = NULL;
}

static int status_for_llhttp_error(llhttp_errno_t err) {
  switch (err) {
  case HPE_INVALID_METHOD:
    return 501;
  case HPE_INVALID_VERSION:
    return 505;
  default:
    return 400;
  }
}

ssize_t h1_parser_feed(struct h1_parser *p, const char *data, size_t len) {
  if (p->message_done) return 0;
  if (!h1_guard_head_done(&p->guard)) {
    ssize_t g = h1_guard_scan(&p->guard, data, len);
    if (g < 0) {
      p->error_status = 400;
      p->error_reason = h1_guard_strerror(g);
      return -1;
    }
  }
  llhttp_errno_t err = llhttp_execute(&p->llhttp, data, len);
  if (err == HPE_OK) return (ssize_t)len;
  if (err == HPE_PAUSED && p->message_done) {
    const char *pos = llhttp_get_error_pos(&p->llhttp);
    return pos ? (ssize_t)(pos - data) : (ssize_t)len;
  }
  if (err == HPE_PAUSED_UPGRADE) {
    p->message_done = true;
    const char *pos = llhttp_get_error_pos(&p->llhttp);
    return pos ? (ssize_t)(pos - data) : (ssize_t)len;
  }
  if (p->error_status == 0) { /* not one of our callbacks: llhttp's own verdict */
    p->error_status = status_for_llhttp_error(err);
    p->error_reason = llhttp_get_error_reason(&p->llhttp);
    if (p->error_reason == NULL) p->error_reason = llhttp_errno_name(err);
  }
  return -1;
}

bool h1_parser_message_done(const struct h1_parser *p) { return p->message_done; }

void h1_parser_next(struct h1_parser *p) {
  if (!p->message_done) return;
  p->message_done = false;
  h1_guard_reset(&p->guard);
  if (llhttp_get_errno(&p->llhttp) == HPE_PAUSED) llhttp_resume(&p->llhttp);
  /* An Upgrade the caller did not take up, such as curl's "Upgrade: h2c":
   * the connection stays HTTP/1.1 (RFC 9110 7.8). llhttp stops at the
   * upgrade before reading anything more, so it is brought there now (no
   * input needed) and let past it; otherwise every later request on the
   * connection would wait forever. Not after CONNECT: what follows is the
   * client's tunnel, and both callers refuse CONNECT and close. */
  if (llhttp_get_upgrade(&p->llhttp) && llhttp_get_method(&p->llhttp) != HTTP_CONNECT &&
      llhttp_execute(&p->llhttp, "", 0) == HPE_PAUSED_UPGRADE)
    llhttp_resume_after_upgrade(&p->llhttp);
}

bool h1_parser_in_message(const struct h1_parser *p) { return p->in_message; }

bool h1_parser_request_line(const struct h1_parser *p, const char **method, const char **target,
                            size_t *target_len) {
  /* llhttp has the method once the target starts; before, its method field
   * reads as DELETE (0), so nothing is said. */
  if (!p->in_message || p->target_len == 0) return false;
  *method = llhttp_method_name((llhttp_method_t)p->llhttp.method);
  *target = p->buf;
  *target_len = p->target_len;
  return true;
}

int h1_parser_finish(struct h1_parser *p) {
  return llhttp_finish(&p->llhttp) == HPE_OK ? 0 : -1;
}

bool h1_absolute_form(const char *target, size_t len, const char **authority, size_t *alen,
                      const char **rest, size_t *rlen) {
  size_t scheme = len >= 7 && strncasecmp(target, "http://", 7) == 0    ? 7
                  : len >= 8 && strncasecmp(target, "https://", 8) == 0 ? 8
                                                                        : 0;
  if (scheme == 0) return false;
  const char *host = target + scheme, *end = target + len, *host_end = host;
  while (host_end < end && *host_end != '/' && *host_end != '?') host_end++;
  *authority = host;
  *alen = (size_t)(host_end - host);
  *rest = host_end;
  *rlen = (size_t)(end - host_end);
  return true;
}
