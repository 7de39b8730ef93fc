/* Recycled memory for the libraries' hot allocations (see mem_cache.c). */
#ifndef H3G_MEM_CACHE_H
#define H3G_MEM_CACHE_H

#include <nghttp2/nghttp2.h>

/* Installs the cache as libevent's allocator: call before anything of
 * libevent allocates. */
void mem_cache_install(void);

/* The same allocator for nghttp2 sessions (nghttp2_session_*_new3). */
nghttp2_mem *mem_cache_nghttp2(void);

#endif
