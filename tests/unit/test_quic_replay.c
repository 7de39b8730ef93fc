/* The 0-RTT anti-replay store: no store refuses, it is shared across forked
 * processes, a live entry is found past expired ones, expiry frees a
 * ClientHello, a full neighbourhood refuses, two processes racing with one
 * ClientHello across a second boundary do not both take it. */
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "quic.h"

static void key_of(uint64_t n, uint8_t out[8]) { memcpy(out, &n, 8); }

/* Keys numbered from *next on whose search starts at home. */
static uint64_t next_key_at(size_t home, uint64_t *next) {
  uint8_t k[8];
  for (;; (*next)++) {
    key_of(*next, k);
    if (quic_replay_home(k, 8) == home) return (*next)++;
  }
}

static void seen_twice_is_a_replay(void) {
  uint8_t k[8];
  key_of(0x1111, k);
  time_t later = time(NULL) + 100;
  CHECK(!quic_replay_seen(k, 8, later));
  CHECK(quic_replay_seen(k, 8, later));
}

/* The master makes the store before forking: any process sees the others'. */
static void processes_share_the_store(void) {
  uint8_t a[8], b[8];
  key_of(0x2222, a);
  key_of(0x3333, b);
  time_t later = time(NULL) + 100;
  pid_t pid = fork();
  if (pid == 0) _exit(quic_replay_seen(a, 8, later) ? 1 : 0); /* first sight, in the child */
  int status;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(quic_replay_seen(a, 8, later)); /* the parent knows it now */
  CHECK(!quic_replay_seen(b, 8, later));
  pid = fork();
  if (pid == 0) _exit(quic_replay_seen(b, 8, later) ? 0 : 1);
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* A and B share a home word, so B sits after A. Once A's window ends, B is
 * still found: an expired word must not end the search. After its own
 * window B is new again. */
static void expiry(void) {
  uint64_t next = 1000000;
  uint8_t a[8], b[8];
  key_of(next_key_at(12345, &next), a);
  key_of(next_key_at(12345, &next), b);
  time_t now = time(NULL);
  CHECK(!quic_replay_seen(a, 8, now + 1));
  CHECK(!quic_replay_seen(b, 8, now + 3));
  sleep(2);
  CHECK(quic_replay_seen(b, 8, now + 3));
  CHECK(!quic_replay_seen(a, 8, now + 100)); /* A's window is over */
  sleep(2);
  CHECK(!quic_replay_seen(b, 8, now + 100));
}

static void a_full_neighbourhood_refuses(void) {
  uint64_t next = 50000000;
  time_t later = time(NULL) + 100;
  for (int i = 0; i < 32; i++) {
    uint8_t k[8];
    key_of(next_key_at(777, &next), k);
    CHECK(!quic_replay_seen(k, 8, later));
  }
  uint8_t one_more[8];
  key_of(next_key_at(777, &next), one_more);
  CHECK(quic_replay_seen(one_more, 8, later)); /* no room: no early data */
}

/* One ClientHello (a replay) reaches two processes in the same instant, as
 * the clock turns a second, and an older word in its neighbourhood expires
 * at that second. The process still in the earlier second looks first: the
 * older word is live, so it will claim the next one. Before it does, the
 * other process, a second later, finds the older word expired, claims it
 * and takes the ClientHello. The first must then not take it too. */
struct race {
  const uint8_t *hello;
  time_t t;
  bool ran, other_refused;
};

static void other_process_takes_it(void *arg) {
  struct race *r = arg;
  if (r->ran) return;
  r->ran = true;
  r->other_refused = quic_replay_seen_at(r->hello, 8, r->t + 100, r->t + 1, NULL, NULL);
}

static void a_replay_racing_across_a_second_boundary_is_caught(void) {
  uint64_t next = 90000000;
  time_t t = time(NULL) + 1000; /* past every other test's windows */
  uint8_t older[8], hello[8];
  key_of(next_key_at(4242, &next), older);
  key_of(next_key_at(4242, &next), hello);
  CHECK(!quic_replay_seen_at(older, 8, t + 1, t, NULL, NULL)); /* its window ends as t+1 begins */
  struct race r = {.hello = hello, .t = t};
  CHECK(quic_replay_seen_at(hello, 8, t + 100, t, other_process_takes_it, &r));
  CHECK(r.ran && !r.other_refused); /* the other one took it first */
}

/* Before the store exists every ClientHello counts as a replay: 1-RTT. */
static void no_store_refuses(void) {
  uint8_t k[8];
  key_of(0x2222, k);
  CHECK(quic_replay_seen(k, 8, time(NULL) + 100));
  CHECK(quic_replay_seen(k, 8, time(NULL) + 100));
}

int main(void) {
  no_store_refuses();
  CHECK(quic_replay_prepare() == 0);
  seen_twice_is_a_replay();
  processes_share_the_store();
  expiry();
  a_full_neighbourhood_refuses();
  a_replay_racing_across_a_second_boundary_is_caught();
  CHECK_DONE();
}
