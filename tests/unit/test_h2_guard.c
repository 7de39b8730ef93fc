/* The control-frame budget: frames that do request work cost nothing (and
 * do not read the clock), the rest spend a burst that refills with time,
 * ACKs and sent DATA are not held against the peer. */
#include "check.h"
#include "h2_guard.h"

/* A clock the test moves by hand, counting its reads. */
static uint64_t fake_now_ms = 1;
static unsigned clock_reads;

static uint64_t fake_clock(void) {
  clock_reads++;
  return fake_now_ms;
}

static nghttp2_frame frame_of(uint8_t type, uint8_t flags, size_t length) {
  nghttp2_frame f;
  memset(&f, 0, sizeof f);
  f.hd.type = type;
  f.hd.flags = flags;
  f.hd.length = length;
  return f;
}

/* How many frames of this kind the budget takes before it is exceeded
 * (the clock standing still); limit if it never is. */
static unsigned frames_until_over(struct h2_abuse *a, nghttp2_frame f, unsigned limit) {
  for (unsigned i = 0; i < limit; i++)
    if (h2_abuse_charge(a, &f, fake_clock)) return i;
  return limit;
}

static void request_work_is_free_and_reads_no_clock(void) {
  struct h2_abuse a;
  h2_abuse_init(&a);
  clock_reads = 0;
  nghttp2_frame data = frame_of(NGHTTP2_DATA, NGHTTP2_FLAG_NONE, 64);
  nghttp2_frame data_end = frame_of(NGHTTP2_DATA, NGHTTP2_FLAG_END_STREAM, 0);
  nghttp2_frame headers = frame_of(NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 20);
  nghttp2_frame ping_ack = frame_of(NGHTTP2_PING, NGHTTP2_FLAG_ACK, 8);
  nghttp2_frame settings_ack = frame_of(NGHTTP2_SETTINGS, NGHTTP2_FLAG_ACK, 0);
  for (int i = 0; i < 5000; i++) {
    CHECK(!h2_abuse_charge(&a, &data, fake_clock));
    CHECK(!h2_abuse_charge(&a, &data_end, fake_clock));
    CHECK(!h2_abuse_charge(&a, &headers, fake_clock));
    CHECK(!h2_abuse_charge(&a, &ping_ack, fake_clock));
    CHECK(!h2_abuse_charge(&a, &settings_ack, fake_clock));
  }
  CHECK(clock_reads == 0);
}

static void control_frames_spend_the_burst(void) {
  const uint8_t types[] = {NGHTTP2_PING, NGHTTP2_SETTINGS, NGHTTP2_WINDOW_UPDATE, NGHTTP2_PRIORITY};
  for (size_t t = 0; t < sizeof types; t++) {
    struct h2_abuse a;
    h2_abuse_init(&a);
    clock_reads = 0;
    unsigned taken = frames_until_over(&a, frame_of(types[t], NGHTTP2_FLAG_NONE, 8), 5000);
    CHECK(taken == 1000); /* the burst, with no time passing */
    CHECK(clock_reads == taken + 1);
  }
  /* An empty DATA frame that does not end the stream does nothing either. */
  struct h2_abuse a;
  h2_abuse_init(&a);
  CHECK(frames_until_over(&a, frame_of(NGHTTP2_DATA, NGHTTP2_FLAG_NONE, 0), 5000) == 1000);
}

static void the_budget_refills_with_time_up_to_the_burst(void) {
  struct h2_abuse a;
  h2_abuse_init(&a);
  nghttp2_frame ping = frame_of(NGHTTP2_PING, NGHTTP2_FLAG_NONE, 8);
  fake_now_ms = 1000;
  CHECK(frames_until_over(&a, ping, 5000) == 1000);
  fake_now_ms += 100; /* 100 per second: 10 more, one of them owed by the frame that went over */
  CHECK(frames_until_over(&a, ping, 5000) == 9);
  fake_now_ms += 3600 * 1000; /* an hour idle earns the burst, not more */
  CHECK(frames_until_over(&a, ping, 5000) == 1000);
  fake_now_ms -= 500; /* a clock that seems to go back earns nothing */
  CHECK(frames_until_over(&a, ping, 5000) == 0);
}

static void sent_data_earns_the_window_updates_it_prompts(void) {
  struct h2_abuse a;
  h2_abuse_init(&a);
  nghttp2_frame update = frame_of(NGHTTP2_WINDOW_UPDATE, NGHTTP2_FLAG_NONE, 4);
  CHECK(frames_until_over(&a, update, 5000) == 1000);
  nghttp2_frame sent = frame_of(NGHTTP2_DATA, NGHTTP2_FLAG_NONE, 100);
  for (int i = 0; i < 50; i++) h2_abuse_refund(&a, &sent);
  CHECK(frames_until_over(&a, update, 5000) == 99); /* two per DATA frame sent, one owed */
  nghttp2_frame empty = frame_of(NGHTTP2_DATA, NGHTTP2_FLAG_END_STREAM, 0);
  for (int i = 0; i < 50; i++) h2_abuse_refund(&a, &empty); /* prompts no update */
  CHECK(frames_until_over(&a, update, 5000) == 0);
}

int main(void) {
  request_work_is_free_and_reads_no_clock();
  control_frames_spend_the_burst();
  the_budget_refills_with_time_up_to_the_burst();
  sent_data_earns_the_window_updates_it_prompts();
  CHECK_DONE();
}
