/* Recycled memory for libevent's buffers (see buf_cache.c). */
#ifndef H3G_BUF_CACHE_H
#define H3G_BUF_CACHE_H

/* Installs the cache as libevent's allocator: call before anything of
 * libevent allocates. A no-op under AddressSanitizer, which must see every
 * free to catch a use after it. */
void buf_cache_install(void);

#endif
