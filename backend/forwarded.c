#include "forwarded.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static void trim(const char **p, size_t *len) {
  while (*len > 0 && (**p == ' ' || **p == '\t')) (*p)++, (*len)--;
  while (*len > 0 && ((*p)[*len - 1] == ' ' || (*p)[*len - 1] == '\t')) (*len)--;
}

/* Walks comma-separated elements from the right. *pos is where the unread
 * part ends; it becomes SIZE_MAX after the leftmost element. */
static bool prev_element(const char *v, size_t *pos, const char **elem, size_t *elen) {
  if (*pos == SIZE_MAX) return false;
  size_t end = *pos, i = end;
  while (i > 0 && v[i - 1] != ',') i--;
  *elem = v + i;
  *elen = end - i;
  trim(elem, elen);
  *pos = i == 0 ? SIZE_MAX : i - 1;
  return true;
}

static int copy_host(struct forwarded_client *out, const char *h, size_t len) {
  if (len == 0 || len >= sizeof out->host) return -1;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)h[i];
    if (!(isxdigit(c) || c == '.' || c == ':' || isalnum(c) || c == '_' || c == '-')) return -1;
  }
  memcpy(out->host, h, len);
  out->host[len] = '\0';
  return 0;
}

int forwarded_xff_client(const char *v, size_t len, const struct cidr_list *trusted,
                         struct forwarded_client *out) {
  const char *elem, *leftmost = NULL;
  size_t elen, leftmost_len = 0, pos = len;
  out->port = -1;
  while (prev_element(v, &pos, &elem, &elen)) {
    if (elen == 0) continue;
    if (!cidr_list_match_text(trusted, elem, elen)) return copy_host(out, elem, elen);
    leftmost = elem;
    leftmost_len = elen;
  }
  if (leftmost == NULL) return -1;
  return copy_host(out, leftmost, leftmost_len);
}

/* A node's port, the digits after its ':'. An obfuscated port ("_a1")
 * is no port at all; a number over 65535 makes the node invalid. */
static int parse_node_port(const char *p, size_t len, struct forwarded_client *out) {
  int port = 0;
  if (len == 0) return 0;
  for (size_t i = 0; i < len; i++) {
    if (!isdigit((unsigned char)p[i])) return 0;
    port = port * 10 + (p[i] - '0');
    if (port > 65535) return -1;
  }
  out->port = port;
  return 0;
}

/* Splits a node ("1.2.3.4", "1.2.3.4:80", "\"[::1]:80\"", "_hidden", "unknown"). */
static int parse_node(const char *p, size_t len, struct forwarded_client *out) {
  if (len >= 2 && p[0] == '"' && p[len - 1] == '"') p++, len -= 2;
  out->port = -1;
  const char *end = p + len, *host = p, *host_end, *port;
  if (len > 0 && p[0] == '[') {
    host = p + 1;
    host_end = memchr(p, ']', len);
    if (host_end == NULL) return -1;
    port = host_end + 1 < end && host_end[1] == ':' ? host_end + 2 : end;
  } else {
    host_end = memchr(p, ':', len);
    if (host_end == NULL) host_end = end;
    port = host_end < end ? host_end + 1 : end;
  }
  if (copy_host(out, host, (size_t)(host_end - host)) != 0) return -1;
  return parse_node_port(port, (size_t)(end - port), out);
}

/* One Forwarded element: its for= (host and port) and proto=. */
static void parse_forwarded_element(const char *elem, size_t elen, struct forwarded_client *client,
                                    char *proto, size_t proto_size) {
  client->host[0] = '\0';
  client->port = -1;
  if (proto_size) proto[0] = '\0';
  /* pairs separated by ';' */
  const char *p = elem, *stop = elem + elen;
  while (p < stop) {
    const char *semi = memchr(p, ';', (size_t)(stop - p));
    const char *pair_end = semi ? semi : stop;
    const char *pair = p;
    size_t plen = (size_t)(pair_end - p);
    trim(&pair, &plen);
    const char *eq = memchr(pair, '=', plen);
    if (eq) {
      size_t klen = (size_t)(eq - pair), vlen = plen - klen - 1;
      const char *val = eq + 1;
      if (klen == 3 && strncasecmp(pair, "for", 3) == 0) {
        if (parse_node(val, vlen, client) != 0) client->host[0] = '\0';
      } else if (klen == 5 && strncasecmp(pair, "proto", 5) == 0) {
        if (vlen >= 2 && val[0] == '"') val++, vlen -= 2;
        if (vlen < proto_size) {
          for (size_t i = 0; i < vlen; i++) proto[i] = (char)tolower((unsigned char)val[i]);
          proto[vlen] = '\0';
        }
      }
    }
    p = pair_end + 1;
  }
}

int forwarded_rfc7239_client(const char *v, size_t len, const struct cidr_list *trusted,
                             struct forwarded_client *client, char *proto, size_t proto_size) {
  const char *elem;
  size_t elen, pos = len;
  bool any = false;
  while (prev_element(v, &pos, &elem, &elen)) {
    if (elen == 0) continue;
    any = true;
    parse_forwarded_element(elem, elen, client, proto, proto_size);
    /* A hop we trust vouches for the one before it; anything else (an
     * address we don't trust, an obfuscated node, no for=) is the client. */
    if (client->host[0] == '\0' || !cidr_list_match_text(trusted, client->host, strlen(client->host)))
      return 0;
  }
  return any ? 0 : -1; /* all trusted: the leftmost, parsed last */
}

/* The first element of a list whose elements may carry (comments, with
 * commas). */
static bool first_element(const char *v, size_t len, const char **elem, size_t *elen) {
  size_t i = 0, depth = 0;
  while (i < len && (v[i] == ' ' || v[i] == '\t')) i++;
  size_t start = i;
  for (; i < len; i++) {
    if (v[i] == '(') depth++;
    else if (v[i] == ')' && depth > 0) depth--;
    else if (v[i] == ',' && depth == 0) break;
  }
  size_t end = i;
  while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t')) end--;
  *elem = v + start;
  *elen = end - start;
  return end > start;
}

/* The first entry's received-protocol: the protocol the client itself used
 * (RFC 9110 7.6.3; each proxy appends its own entry, and ours drops a Via
 * from peers it does not trust, so the first entry is one we vouch for). */
int forwarded_via_protocol(const char *v, size_t len, char *out, size_t out_size) {
  const char *elem;
  size_t elen;
  if (!first_element(v, len, &elem, &elen)) return -1;
  size_t tok = 0;
  while (tok < elen && elem[tok] != ' ' && elem[tok] != '\t') tok++;
  const char *proto = elem;
  if (tok > 5 && strncasecmp(proto, "HTTP/", 5) == 0) proto += 5, tok -= 5;
  if (tok == 0 || tok >= out_size) return -1;
  for (size_t i = 0; i < tok; i++) {
    if (!(isdigit((unsigned char)proto[i]) || proto[i] == '.')) return -1;
  }
  memcpy(out, proto, tok);
  out[tok] = '\0';
  return 0;
}
