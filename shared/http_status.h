/* Status codes as text: reason phrases and the three digits of :status. */
#ifndef H3G_HTTP_STATUS_H
#define H3G_HTTP_STATUS_H

/* The RFC 9110 reason phrase, or "" for codes without a common one. */
const char *http_reason(int status);
/* "200" etc. for 100..999 (callers check the range). */
void http_status_digits(int status, char out[4]);

#endif
