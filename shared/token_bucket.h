/* A token bucket: a burst at once, then a rate per second. The budgets
 * for what a peer may make us do (control frames, cancelled requests) are
 * buckets. */
#ifndef H3G_TOKEN_BUCKET_H
#define H3G_TOKEN_BUCKET_H

#include <stdbool.h>
#include <stdint.h>

struct token_bucket {
  double tokens;
  uint64_t last_ms; /* 0: never taken from */
};

void token_bucket_init(struct token_bucket *b, double burst);
/* Adds n tokens, up to burst. */
void token_bucket_give(struct token_bucket *b, double n, double burst);
/* Takes one token, after the rate has refilled the bucket (up to burst)
 * since the last take. False when the bucket ran dry. */
bool token_bucket_take(struct token_bucket *b, uint64_t now_ms, double rate, double burst);

#endif
