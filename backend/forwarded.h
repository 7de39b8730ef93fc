/* Reading what a trusted proxy says about the client: X-Forwarded-For,
 * X-Forwarded-Proto, Forwarded (RFC 7239) and Via (RFC 9110 7.6.3).
 * Plain C over byte strings, so it is unit-tested without Python. */
#ifndef H3G_BACKEND_FORWARDED_H
#define H3G_BACKEND_FORWARDED_H

#include <stddef.h>
#include <stdint.h>

#include "cidr.h"

struct forwarded_client {
  char host[64];
  int port; /* -1 when not known */
};

/* The client in an X-Forwarded-For list: walking from the right (nearest
 * hop) the first address not in trusted, else the leftmost. 0 or -1. */
int forwarded_xff_client(const char *v, size_t len, const struct cidr_list *trusted,
                         struct forwarded_client *out);
/* The client in a Forwarded header, as for X-Forwarded-For: walking from
 * the right, the first element whose for= is not in trusted, else the
 * leftmost; its for= (host and port) and proto=. Missing parameters are
 * left empty. 0, or -1 when there is no element. */
int forwarded_rfc7239_client(const char *v, size_t len, const struct cidr_list *trusted,
                             struct forwarded_client *client, char *proto, size_t proto_size);
/* The received-protocol of the first Via entry (the protocol the client
 * used), without an "HTTP/" prefix: "3", "2", "1.1". 0 or -1. */
int forwarded_via_protocol(const char *v, size_t len, char *out, size_t out_size);

#endif
