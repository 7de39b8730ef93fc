"""HTTP/3 at scale with h3load (our own client on ngtcp2 and nghttp3):
1,000 concurrent streams, 100 MB each way in bounded gateway memory,
NEW_TOKEN reuse that skips Retry, and the field-section limit."""

import hashlib
import json
import pathlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile

import pytest

from h3env import BIN, Gateway, Worker, eventually, free_port, make_cert, metric, metrics, run
from test_http3 import H3_CONFIG, SECRET, expected_sha

SIZE = 100 * 1024 * 1024


@pytest.fixture(scope="module")
def gateway(worker):
    g = Gateway(H3_CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="30s",
                secret=SECRET, retry="never")
    yield g
    assert g.stop() == 0


def h3load(*args, timeout=120):
    r = run([BIN / "h3load", "--timeout", str(timeout), *args], timeout=timeout + 30)
    m = re.search(r"requests: (\d+) total, (\d+) done, (\d+) succeeded", r.stdout)
    assert m, r.stdout + r.stderr
    return r, int(m.group(3))


def test_1000_concurrent_streams_over_10_connections(gateway):
    url = f"https://127.0.0.1:{gateway.tls_port}/sleep?s=0.5"
    r, ok = h3load("-n", "1000", "-c", "10", "-m", "100", url)
    assert ok == 1000, r.stdout + r.stderr[-2000:]


def test_many_requests_per_connection(gateway):
    r, ok = h3load("-n", "3000", "-c", "2", "-m", "20", f"https://127.0.0.1:{gateway.tls_port}/pid")
    assert ok == 3000, r.stdout + r.stderr[-2000:]


def test_a_rapid_reset_client_is_closed_with_excessive_load(gateway, worker):
    """HTTP/3 rapid reset (CVE-2023-44487): a client that cancels each request
    once the gateway has it opens streams past max_streams_bidi, each one a
    request to the backend. Past nghttp2's HTTP/2 budget (1,000, then 33 a
    second) the connection closes with H3_EXCESSIVE_LOAD; a client that
    cancels fewer keeps its connection, and others are served throughout."""
    url = f"https://127.0.0.1:{gateway.tls_port}/sleep?s=1"  # the backend still works on each
    before = gateway.log_count("too many cancelled requests")
    r = run([BIN / "h3load", "--cancel", "-n", "600", "-m", "50", url], timeout=60)
    assert r.returncode == 0 and "cancelled: 600" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "closed by the server" not in r.stdout, r.stdout
    r = run([BIN / "h3load", "--cancel", "-n", "20000", "-m", "100", url], timeout=60)
    cancelled = int(re.search(r"cancelled: (\d+)", r.stdout).group(1))
    assert "closed by the server: 1 connections, the last with error 0x107" in r.stdout, r.stdout + r.stderr[-2000:]
    assert 1000 <= cancelled < 3000 and r.returncode != 0, r.stdout  # the burst, not the 20,000
    assert gateway.log_count("too many cancelled requests") == before + 1, gateway.log()[-2000:]
    r, ok = h3load("-n", "50", "-c", "2", f"https://127.0.0.1:{gateway.tls_port}/pid")
    assert ok == 50, r.stdout + r.stderr[-2000:]


def test_request_heads_that_never_end_get_408_after_client_header(worker):
    """Each request's HEADERS frame but its last byte: the streams stayed
    open for good. After timeouts.client_header each gets 408, and the
    gateway asks the client to stop sending (H3_NO_ERROR, RFC 9114 4.1), so
    the streams close."""
    g = Gateway(H3_CONFIG.replace("  connect: 2s\n", "  connect: 2s\n  client_header: 1s\n"),
                servers=f"127.0.0.1:{worker.port}", response_timeout="5s", secret=SECRET, retry="never")
    try:
        r = run([BIN / "h3load", "--stall-headers", "-n", "10", "-c", "2", "-m", "5", "--timeout", "10",
                 f"https://127.0.0.1:{g.tls_port}/pid"], timeout=40)
        assert "10 done, 0 succeeded, 10 failed, 0 errored" in r.stdout, r.stdout + r.stderr[-2000:]
        assert "status codes: 0 2xx, 0 3xx, 10 4xx" in r.stdout, r.stdout
    finally:
        g.stop()


