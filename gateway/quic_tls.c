/* TLS for QUIC with GnuTLS (Debian's OpenSSL 3.0 has no QUIC API).
 *
 * Session tickets: the ticket master key is derived from the configured
 * QUIC secret, so every gateway process and restart can resume the same
 * tickets; GnuTLS rotates the keys that encrypt tickets from it on its own.
 * 0-RTT replays are caught by a store of ClientHellos seen within the
 * anti-replay window, shared by the gateway's processes (and early data is
 * limited to safe methods in h3_down.c, with Early-Data: 1 sent to the
 * backend). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>

#include "config.h"
#include "log.h"
#include "quic.h"
#include "siphash.h"

/* ---------------------------------------------------------------------------
 * 0-RTT anti-replay store: the ClientHellos seen within the anti-replay
 * window.
 *
 * One fixed table of 64-bit words, each a ClientHello's hash (high half)
 * and the second its window ends (low half), in a shared anonymous mapping.
 * The master makes it before forking, so every gateway process checks the
 * same store: a ClientHello replayed inside another connection ID, which
 * can reach another process, is still caught. Words change only by
 * compare-and-swap. A key is checked against its whole neighbourhood
 * before a free or expired word there is claimed (an expired word earlier
 * in the run must not hide a live copy further on). A full neighbourhood
 * refuses the early data, and the handshake goes on in 1-RTT: the safe
 * side, and a bound on memory under a flood.
 */
enum { REPLAY_SLOTS = 1 << 18, REPLAY_PROBES = 32, REPLAY_ATTEMPTS = 8 };

static struct {
  uint64_t *slots; /* REPLAY_SLOTS words, shared */
  uint64_t key[2];
} replay;

