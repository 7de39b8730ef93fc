#include "addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

static int parse_port(const char *text, uint16_t *port) {
  char *end;
  if (*text == '\0') return -EINVAL;
  long v = strtol(text, &end, 10);
  if (*end != '\0' || v < 0 || v > 65535) return -EINVAL;
  *port = (uint16_t)v;
  return 0;
}

int h3g_hostport_parse(const char *text, struct h3g_hostport *out, const char **why) {
  memset(out, 0, sizeof *out);
  if (strncmp(text, "unix:", 5) == 0) {
    const char *path = text + 5;
    if (*path == '\0' || strlen(path) >= sizeof out->path) {
      *why = "unix socket path is empty or longer than 107 bytes";
      return -EINVAL;
    }
    out->is_unix = true;
    strcpy(out->path, path);
    return 0;
  }
  const char *colon;
  const char *host = text;
  size_t host_len;
  if (text[0] == '[') {
    const char *close = strchr(text, ']');
    if (close == NULL || close[1] != ':') {
      *why = "expected [IPv6]:PORT";
      return -EINVAL;
    }
    host = text + 1;
    host_len = (size_t)(close - host);
    colon = close + 1;
  } else {
    colon = strrchr(text, ':');
    if (colon == NULL) {
      *why = "expected HOST:PORT";
      return -EINVAL;
    }
    host_len = (size_t)(colon - text);
    if (memchr(text, ':', host_len) != NULL) {
      *why = "IPv6 addresses need brackets: [::1]:PORT";
      return -EINVAL;
    }
  }
  if (host_len >= sizeof out->host) {
    *why = "host name too long";
    return -EINVAL;
  }
  if (parse_port(colon + 1, &out->port) != 0) {
    *why = "port must be a number from 0 to 65535";
    return -EINVAL;
  }
  memcpy(out->host, host, host_len);
  out->host[host_len] = '\0';
  return 0;
}

int h3g_hostport_to_sockaddr(const struct h3g_hostport *hp, struct sockaddr_storage *ss,
                             socklen_t *len) {
  memset(ss, 0, sizeof *ss);
  if (hp->is_unix) {
    struct sockaddr_un *un = (struct sockaddr_un *)ss;
    un->sun_family = AF_UNIX;
    strcpy(un->sun_path, hp->path);
    *len = (socklen_t)sizeof *un;
    return 0;
  }
  struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  if (hp->host[0] == '\0' || strcmp(hp->host, "*") == 0) {
    in4->sin_family = AF_INET;
    in4->sin_addr.s_addr = htonl(INADDR_ANY);
    in4->sin_port = htons(hp->port);
    *len = sizeof *in4;
    return 0;
  }
  if (inet_pton(AF_INET, hp->host, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons(hp->port);
    *len = sizeof *in4;
    return 0;
  }
  if (inet_pton(AF_INET6, hp->host, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(hp->port);
    *len = sizeof *in6;
    return 0;
  }
  return -EAGAIN;
}

void h3g_sockaddr_host(const struct sockaddr *sa, char *buf, size_t size) {
  if (size == 0) return;
  buf[0] = '\0';
  if (sa->sa_family == AF_INET) {
    inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)size);
  } else if (sa->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, (socklen_t)size);
  } else if (sa->sa_family == AF_UNIX) {
    snprintf(buf, size, "unix");
  }
}

uint16_t h3g_sockaddr_port(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET) return ntohs(((const struct sockaddr_in *)sa)->sin_port);
  if (sa->sa_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
  return 0;
}

void h3g_sockaddr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t size) {
  char host[INET6_ADDRSTRLEN];
  if (sa->sa_family == AF_UNIX) {
    const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
    size_t path_len = len > offsetof(struct sockaddr_un, sun_path)
                          ? strnlen(un->sun_path, len - offsetof(struct sockaddr_un, sun_path))
                          : 0;
    snprintf(buf, size, "unix:%.*s", (int)path_len, un->sun_path);
    return;
  }
  h3g_sockaddr_host(sa, host, sizeof host);
  if (sa->sa_family == AF_INET6)
    snprintf(buf, size, "[%s]:%u", host, h3g_sockaddr_port(sa));
  else
    snprintf(buf, size, "%s:%u", host, h3g_sockaddr_port(sa));
}

bool h3g_sockaddr_equal(const struct sockaddr *a, const struct sockaddr *b) {
  if (a->sa_family != b->sa_family) return false;
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a->sa_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
  }
  if (a->sa_family == AF_UNIX) {
    const struct sockaddr_un *x = (const void *)a, *y = (const void *)b;
    return strcmp(x->sun_path, y->sun_path) == 0;
  }
  return false;
}
