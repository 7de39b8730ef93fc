/* SipHash-2-4 (Aumasson and Bernstein): a keyed hash for tables whose keys
 * come from the network, so that collisions can't be aimed at. */
#ifndef H3G_SIPHASH_H
#define H3G_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

uint64_t siphash24(const uint64_t key[2], const void *data, size_t len);

#endif