int quic_replay_prepare(void) {
  if (replay.slots) return 0;
  void *p = mmap(NULL, REPLAY_SLOTS * sizeof *replay.slots, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return -1;
  if (getrandom(replay.key, sizeof replay.key, 0) != (ssize_t)sizeof replay.key) {
    munmap(p, REPLAY_SLOTS * sizeof *replay.slots);
    return -1;
  }
  replay.slots = p;
  return 0;
}

/* A key's place in the store, and one attempt's view of its neighbourhood. */
struct replay_try {
  uint64_t tag, mine; /* the key's word: tag (high half), window end (low) */
  size_t home;
  uint64_t *word; /* the word to claim; NULL when the neighbourhood is full */
  uint64_t was;
  bool seen; /* a live copy is there: a replay */
};

static bool live_copy(uint64_t v, uint64_t tag, time_t now) {
  return v >> 32 == tag && (v & 0xffffffffu) > (uint64_t)(uint32_t)now;
}

static uint64_t *neighbour(const struct replay_try *t, size_t i) {
  return &replay.slots[(t->home + i) & (REPLAY_SLOTS - 1)];
}

static void replay_look(struct replay_try *t, time_t now) {
  t->word = NULL;
  t->seen = false;
  for (size_t i = 0; i < REPLAY_PROBES; i++) {
    uint64_t *word = neighbour(t, i);
    uint64_t v = __atomic_load_n(word, __ATOMIC_SEQ_CST);
    if (live_copy(v, t->tag, now)) {
      t->seen = true;
      return;
    }
    bool free_word = (v & 0xffffffffu) <= (uint64_t)(uint32_t)now;
    if (free_word && t->word == NULL) t->word = word, t->was = v;
  }
}

/* A live copy of the key in a word other than the one this attempt claimed. */
static bool replay_other_copy(const struct replay_try *t, time_t now) {
  for (size_t i = 0; i < REPLAY_PROBES; i++) {
    uint64_t *word = neighbour(t, i);
    if (word != t->word && live_copy(__atomic_load_n(word, __ATOMIC_SEQ_CST), t->tag, now)) return true;
  }
  return false;
}

bool quic_replay_seen(const uint8_t *client_hello_key, size_t len, time_t expires) {
  return quic_replay_seen_at(client_hello_key, len, expires, time(NULL), NULL, NULL);
}

bool quic_replay_seen_at(const uint8_t *client_hello_key, size_t len, time_t expires, time_t now,
                         void (*between)(void *), void *arg) {
  /* The store is made in quic_replay_prepare, before any fork, and never
   * here: one made by a worker alone would not see the other workers'. */
  if (replay.slots == NULL) return true; /* no store: no 0-RTT */
  uint64_t h = siphash24(replay.key, client_hello_key, len);
  struct replay_try t = {.tag = (h >> 32) | 1, .home = (size_t)h & (REPLAY_SLOTS - 1)};
  t.mine = t.tag << 32 | (uint32_t)expires;
  for (int attempt = 0; attempt < REPLAY_ATTEMPTS; attempt++) {
    replay_look(&t, now);
    if (t.seen || t.word == NULL) return true; /* a replay, or full here */
    if (between) between(arg);
    /* Another process claimed that word meanwhile, perhaps for this very
     * ClientHello: look again. */
    if (!__atomic_compare_exchange_n(t.word, &t.was, t.mine, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
      continue;
    /* Two processes can look in the same instant with clocks a second
     * apart: a word that one sees live has expired for the other, so they
     * claim different words for the same ClientHello. Each looks once more
     * after claiming; in sequentially consistent order at least one of them
     * sees the other's word, and refuses. */
    return replay_other_copy(&t, now);
  }
  return true;
}

size_t quic_replay_home(const uint8_t *client_hello_key, size_t len) {
  return (size_t)siphash24(replay.key, client_hello_key, len) & (REPLAY_SLOTS - 1);
}

/* GnuTLS asks to remember a ClientHello: GNUTLS_E_DB_ENTRY_EXISTS means a
 * replay, and the early data is refused. */
static int replay_add(void *ptr, time_t expires, const gnutls_datum_t *key,
                      const gnutls_datum_t *data) {
  (void)ptr;
  (void)data;
  return quic_replay_seen(key->data, key->size, expires) ? GNUTLS_E_DB_ENTRY_EXISTS : 0;
}

/* ---------------------------------------------------------------------------
 * Endpoint-wide TLS state.
 */
static void derive(const uint8_t secret[32], const char *label, uint8_t out[32]) {
  gnutls_hmac_fast(GNUTLS_MAC_SHA256, secret, 32, label, strlen(label), out);
}

/* Loads one certificate and key: a credentials set of its own (GnuTLS
 * would choose among several in one set by SNI, but by exact name only),
 * and the leaf certificate parsed, for our own choice. */
static int load_certificate(struct quic_cert *qc, const char *certificate, const char *key, char *err,
                            size_t err_size) {
  gnutls_datum_t der = {0};
  int rc = gnutls_certificate_allocate_credentials(&qc->cred);
  if (rc >= 0) rc = gnutls_certificate_set_x509_key_file(qc->cred, certificate, key, GNUTLS_X509_FMT_PEM);
  if (rc >= 0) rc = gnutls_certificate_get_crt_raw(qc->cred, 0, 0, &der);
  if (rc >= 0) rc = gnutls_x509_crt_init(&qc->crt);
  if (rc >= 0) rc = gnutls_x509_crt_import(qc->crt, &der, GNUTLS_X509_FMT_DER);
  if (rc >= 0) return 0;
  snprintf(err, err_size, "HTTP/3: cannot load %s / %s: %s", certificate, key, gnutls_strerror(rc));
  return -1;
}

struct quic_certs *quic_certs_load(const struct conf_listen *cl, char *err, size_t err_size) {
  size_t n = 1 + cl->n_sni_certs;
  struct quic_certs *certs = calloc(1, sizeof *certs + n * sizeof certs->cert[0]);
  if (certs == NULL) {
    snprintf(err, err_size, "out of memory");
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    certs->n = i + 1; /* freed with the set from now on, even half loaded */
    const char *certificate = i == 0 ? cl->certificate : cl->sni_certs[i - 1].certificate;
    const char *key = i == 0 ? cl->key : cl->sni_certs[i - 1].key;
    if (load_certificate(&certs->cert[i], certificate, key, err, err_size) != 0) {
      quic_certs_free(certs);
      return NULL;
    }
  }
  return certs;
}

void quic_certs_free(struct quic_certs *certs) {
  if (certs == NULL) return;
  for (size_t i = 0; i < certs->n; i++) {
    if (certs->cert[i].cred) gnutls_certificate_free_credentials(certs->cert[i].cred);
    if (certs->cert[i].crt) gnutls_x509_crt_deinit(certs->cert[i].crt);
  }
  free(certs);
}

int quic_tls_init(struct quic_tls *t, const uint8_t secret[32], char *err, size_t err_size) {
  memset(t, 0, sizeof *t);
  /* GnuTLS session ticket keys are 64 bytes. */
  t->ticket_key.data = gnutls_malloc(64);
  t->ticket_key.size = 64;
  if (t->ticket_key.data == NULL) goto err;
  derive(secret, "h3gate session ticket key 1", t->ticket_key.data);
  derive(secret, "h3gate session ticket key 2", t->ticket_key.data + 32);
  int rc = gnutls_priority_init(&t->priority,
                            "NORMAL:-VERS-ALL:+VERS-TLS1.3:%DISABLE_TLS13_COMPAT_MODE", NULL);
  if (rc < 0) {
    snprintf(err, err_size, "HTTP/3: TLS priorities: %s", gnutls_strerror(rc));
    goto err;
  }
  if (gnutls_anti_replay_init(&t->anti_replay) < 0) goto err;
  gnutls_anti_replay_set_add_function(t->anti_replay, replay_add);
  gnutls_anti_replay_set_ptr(t->anti_replay, NULL);
  if (quic_replay_prepare() != 0) {
    snprintf(err, err_size, "HTTP/3: no memory for the 0-RTT anti-replay store");
    goto err;
  }
  return 0;

err:
  if (!err[0]) snprintf(err, err_size, "HTTP/3: TLS set-up failed");
  quic_tls_free(t);
  return -1;
}

void quic_tls_free(struct quic_tls *t) {
  if (t->ticket_key.data) {
    memset(t->ticket_key.data, 0, t->ticket_key.size);
    gnutls_free(t->ticket_key.data);
  }
  if (t->priority) gnutls_priority_deinit(t->priority);
  if (t->anti_replay) gnutls_anti_replay_deinit(t->anti_replay);
  memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------------------------
 * Per connection.
 */
static ngtcp2_conn *get_conn(ngtcp2_crypto_conn_ref *ref) {
  struct quic_conn *qc = ref->user_data;
  return qc->conn;
}

/* Once the ClientHello is read: the certificate for the name the client
 * asks for, as the TCP listener chooses (the default one if it covers the
 * name or none is asked for, else the first that covers it, wildcards
 * too, else the default). */
static int select_certificate(gnutls_session_t s) {
  const ngtcp2_crypto_conn_ref *ref = gnutls_session_get_ptr(s);
  const struct quic_certs *certs = ((const struct quic_conn *)ref->user_data)->certs;
  char name[256];
  size_t len = sizeof name - 1;
  unsigned type;
  if (gnutls_server_name_get(s, name, &len, &type, 0) < 0 || type != GNUTLS_NAME_DNS) return 0;
  name[len] = '\0';
  if (gnutls_x509_crt_check_hostname(certs->cert[0].crt, name)) return 0;
  for (size_t i = 1; i < certs->n; i++)
    if (gnutls_x509_crt_check_hostname(certs->cert[i].crt, name))
      return gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, certs->cert[i].cred);
  return 0;
}

int quic_tls_session_new(struct quic_conn *qc, bool early_data, char *err, size_t err_size) {
  struct quic_tls *t = &qc->ep->tls;
  unsigned flags = GNUTLS_SERVER | GNUTLS_NO_AUTO_SEND_TICKET | GNUTLS_NO_END_OF_EARLY_DATA;
  if (early_data) flags |= GNUTLS_ENABLE_EARLY_DATA;
  gnutls_session_t s;
  int rc = gnutls_init(&s, flags);
  if (rc < 0) {
    snprintf(err, err_size, "gnutls_init: %s", gnutls_strerror(rc));
    return -1;
  }
  static const gnutls_datum_t h3 = {(unsigned char *)"h3", 2};
  if ((rc = gnutls_priority_set(s, t->priority)) < 0 ||
      (rc = gnutls_session_ticket_enable_server(s, &t->ticket_key)) < 0 ||
      (rc = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, qc->certs->cert[0].cred)) < 0 ||
      (rc = gnutls_alpn_set_protocols(s, &h3, 1, GNUTLS_ALPN_MANDATORY)) < 0) {
    snprintf(err, err_size, "TLS session: %s", gnutls_strerror(rc));
    gnutls_deinit(s);
    return -1;
  }
  if (ngtcp2_crypto_gnutls_configure_server_session(s) != 0) {
    snprintf(err, err_size, "ngtcp2_crypto_gnutls_configure_server_session failed");
    gnutls_deinit(s);
    return -1;
  }
  if (early_data) {
    gnutls_anti_replay_enable(s, t->anti_replay);
    gnutls_record_set_max_early_data_size(s, 0xffffffffu);
  }
  if (qc->certs->n > 1) gnutls_handshake_set_post_client_hello_function(s, select_certificate);
  qc->conn_ref.get_conn = get_conn;
  qc->conn_ref.user_data = qc;
  gnutls_session_set_ptr(s, &qc->conn_ref);
  ngtcp2_conn_set_tls_native_handle(qc->conn, s);
  qc->tls = s;
  return 0;
}
