#include "token_bucket.h"

void token_bucket_init(struct token_bucket *b, double burst) {
  b->tokens = burst;
  b->last_ms = 0;
}

void token_bucket_give(struct token_bucket *b, double n, double burst) {
  b->tokens += n;
  if (b->tokens > burst) b->tokens = burst;
}

bool token_bucket_take(struct token_bucket *b, uint64_t now_ms, double rate, double burst) {
  if (b->last_ms != 0 && now_ms > b->last_ms)
    token_bucket_give(b, (double)(now_ms - b->last_ms) * rate / 1000.0, burst);
  b->last_ms = now_ms;
  b->tokens -= 1;
  return b->tokens >= 0;
}
