/* HTTP/2 output for both the client-facing and the backend-facing sessions. */
#ifndef H3G_GATEWAY_H2_OUT_H
#define H3G_GATEWAY_H2_OUT_H

#include <stddef.h>
#include <event2/buffer.h>
#include <nghttp2/nghttp2.h>

/* Moves what nghttp2 has to send into out until out holds high_water
 * bytes. Small frames are packed into shared 16 KiB chunks (one copy, and
 * one TLS record or iovec for many frames); large ones are added as they
 * are. Returns 0, or -1 when the session failed. */
int h2_send_into(nghttp2_session *session, struct evbuffer *out, size_t high_water);

#endif
