/* The Date field (RFC 9110 6.6.1): an origin server with a clock sends it
 * in its responses, and a proxy adds it to those that came without. */
#ifndef H3G_HTTP_DATE_H
#define H3G_HTTP_DATE_H

enum { HTTP_DATE_LEN = 29 }; /* "Sun, 06 Nov 1994 08:49:37 GMT" */

#include <time.h>

/* t as an IMF-fixdate in out (HTTP_DATE_LEN characters and a NUL, until
 * the year 10000). */
void h3g_http_date_of(time_t t, char out[64]);
/* Now, as an IMF-fixdate; formatted once a second (a process is one
 * thread). Valid until the next call. */
const char *h3g_http_date(void);

#endif