def test_100mb_download_and_upload_in_bounded_memory(gateway, tmp_path):
    before = gateway.peak_rss_kb()
    r, ok = h3load("-n", "1", "--sha256", f"https://127.0.0.1:{gateway.tls_port}/download?size={SIZE}")
    assert ok == 1, r.stdout
    assert f"body sha256: {expected_sha(SIZE)}" in r.stdout
    out = tmp_path / "upload.json"
    r, ok = h3load("-n", "1", "--upload-size", str(SIZE), "-o", str(out),
                   f"https://127.0.0.1:{gateway.tls_port}/upload")
    assert ok == 1, r.stdout
    # h3load's pattern: byte i is (7i + i/65536) mod 256; as 7 * 65536 is 0
    # mod 256, 64 KiB block k is the first block with k added to each byte.
    blocks = [bytes(((j * 7 + k) & 255) for j in range(1 << 16)) for k in range(256)]
    h = hashlib.sha256()
    for k in range(SIZE >> 16):
        h.update(blocks[k & 255])
    info = json.loads(out.read_text())
    assert info["size"] == SIZE and info["sha256"] == h.hexdigest()
    growth = gateway.peak_rss_kb() - before
    assert growth < 64 * 1024, f"gateway peak RSS grew {growth} KiB"


def test_new_token_skips_retry(worker, tmp_path):
    g = Gateway(H3_CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="10s",
                secret=SECRET, retry="always")
    try:
        token = tmp_path / "token"
        url = f"https://127.0.0.1:{g.tls_port}/pid"
        r, ok = h3load("-n", "1", "--token-file", str(token), url)
        assert ok == 1 and "retries: 1" in r.stdout, r.stdout
        assert token.read_bytes()[0] == 0x36  # a regular (NEW_TOKEN) token
        r, ok = h3load("-n", "1", "--token-file", str(token), url)
        assert ok == 1 and "retries: 0" in r.stdout, r.stdout
    finally:
        g.stop()


def test_headers_reach_the_app_and_a_big_field_section_gets_431(worker, tmp_path):
    """h3load -H sends extra fields (the app sees them, the name lower-cased);
    over quic.max_field_section_size the gateway answers 431 on that stream
    and the connection goes on serving."""
    g = Gateway(H3_CONFIG + "  max_field_section_size: 4k\n", servers=f"127.0.0.1:{worker.port}",
                response_timeout="5s", secret=SECRET, retry="never")
    try:
        url = f"https://127.0.0.1:{g.tls_port}/scope"
        out = tmp_path / "scope.json"
        r, ok = h3load("-H", "X-Probe: yes", "-H", "x-size: " + "s" * 1000, "-o", str(out), url)
        assert ok == 1, r.stdout + r.stderr[-2000:]
        headers = json.loads(out.read_text())["headers"]
        assert ["x-probe", "yes"] in headers, headers
        # three requests one after another on one connection: each gets its 431
        r, ok = h3load("-n", "3", "-H", "x-big: " + "b" * 6000, url)
        assert "3 total, 3 done" in r.stdout, r.stdout + r.stderr[-2000:]
        assert "status codes: 0 2xx, 0 3xx, 3 4xx, 0 5xx" in r.stdout, r.stdout
    finally:
        g.stop()


def test_max_streams_bidi_bounds_concurrent_requests_per_connection(tmp_path):
    """quic.max_streams_bidi: a client that would run 20 requests at once on
    one connection gets 5 at a time (QUIC stream credit, MAX_STREAMS as
    they end), and all 20 answered."""
    w = Worker("probe:app")
    g = Gateway(H3_CONFIG + "  max_streams_bidi: 5\n", servers=f"127.0.0.1:{w.port}",
                response_timeout="5s", secret=SECRET, retry="never")
    try:
        r, ok = h3load("-n", "20", "-c", "1", "-m", "20", f"https://127.0.0.1:{g.tls_port}/sleep?s=0.2")
        assert ok == 20, r.stdout + r.stderr[-2000:]
        out = tmp_path / "last.json"
        h3load("-o", str(out), f"https://127.0.0.1:{g.tls_port}/sleep?s=0")
        most = json.loads(out.read_text())["max_inflight"]
        assert 3 <= most <= 5, most  # concurrent, and never above the credit
    finally:
        g.stop()
        w.stop()


