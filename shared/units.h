/* Durations ("250ms", "5s", "2m", "1h"; a bare number is seconds) and sizes
 * ("512", "64k", "1m", "2g", also "KiB"/"MiB"/"GiB" and "kb"/"mb"/"gb" as powers of 1024). */
#ifndef H3G_UNITS_H
#define H3G_UNITS_H

#include <stdint.h>

int h3g_parse_duration_ms(const char *text, uint64_t *ms);
int h3g_parse_size(const char *text, uint64_t *bytes);

#endif
