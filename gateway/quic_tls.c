/* TLS for QUIC with GnuTLS (Debian's OpenSSL 3.0 has no QUIC API).
 *
 * Session tickets: the ticket master key is derived from the configured
 * QUIC secret, so every gateway process and restart can resume the same
 * tickets; GnuTLS rotates the keys that encrypt tickets from it on its own.
 * 0-RTT replays are caught by an in-process store of ClientHellos seen
 * within the anti-replay window (and early data is limited to safe methods
 * in h3_down.c, with Early-Data: 1 sent to the backend). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <gnutls/crypto.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>

#include "config.h"
#include "fastrand.h"
#include "log.h"
#include "quic.h"
#include "siphash.h"

/* ---------------------------------------------------------------------------
 * 0-RTT anti-replay store: hashes of ClientHellos until their window ends.
 */
struct replay_entry {
  uint64_t hash;
  time_t expires;
};

static struct {
  struct replay_entry *slots;
  size_t cap, used;
  uint64_t key[2];
} replay;

static void replay_sweep(time_t now) {
  size_t live = 0;
  for (size_t i = 0; i < replay.cap; i++) {
    if (replay.slots[i].hash && replay.slots[i].expires <= now) replay.slots[i] = (struct replay_entry){0};
    if (replay.slots[i].hash) live++;
  }
  replay.used = live;
}

static int replay_grow(void) {
  size_t cap = replay.cap ? replay.cap * 2 : 1024;
  struct replay_entry *slots = calloc(cap, sizeof *slots);
  if (slots == NULL) return -1;
  for (size_t i = 0; i < replay.cap; i++) {
    if (!replay.slots[i].hash) continue;
    size_t j = replay.slots[i].hash & (cap - 1);
    while (slots[j].hash) j = (j + 1) & (cap - 1);
    slots[j] = replay.slots[i];
  }
  free(replay.slots);
  replay.slots = slots;
  replay.cap = cap;
  return 0;
}

/* GnuTLS asks to remember a ClientHello: GNUTLS_E_DB_ENTRY_EXISTS means a
 * replay, and the early data is refused. */
static int replay_add(void *ptr, time_t expires, const gnutls_datum_t *key,
                      const gnutls_datum_t *data) {
  (void)ptr;
  (void)data;
  time_t now = time(NULL);
  if (replay.used * 2 >= replay.cap) {
    replay_sweep(now);
    if (replay.used * 2 >= replay.cap && replay_grow() != 0) return GNUTLS_E_MEMORY_ERROR;
  }
  uint64_t h = siphash24(replay.key, key->data, key->size) | 1;
  size_t i = h & (replay.cap - 1);
  while (replay.slots[i].hash) {
    if (replay.slots[i].hash == h && replay.slots[i].expires > now) return GNUTLS_E_DB_ENTRY_EXISTS;
    if (replay.slots[i].expires <= now) break; /* reuse an expired slot */
    i = (i + 1) & (replay.cap - 1);
  }
  if (!replay.slots[i].hash) replay.used++;
  replay.slots[i] = (struct replay_entry){h, expires};
  return 0;
}

/* ---------------------------------------------------------------------------
 * Endpoint-wide TLS state.
 */
static void derive(const uint8_t secret[32], const char *label, uint8_t out[32]) {
  gnutls_hmac_fast(GNUTLS_MAC_SHA256, secret, 32, label, strlen(label), out);
}

int quic_tls_init(struct quic_tls *t, const struct conf_listen *cl, const uint8_t secret[32],
                  char *err, size_t err_size) {
  memset(t, 0, sizeof *t);
  int rc = gnutls_certificate_allocate_credentials(&t->cred);
  if (rc == 0)
    rc = gnutls_certificate_set_x509_key_file(t->cred, cl->certificate, cl->key, GNUTLS_X509_FMT_PEM);
  if (rc < 0) {
    snprintf(err, err_size, "HTTP/3: cannot load %s / %s: %s", cl->certificate, cl->key,
             gnutls_strerror(rc));
    goto err;
  }
  /* GnuTLS session ticket keys are 64 bytes. */
  t->ticket_key.data = gnutls_malloc(64);
  t->ticket_key.size = 64;
  if (t->ticket_key.data == NULL) goto err;
  derive(secret, "h3gate session ticket key 1", t->ticket_key.data);
  derive(secret, "h3gate session ticket key 2", t->ticket_key.data + 32);
  rc = gnutls_priority_init(&t->priority,
                            "NORMAL:-VERS-ALL:+VERS-TLS1.3:%DISABLE_TLS13_COMPAT_MODE", NULL);
  if (rc < 0) {
    snprintf(err, err_size, "HTTP/3: TLS priorities: %s", gnutls_strerror(rc));
    goto err;
  }
  if (gnutls_anti_replay_init(&t->anti_replay) < 0) goto err;
  gnutls_anti_replay_set_add_function(t->anti_replay, replay_add);
  gnutls_anti_replay_set_ptr(t->anti_replay, NULL);
  if (replay.key[0] == 0) {
    replay.key[0] = fastrand64();
    replay.key[1] = fastrand64();
  }
  return 0;

err:
  if (!err[0]) snprintf(err, err_size, "HTTP/3: TLS set-up failed");
  quic_tls_free(t);
  return -1;
}

void quic_tls_free(struct quic_tls *t) {
  if (t->cred) gnutls_certificate_free_credentials(t->cred);
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
      (rc = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, t->cred)) < 0 ||
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
  qc->conn_ref.get_conn = get_conn;
  qc->conn_ref.user_data = qc;
  gnutls_session_set_ptr(s, &qc->conn_ref);
  ngtcp2_conn_set_tls_native_handle(qc->conn, s);
  qc->tls = s;
  return 0;
}
