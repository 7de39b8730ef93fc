#include "http_date.h"

#include <stdio.h>

void h3g_http_date_of(time_t t, char out[64]) {
  /* Names of our own: strftime's %a and %b follow the locale, and the
   * worker's embedded Python may have set one. */
  static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  struct tm tm;
  gmtime_r(&t, &tm);
  snprintf(out, 64, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
           months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

const char *h3g_http_date(void) {
  static char text[64];
  static time_t made_at = -1;
  time_t now = time(NULL);
  if (now != made_at) {
    h3g_http_date_of(now, text);
    made_at = now;
  }
  return text;
}