def test_qpack_settings_with_and_without_a_dynamic_table(worker, tmp_path):
    """quic.qpack_table_capacity and qpack_blocked_streams: with no dynamic
    table and with a large one, 400 requests over 4 connections carrying
    the same session cookie (what a dynamic table is for) all succeed and
    the app sees the fields. And the table is there only when the gateway
    allows it: at 16 KiB each client inserts the cookie once on its QPACK
    encoder stream and then refers to it, so its request streams carry far
    fewer bytes; at 0 nothing is inserted and every request carries it."""
    sent = {}
    cookie = "session=" + "t" * 200  # 125 bytes Huffman-coded; nghttp3 indexes cookies
    for capacity, blocked in (("0", "0"), ("16k", "100")):
        g = Gateway(H3_CONFIG + f"  qpack_table_capacity: {capacity}\n  qpack_blocked_streams: {blocked}\n",
                    servers=f"127.0.0.1:{worker.port}", response_timeout="5s", secret=SECRET, retry="never")
        try:
            url = f"https://127.0.0.1:{g.tls_port}/scope"
            fields = ["-H", "x-tenant: acme-corporation", "-H", "cookie: " + cookie]
            r, ok = h3load("-n", "400", "-c", "4", "-m", "10", *fields, url)
            assert ok == 400, r.stdout + r.stderr[-2000:]
            m = re.search(r"request streams: (\d+) bytes sent .*, (\d+) on the QPACK encoder stream", r.stdout)
            assert m, r.stdout
            sent[capacity] = (int(m.group(1)) / 400, int(m.group(2)))
            out = tmp_path / "scope.json"
            h3load("-o", str(out), *fields, url)
            headers = json.loads(out.read_text())["headers"]
            assert ["x-tenant", "acme-corporation"] in headers and ["cookie", cookie] in headers, headers
        finally:
            assert g.stop() == 0
    (per_request_without, encoder_without), (per_request_with, encoder_with) = sent["0"], sent["16k"]
    assert encoder_without <= 4, sent  # each stream's type byte, no insertion
    assert encoder_with >= 4 * 125, sent  # the cookie, once per connection
    assert per_request_without - per_request_with >= 100, sent

