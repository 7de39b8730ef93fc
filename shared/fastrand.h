/* A fast non-cryptographic random generator (xoshiro256**), seeded once
 * from getrandom: for load-balancing choices and request IDs, where a
 * syscall per request would cost more than the request. */
#ifndef H3G_FASTRAND_H
#define H3G_FASTRAND_H

#include <stdint.h>

uint64_t fastrand64(void);
/* A forked child calls this, or it would draw the same numbers as its
 * parent and its siblings. */
void fastrand_reseed(void);

#endif