def test_a_graceful_stop_serves_requests_already_on_their_way(worker):
    """Graceful shutdown in two steps over HTTP/3 (RFC 9114 5.2): a stop
    first sends a GOAWAY that refuses nothing, and only a second (or three
    round trips) later the one naming the first stream not taken; the
    connection closes after that. h3load --pause sends its second request
    half a second after the stop began, without having read anything
    meanwhile: it is served. With a single GOAWAY (and a close as soon as
    the connection was idle) it was lost: "1 succeeded, 1 errored"."""
    g = Gateway(H3_CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="5s", secret=SECRET,
                retry="never")
    p = subprocess.Popen([BIN / "h3load", "--timeout", "30", "-n", "2", "-c", "1", "-m", "1", "--pause", "500",
                          f"https://127.0.0.1:{g.tls_port}/pid"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "pausing" in p.stdout.readline()  # the first answer is in; the socket goes unread
        g.signal(signal.SIGTERM)
        assert g.wait_log("stopping"), g.log()[-2000:]
        out = p.stdout.read()
        assert p.wait(timeout=60) == 0, out
        assert "2 succeeded, 0 failed, 0 errored" in out, out
        assert g.stop() == 0  # it exits once the connection has closed
    finally:
        p.kill()
        g.stop()


def test_a_reload_renews_certificates_and_moves_http3_connections_on(worker):
    """SIGHUP after a certificate renewal: new handshakes get the new
    certificate over QUIC as over TLS, and the HTTP/3 connections of the old
    configuration get the two-step GOAWAY, as TCP ones do, so that their
    clients come back to the new one: a connection idle since before the
    reload closes within seconds, and a request sent in the reload's first
    second is still served. QUIC's endpoint used to carry its old
    credentials over (HTTP/3 served the replaced certificate until a
    restart), and its connections the old routes and servers until the
    client left."""
    d = tempfile.mkdtemp(prefix="h3gw-renew-")
    make_cert(d)
    shutil.copy(f"{d}/cert.pem", f"{d}/old.pem")
    admin = free_port()
    g = Gateway(H3_CONFIG + f"admin: {{{{address: 127.0.0.1:{admin}}}}}\n", directory=d,
                servers=f"127.0.0.1:{worker.port}", response_timeout="5s", secret=SECRET, retry="never")
    url = f"https://127.0.0.1:{g.tls_port}/pid"
    idle = subprocess.Popen([BIN / "h3load", "-q", "-n", "1", "--hold", "60", url], stdout=subprocess.DEVNULL)
    paused = subprocess.Popen([BIN / "h3load", "--timeout", "30", "-n", "2", "-c", "1", "-m", "1", "--pause", "1000",
                               url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    quic_connections = lambda: metric(metrics(admin), "h3gate_client_connections", transport="quic")
    try:
        assert "pausing" in paused.stdout.readline()
        assert eventually(lambda: quic_connections() == 2), quic_connections()
        make_cert(d)  # the renewal
        g.signal(signal.SIGHUP)
        assert g.wait_log("configuration reloaded"), g.log()[-2000:]
        out = paused.stdout.read()
        assert paused.wait(timeout=60) == 0 and "2 succeeded, 0 failed, 0 errored" in out, out
        assert eventually(lambda: quic_connections() == 0, timeout=15), (quic_connections(), g.log()[-2000:])
        assert idle.wait(timeout=10) == 0  # closed by the gateway, long before its hold was over
        new = pathlib.Path(f"{d}/cert.pem").read_text()
        ctx = ssl.create_default_context(cadata=new)
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", g.tls_port), timeout=10),
                             server_hostname="localhost"):
            pass  # over TLS, the handshake trusting only the new certificate passes
        for trusted, right in (("cert.pem", True), ("old.pem", False)):
            r = run([BIN / "h3load", "-n", "1", "--cacert", f"{d}/{trusted}", "--sni", "localhost", url], timeout=30)
            assert (", 1 succeeded" in r.stdout) == right, (trusted, r.stdout, r.stderr)
    finally:
        idle.kill()
        paused.kill()
        g.stop()


def test_a_reload_that_moves_the_http3_port_lets_the_old_one_drain(worker):
    """A reload that moves HTTP/3 to another UDP port (or drops the
    listener, or its HTTP/3): the new port serves at once, and the old
    one takes no new connections but lets its own finish, with the two-step
    GOAWAY, and then closes its socket. It used to close them at once:
    the request sent in the reload's first second was lost ("1 errored")."""
    old_port, new_port = free_port(), free_port()
    config = H3_CONFIG.replace("    tls: {{certificate: cert.pem, key: key.pem}}\n",
                               "    tls: {{certificate: cert.pem, key: key.pem}}\n    http3_port: {h3_port}\n")
    g = Gateway(config, servers=f"127.0.0.1:{worker.port}", response_timeout="5s", secret=SECRET, retry="never",
                h3_port=old_port)
    paused = subprocess.Popen([BIN / "h3load", "--timeout", "30", "-n", "2", "-c", "1", "-m", "1", "--pause", "1000",
                               f"https://127.0.0.1:{old_port}/pid"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        assert "pausing" in paused.stdout.readline()
        g.write_config(config, servers=f"127.0.0.1:{worker.port}", response_timeout="5s", secret=SECRET,
                       retry="never", h3_port=new_port)
        g.signal(signal.SIGHUP)
        assert g.wait_log("configuration reloaded"), g.log()[-2000:]
        _, ok = h3load("-n", "3", f"https://127.0.0.1:{new_port}/pid", timeout=30)
        assert ok == 3
        out = paused.stdout.read()
        assert paused.wait(timeout=60) == 0 and "2 succeeded, 0 failed, 0 errored" in out, out + g.log()[-2000:]
        assert g.wait_log(f"HTTP/3 on udp port {old_port}: closed", timeout=15), g.log()[-2000:]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", old_port))  # the old socket is gone
    finally:
        paused.kill()
        g.stop()
