"""h3gate over TCP: HTTP/1.1 and HTTP/2 from real clients (curl, nghttp,
h2load, python-h2) through the gateway to h3gate-worker, hypercorn and
deliberately faulty backends."""

import hashlib
import json
import os
import pathlib
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

from h3env import (APPS, BASIC_CONFIG, BIN, GATEWAY_READY, LISTEN_TLS_AND_CLEARTEXT, PYTHON, Gateway, Process,
                   Worker, children_of, curl, curl_json, eventually, free_port, h2_raw_request, log_time, make_cert,
                   raw_http, run, tcp_connections, wait_port)

SIZE = 100 * 1024 * 1024


@pytest.fixture(scope="module")
def gateway(worker):
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="30s")
    yield g
    assert g.stop() == 0
    g.assert_clean()


CLIENTS = [
    ("tls-h1", ["-k", "--http1.1"], "tls_url", "1.1", "https"),
    ("tls-h2", ["-k", "--http2"], "tls_url", "2", "https"),
    ("h2c", ["--http2-prior-knowledge"], "plain_url", "2", "http"),
    ("plain-h1", ["--http1.1"], "plain_url", "1.1", "http"),
]


@pytest.mark.parametrize("name,flags,url,version,scheme", CLIENTS, ids=[c[0] for c in CLIENTS])
def test_forwarded_headers_as_the_app_sees_them(gateway, name, flags, url, version, scheme):
    s = curl_json(*flags, "-H", "X-Forwarded-For: 6.6.6.6", "-H", "Via: 1.0 evil",
                  "-H", "Connection: keep-alive, X-Hop", "-H", "X-Hop: secret",
                  getattr(gateway, url)("/scope?q=1"))
    headers = {}
    for k, v in s["headers"]:
        headers.setdefault(k, []).append(v)
    assert s["http_version"] == version
    assert s["scheme"] == scheme
    assert s["client"][0] == "127.0.0.1"
    assert s["client"][1] > 0  # the client's port, via Forwarded
    assert s["query_string"] == "q=1"
    # a client's own forwarding headers are replaced, not trusted
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == [scheme]
    port = gateway.tls_port if url == "tls_url" else gateway.plain_port
    assert headers["x-forwarded-host"] == [f"127.0.0.1:{port}"]
    assert headers["host"] == [f"127.0.0.1:{port}"]
    assert headers["via"] == [f"{version} h3gate"]
    assert headers["forwarded"][0].startswith('for="127.0.0.1:')
    assert len(headers["x-request-id"][0]) == 32
    # hop-by-hop fields, and what Connection names, do not cross (curl sends
    # no Connection over HTTP/2, where X-Hop is an ordinary field)
    assert "connection" not in headers
    if version == "1.1":
        assert "x-hop" not in headers


def test_a_clients_scheme_does_not_make_cleartext_tls(gateway):
    """The scheme passed on is the connection's: an h2c client that writes
    :scheme https (or ftp) is served as http, and X-Forwarded-Proto and
    Forwarded say http. They used to say https, which the app trusts from
    the gateway: a cleartext request taken for one over TLS."""
    for scheme in ("https", "ftp"):
        status, body = h2_raw_request(gateway.plain_port, [(":method", "GET"), (":path", "/scope"), (":scheme", scheme),
                                                       (":authority", "a.example")])
        assert status == "200", (scheme, status, body)
        s = json.loads(body)
        headers = dict(s["headers"])
        assert (s["scheme"], headers["x-forwarded-proto"]) == ("http", "http"), (scheme, s)
        assert ";proto=http;" in headers["forwarded"], headers


def test_alpn_without_a_protocol_of_ours_is_refused(gateway):
    """RFC 7301 3.2: a TLS client whose ALPN offers none of h2 and
    http/1.1 (here h3, which belongs on QUIC) gets a fatal
    no_application_protocol alert, as from nginx and Go; it used to be
    served HTTP/1.1 while it spoke something else (the ALPACA
    cross-protocol attacks). Offering one of ours among others, or no ALPN
    at all, is served."""
    def handshake(alpn):
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if alpn is not None:
            ctx.set_alpn_protocols(alpn)
        with socket.create_connection(("127.0.0.1", gateway.tls_port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as s:
                s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return s.selected_alpn_protocol(), s.recv(100).split(b"\r\n")[0]

    with pytest.raises(ssl.SSLError, match="no application protocol"):
        handshake(["h3"])
    assert handshake(["spdy/3", "http/1.1"]) == ("http/1.1", b"HTTP/1.1 200 OK")
    assert handshake(["http/1.0"]) == ("http/1.0", b"HTTP/1.1 200 OK")
    assert handshake(None) == (None, b"HTTP/1.1 200 OK")


def test_client_request_id_is_kept(gateway):
    s = curl_json("-H", "X-Request-ID: abc-123", gateway.plain_url("/scope"))
    assert ["x-request-id", "abc-123"] in s["headers"]


def test_h2load_and_nghttp_through_the_gateway(gateway):
    r = run(["h2load", "-n", "5000", "-c", "10", "-m", "10", gateway.tls_url("/pid")], timeout=120)
    assert "5000 succeeded, 0 failed" in r.stdout, r.stdout
    r = run(["h2load", "--h1", "-n", "2000", "-c", "10", gateway.tls_url("/pid")], timeout=120)
    assert "2000 succeeded, 0 failed" in r.stdout, r.stdout
    r = run(["nghttp", "-nv", gateway.plain_url("/stream?n=3")], timeout=30)
    assert r.returncode == 0 and ":status: 200" in r.stdout


def test_requests_reach_every_worker_process(gateway, worker):
    pids = {curl_json(gateway.plain_url("/pid"))["pid"] for _ in range(40)}
    assert pids == set(worker.worker_pids())


def test_each_worker_process_gets_one_upstream_connection():
    """connections_per_server: auto (the default) opens one connection per
    process an h3gate-worker announces (two here; it was four), a single
    process gets one, and a number is a floor the announcement raises."""
    keep = ["--timeout-keep-alive", "60"]  # idle connections stay for the count
    two, one = Worker("probe:app", workers=2, args=keep), Worker("probe:app", workers=1, args=keep)
    try:
        for backend, setting, want in ((two, "", 2), (one, "auto", 1), (two, "1", 2), (one, "3", 3)):
            config = BASIC_CONFIG.replace(
                "resolve_interval: 1s", f"resolve_interval: 1s\n    connections_per_server: {setting}"
                if setting else "resolve_interval: 1s")
            g = Gateway(config, servers=f"127.0.0.1:{backend.port}", response_timeout="10s")
            try:
                pids = {curl_json(g.plain_url("/pid"))["pid"] for _ in range(20)}
                assert pids == set(backend.worker_pids()), (setting, pids)
                assert eventually(lambda: tcp_connections(g.pid, backend.port) == want), \
                    (setting, tcp_connections(g.pid, backend.port), g.log()[-2000:])
                time.sleep(0.5)  # and no more open later
                assert tcp_connections(g.pid, backend.port) == want, setting
            finally:
                g.stop()
    finally:
        two.stop()
        one.stop()


def test_trailers_cross_the_gateway(gateway):
    r = run(["nghttp", "-v", "-H", "te: trailers", gateway.plain_url("/trailers")], timeout=30)
    assert "x-checksum: abc123" in r.stdout


def test_http1_pipelining_in_order(gateway):
    reqs = b"".join(f"GET /scope?n={i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(5))
    reqs += b"GET /scope?n=last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.plain_port), timeout=10) as s:
        s.sendall(reqs)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1 200")[0])
              for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert [b["query_string"] for b in bodies] == [f"n={i}" for i in range(5)] + ["n=last"]


@pytest.mark.parametrize("raw", [
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n",
    b"GET / HTTP/1.1\r\n Content-Length: 1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding : chunked\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
], ids=["cl-and-te", "bare-cr", "leading-space", "space-before-colon", "no-host", "te-in-http-1.0", "chunked-twice"])
def test_smuggling_shapes_get_400_and_close(gateway, raw):
    with socket.create_connection(("127.0.0.1", gateway.plain_port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 "), data
    assert b"connection: close" in data.lower()


def test_chunked_upload_and_expect_continue(gateway):
    r = curl("--http1.1", "-H", "Transfer-Encoding: chunked", "-H", "Expect: 100-continue", "-v",
             "--data-binary", "z" * 5000, gateway.plain_url("/upload"))
    assert "HTTP/1.1 100 Continue" in r.stderr
    assert json.loads(r.stdout)["size"] == 5000


def test_oversized_headers_get_431(worker):
    # curl and nghttp refuse to send HTTP/2 header blocks over 64 KiB
    # themselves, so the limit is set lower here.
    cfg = BASIC_CONFIG.replace("log:\n", "limits:\n  max_header_bytes: 16k\nlog:\n")
    g = Gateway(cfg, servers=f"127.0.0.1:{worker.port}", response_timeout="10s")
    try:
        big = "y" * 8000
        for flags in (["--http1.1"], ["--http2-prior-knowledge"]):
            r = curl(*flags, "-H", f"A: {big}", "-H", f"B: {big}", "-H", f"C: {big}",
                     "-w", "%{http_code}", "-o", "/dev/null", g.plain_url("/scope"))
            assert r.stdout == "431", (flags, r.stdout, r.stderr)
        assert curl_json(g.plain_url("/pid"))["pid"] > 0
    finally:
        g.stop()


def test_too_many_header_fields_get_431(worker):
    """limits.max_header_count bounds the number of fields, whatever their
    size, over HTTP/1.1 and HTTP/2; one under the limit passes. Cookie
    crumbs (HTTP/2's one field per cookie) count as the one header they
    are: 60 cookies under a limit of 20 used to be a 431."""
    cfg = BASIC_CONFIG.replace("log:\n", "limits:\n  max_header_count: 20\nlog:\n")
    g = Gateway(cfg, servers=f"127.0.0.1:{worker.port}", response_timeout="10s")
    try:
        for flags in (["--http1.1"], ["--http2-prior-knowledge"]):
            many = [arg for i in range(30) for arg in ("-H", f"X-Field-{i}: v")]
            r = curl(*flags, *many, "-w", "\n%{http_code}", g.plain_url("/pid"))
            assert r.stdout.endswith("\n431") and "too many request header fields" in r.stdout, (flags, r.stdout)
            few = [arg for i in range(10) for arg in ("-H", f"X-Field-{i}: v")]
            r = curl(*flags, *few, "-w", "%{http_code}", "-o", "/dev/null", g.plain_url("/pid"))
            assert r.stdout == "200", (flags, r.stdout, r.stderr)
        head = [(":method", "GET"), (":path", "/scope"), (":scheme", "http"), (":authority", "x")]
        status, body = h2_raw_request(g.plain_port, head + [("cookie", f"c{i}={i}") for i in range(60)])
        assert status == "200", status
        cookies = [v for k, v in json.loads(body)["headers"] if k == "cookie"]
        assert cookies == ["; ".join(f"c{i}={i}" for i in range(60))], cookies
        status, body = h2_raw_request(g.plain_port, head + [(f"x-field-{i}", "v") for i in range(30)])
        assert status == "431" and b"too many request header fields" in body, (status, body)
    finally:
        g.stop()


def test_a_raised_max_header_count_forwards_every_field(worker):
    """Under a max_header_count of 1000, a request with 600 fields reaches
    the app whole. The upstream request used to stop at 512 fields and drop
    the rest without a word."""
    cfg = BASIC_CONFIG.replace("log:\n", "limits:\n  max_header_count: 1000\nlog:\n")
    g = Gateway(cfg, servers=f"127.0.0.1:{worker.port}", response_timeout="10s")
    try:
        fields = b"".join(b"X-Field-%d: v%d\r\n" % (i, i) for i in range(600))
        answer = raw_http(g.plain_port, b"GET /scope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + fields + b"\r\n")
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        seen = [v for k, v in json.loads(body)["headers"] if k.startswith("x-field-")]
        assert seen == [f"v{i}" for i in range(600)], len(seen)
    finally:
        g.stop()


def test_no_route_is_404():
    w = Worker("probe:app")
    cfg = BASIC_CONFIG.replace("path_prefix: /\n", "path_prefix: /api/\n")
    g = Gateway(cfg, servers=f"127.0.0.1:{w.port}", response_timeout="5s")
    try:
        assert curl("-w", "%{http_code}", "-o", "/dev/null", g.plain_url("/other")).stdout == "404"
        assert curl("-w", "%{http_code}", "-o", "/dev/null", g.plain_url("/api/pid")).stdout == "404"
        assert curl_json(g.plain_url("/api/scope"))["path"] == "/api/scope"
    finally:
        g.stop()
        w.stop()


def test_routes_by_host_most_specific_first():
    """Routes by host as nginx picks a server_name: an exact name
    (case-insensitive, its port and a fully qualified name's trailing dot
    aside) beats a wildcard, which beats no host; "*.example.com" matches
    names below example.com at any depth but not example.com itself. Among
    equals the longest prefix wins. An exact host used to tie with a
    wildcard, so that the wildcard's longer prefix took api.example.com's
    requests, and "api.example.com." matched no host route."""
    api, other = Worker("probe:app"), Worker("probe:app")
    cfg = BASIC_CONFIG.split("upstreams:")[0] + ("""upstreams:
  - {{name: api, servers: [{servers}]}}
  - {{name: other, servers: [127.0.0.1:%d]}}
routes:
  - {{path_prefix: /, upstream: other}}
  - {{path_prefix: /pid, upstream: other}}
  - {{host: api.example.com, upstream: api}}
  - {{host: "*.example.com", path_prefix: /pid, upstream: other}}
  - {{host: "*.example.com", path_prefix: /, upstream: api}}
  - {{host: "*.v2.example.com", path_prefix: /, upstream: other}}
""" % other.port)
    g = Gateway(cfg, servers=f"127.0.0.1:{api.port}", response_timeout="5s")
    pids = {"api": curl_json(api.url("/pid"))["pid"], "other": curl_json(other.url("/pid"))["pid"]}

    def served_by(host, path="/pid"):
        answer = raw_http(g.plain_port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        pid = json.loads(answer.split(b"\r\n\r\n", 1)[1])["pid"]
        return next(name for name, p in pids.items() if p == pid)

    try:
        assert served_by("api.example.com") == "api"  # beats the wildcard's and no host's /pid
        assert served_by("API.Example.COM:8080") == "api"
        assert served_by("api.example.com.") == "api"  # used to miss: the trailing dot
        assert served_by("www.example.com") == "other"  # wildcard, longer prefix
        assert served_by("a.b.example.com", "/pid?x=1") == "other"
        assert served_by("x.example.com.", "/scope") == "api"  # wildcard, "/" (/scope tells its pid too)
        assert served_by("x.v2.example.com", "/scope") == "other"  # the longer wildcard
        assert served_by("example.com") == "other"  # not below example.com: no host route
        assert served_by("unknown.test") == "other"
    finally:
        g.stop()
        api.stop()
        other.stop()


def expected_sha(size, chunk=65536):
    block = bytes(range(256)) * (chunk // 256 + 1)
    h = hashlib.sha256()
    sent = 0
    while sent < size:
        n = min(chunk, size - sent)
        h.update(block[:n])
        sent += n
    return h.hexdigest()


@pytest.mark.parametrize("flags", [["-k", "--http2"], ["-k", "--http1.1"]], ids=["h2", "h1"])
def test_100mb_download_and_upload_in_bounded_gateway_memory(gateway, flags):
    before = gateway.peak_rss_kb()
    r = run(["sh", "-c", f"curl -sS {' '.join(flags)} '{gateway.tls_url(f'/download?size={SIZE}')}'"
             " | sha256sum"], timeout=300)
    assert r.stdout.split()[0] == expected_sha(SIZE)
    with tempfile.NamedTemporaryFile() as f:
        block = os.urandom(1 << 20)
        h = hashlib.sha256()
        for _ in range(SIZE >> 20):
            f.write(block)
            h.update(block)
        f.flush()
        info = curl_json(*flags, "--data-binary", f"@{f.name}", gateway.tls_url("/upload"),
                         timeout=300)
    assert info["size"] == SIZE and info["sha256"] == h.hexdigest()
    growth = gateway.peak_rss_kb() - before
    assert growth < 48 * 1024, f"gateway peak RSS grew {growth} KiB"


@pytest.mark.parametrize("flags", [["-k", "--http2"], ["-k", "--http1.1"]], ids=["h2", "h1"])
def test_slow_tls_client_download_in_bounded_gateway_memory(gateway, flags):
    """A client reading at 20 MB/s: the gateway encrypts only as fast as the
    socket takes its records, and the backend waits instead of the
    gateway's memory filling up."""
    size = 40 * 1000 * 1000
    before = gateway.peak_rss_kb()
    r = run(["sh", "-c", f"curl -sS --limit-rate 20M {' '.join(flags)} "
             f"'{gateway.tls_url(f'/download?size={size}')}' | sha256sum"], timeout=120)
    assert r.stdout.split()[0] == expected_sha(size)
    growth = gateway.peak_rss_kb() - before
    assert growth < 16 * 1024, f"gateway peak RSS grew {growth} KiB"


# Faulty-backend tests answer several requests from one server: passive
# health must not eject it between them.
NO_EJECT_CONFIG = BASIC_CONFIG.replace("    resolve_interval: 1s\n",
                                       "    resolve_interval: 1s\n    max_fails: 0\n")


def faulty(mode):
    port = free_port()
    p = Process([PYTHON, APPS / "faulty_h2.py", str(port), mode], name=f"faulty-{mode}")
    assert p.wait_log("faulty backend ready")
    return p, port


@pytest.mark.parametrize("mode,status", [("close", "502"), ("hang", "504"), ("refuse", "502")])
def test_faulty_backends_get_502_or_504_never_a_hang(mode, status):
    p, port = faulty(mode)
    g = Gateway(NO_EJECT_CONFIG, servers=f"127.0.0.1:{port}", response_timeout="1s")
    try:
        for flags in (["--http1.1"], ["--http2-prior-knowledge"]):
            r = curl(*flags, "-w", "%{http_code}", "-o", "/dev/null", g.plain_url("/x"), timeout=20)
            assert r.stdout == status, (flags, r.stdout, r.stderr, g.log()[-2000:])
    finally:
        g.stop()
        p.stop()


@pytest.mark.parametrize("mode", ["reset-mid", "die-mid"])
def test_backend_failing_mid_response_breaks_the_response(mode):
    p, port = faulty(mode)
    g = Gateway(NO_EJECT_CONFIG, servers=f"127.0.0.1:{port}", response_timeout="5s")
    try:
        r = curl("--http2-prior-knowledge", g.plain_url("/x"), timeout=20)
        assert r.returncode not in (0, 28), r  # an error, not a clean end and not a hang
        r = curl("--http1.1", g.plain_url("/x"), timeout=20)
        assert r.returncode not in (0, 28), r
    finally:
        g.stop()
        p.stop()


def test_a_backend_head_is_held_to_max_header_bytes():
    """A backend's response head counts against limits.max_header_bytes as
    the clients' do (as nginx's proxy_buffer_size bounds it): over it the
    client gets a 502 that says so, not the head. Under a raised limit a
    100 KB head reaches HTTP/2 clients too (nghttp2 sends no block over
    64 KiB unless told). Before, there was no limit, and an HTTP/2
    client's stream hung on a head over 64 KiB."""
    p, port = faulty("big-head")
    try:
        for limit, kb, status in (("64k", 60, "200"), ("64k", 100, "502"), ("200k", 100, "200")):
            g = Gateway(NO_EJECT_CONFIG + f"limits: {{{{max_header_bytes: {limit}}}}}\n",
                        servers=f"127.0.0.1:{port}", response_timeout="5s")
            try:
                for flags in (["--http1.1"], ["--http2-prior-knowledge"]):
                    r = curl(*flags, "-D", "-", "-o", "/dev/null", "-w", "%{http_code}", g.plain_url(f"/{kb}"),
                             timeout=10)
                    assert r.stdout.endswith(status), (limit, kb, flags, r.stdout[-300:], r.stderr)
                    assert (r.stdout.count("x-big-") == kb) == (status == "200"), (limit, kb, flags)
                if status == "502":
                    assert "sent response header fields over limits.max_header_bytes" in g.log(), g.log()[-2000:]
            finally:
                g.stop()
        # Many small fields (300 Set-Cookie-like lines) all reach HTTP/2 and
        # HTTP/3 clients; the gateway used to send the first 256.
        g = Gateway(NO_EJECT_CONFIG, servers=f"127.0.0.1:{port}", response_timeout="5s")
        try:
            for flags in (["--http1.1"], ["--http2-prior-knowledge"]):
                r = curl(*flags, "-D", "-", "-o", "/dev/null", g.plain_url("/300x10"), timeout=10)
                assert r.stdout.count("x-big-") == 300, (flags, r.stdout.count("x-big-"))
            r = run(["gtlsclient", "--exit-on-all-streams-close", "--no-quic-dump", "--no-http-dump", "--timeout=10s",
                     "127.0.0.1", str(g.tls_port), f"https://127.0.0.1:{g.tls_port}/300x10"], timeout=30)
            assert (r.stdout + r.stderr).count("x-big-") == 300, (r.stdout + r.stderr).count("x-big-")
        finally:
            g.stop()
    finally:
        p.stop()


def test_an_unreachable_lone_backend_is_502_each_time_and_503_once_its_check_fails():
    """A lone server is never ejected by passive health (nginx ignores
    max_fails for it): every request tries it, and one it refuses is a
    502. Ejected, it made every request a 503 for fail_timeout, though a
    worker pool restarting is back within a second. "No healthy server"
    (503) is what an active health check says."""
    port = free_port()  # nothing listens there
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{port}", response_timeout="5s")
    try:
        for _ in range(3):
            r = curl("-w", "%{http_code}", "-o", "/dev/null", g.plain_url("/x"), timeout=20)
            assert r.stdout == "502", (r.stdout, g.log()[-2000:])
        assert "ejected" not in g.log(), g.log()[-2000:]
    finally:
        g.stop()
    checked = BASIC_CONFIG.replace(
        "    resolve_interval: 1s\n",
        "    resolve_interval: 1s\n"
        "    health_check: {{path: /health, interval: 200ms, timeout: 1s, fails: 1, passes: 1}}\n")
    g = Gateway(checked, servers=f"127.0.0.1:{port}", response_timeout="5s")
    try:
        assert g.wait_log(f"server 127.0.0.1:{port} fails its health check", timeout=10), g.log()[-2000:]
        r = curl("-w", "%{http_code}", "-o", "/dev/null", g.plain_url("/x"), timeout=20)
        assert r.stdout == "503", (r.stdout, g.log()[-2000:])
    finally:
        g.stop()


def test_a_killed_worker_process_loses_no_get_and_ejects_nothing():
    """kill -9 of one process of a two-process worker pool, the upstream's
    only server, under GET load: the requests on its connection are sent
    again over the other process's connection, and the server stays in
    rotation. It used to be ejected for fail_timeout, and every request
    in those 10 s got a 503 while the other process and the one that
    replaced it sat idle (23,118 of 30,000)."""
    w = Worker("probe:app", workers=2)
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{w.port}", response_timeout="10s")
    try:
        load = subprocess.Popen(["h2load", "-n", "20000", "-c", "8", "-m", "10",
                                 g.plain_url("/sleep?s=0.01")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1)
        victim = sorted(w.worker_pids())[0]
        os.kill(victim, signal.SIGKILL)
        out, _ = load.communicate(timeout=300)
        assert "20000 succeeded, 0 failed" in out, out + g.log()[-2000:]
        broke = ("connection closed by the backend", "Connection reset by peer")
        assert any(b in g.log() for b in broke), g.log()[-2000:]  # it did break
        assert "ejected" not in g.log(), g.log()[-2000:]
    finally:
        g.stop()
        w.stop()


def test_a_refusing_server_rests_for_fail_timeout_and_is_tried_again(worker):
    """Passive health: a server that refuses connections is ejected for
    upstreams.fail_timeout (its requests retried on the other server, so
    none fails), and tried again once that has passed."""
    dead = free_port()  # nothing listens there
    config = BASIC_CONFIG.replace("    resolve_interval: 1s\n",
                                  "    resolve_interval: 1s\n    balance: round_robin\n"
                                  "    fail_timeout: 1s\n")
    g = Gateway(config, servers=f"127.0.0.1:{dead}, 127.0.0.1:{worker.port}", response_timeout="5s")
    ejected = f"server 127.0.0.1:{dead} ejected for 1.0s"
    try:
        deadline = time.monotonic() + 20
        while g.log().count(ejected) < 2 and time.monotonic() < deadline:  # bounded: 20 s
            r = curl("-w", "%{http_code}", "-o", "/dev/null", g.plain_url("/pid"))
            assert r.stdout == "200", (r.stdout, g.log()[-2000:])
            time.sleep(0.05)
        assert g.log().count(ejected) >= 2, g.log()[-2000:]
        first, second = [log_time(line) for line in g.log().splitlines() if ejected in line][:2]
        assert (second - first).total_seconds() >= 0.95, (first, second)  # not tried before fail_timeout
    finally:
        g.stop()


def test_backend_restarted_during_get_load_loses_nothing():
    a = Worker("probe:app", workers=1)
    b = Worker("probe:app", workers=1)
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{a.port}, 127.0.0.1:{b.port}",
                response_timeout="10s")
    try:
        load = subprocess.Popen(["h2load", "-n", "6000", "-c", "4", "-m", "4",
                                 g.plain_url("/sleep?s=0.002")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        a.stop()                      # SIGTERM: GOAWAY, in-flight finish
        a2 = Worker("probe:app", workers=1, port=a.port)
        out, _ = load.communicate(timeout=120)
        assert "6000 succeeded, 0 failed" in out, out + g.log()[-3000:]
        a2.stop()
    finally:
        g.stop()
        b.stop()


def uploads_during_rolling_restarts(w, g, body, *h2load_args, restarts, gap):
    """h2load POSTs body to g's /upload while w gets `restarts` SIGHUPs,
    gap seconds apart; returns h2load's output. A count of requests, not a
    duration: a duration would leave its last ones to disconnect."""
    load = subprocess.Popen(["h2load", *h2load_args, "-d", body, g.plain_url("/upload")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(restarts):
        time.sleep(gap)
        w.signal(signal.SIGHUP)
    out, _ = load.communicate(timeout=300)
    return out


def test_a_worker_rolling_restart_runs_no_request_twice(tmp_path):
    """Worker SIGHUPs (rolling restarts) under POST load through the
    gateway. A retiring worker process's GOAWAY names the last stream its
    app saw; the gateway retries the later ones elsewhere. A stream read
    between the GOAWAY's queueing and its sending used to reach the app
    and then be closed under it (the app saw http.disconnect mid-body)
    while the gateway ran it again on another process: a POST twice."""
    w = Worker("probe:app", workers=2)
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{w.port}", response_timeout="10s")
    body = tmp_path / "body"
    body.write_bytes(os.urandom(20000))
    try:
        first = set(w.worker_pids())
        out = uploads_during_rolling_restarts(w, g, body, "-n", "40000", "-c", "8", "-m", "10",
                                              restarts=3, gap=0.5)
        assert "40000 succeeded, 0 failed" in out, out
        assert not first & set(w.worker_pids())  # every process was replaced
        assert "exception in ASGI application" not in w.log(), w.log()[-3000:]
    finally:
        g.stop()
        w.stop()


def test_uploads_survive_a_worker_rolling_restart(tmp_path):
    """Worker SIGHUPs under 5 MB uploads through the gateway: none fails.
    The gateway keeps 64 KiB of a body for a retry, and a stream its
    worker refused after more had gone could only get a 502 (9 of 600
    in one run). A retiring worker process now says GOAWAY in two steps (a
    notice, then, once its PING comes back, the last stream), and refuses
    none that the gateway had sent it."""
    w = Worker("probe:app", workers=2)
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{w.port}", response_timeout="10s")
    body = tmp_path / "body"
    body.write_bytes(os.urandom(5 << 20))
    try:
        out = uploads_during_rolling_restarts(w, g, body, "-n", "400", "-c", "16", "-m", "4",
                                              restarts=5, gap=0.4)
        assert "400 succeeded, 0 failed" in out, out + g.log()[-2000:]
        assert w.log_count("stopping (SIGTERM)") >= 2, w.log()[-3000:]  # both processes were replaced
    finally:
        g.stop()
        w.stop()


def test_a_lone_worker_pool_restarted_under_load_loses_nothing():
    """The upstream's only server, a worker pool, stopped and started again
    (systemctl restart) under GET load: no request fails. Its connections
    are refused for a moment; the gateway tries again after a turn-around
    of a second (HAProxy's), and its requests wait for that. Each failed
    at once before (7,340 of 40,000), or, with the server ejected, got a
    503 for fail_timeout (10 s) after the pool was back. The gap here is a
    graceful stop (up to a second) and a start, slower under the
    sanitizers: retries 4 waits up to 4 s."""
    w = Worker("probe:app", workers=2)
    port = w.port
    config = BASIC_CONFIG.replace("    resolve_interval: 1s\n", "    resolve_interval: 1s\n    retries: 4\n")
    g = Gateway(config, servers=f"127.0.0.1:{port}", response_timeout="10s")
    w2 = None
    try:
        load = subprocess.Popen(["h2load", "-n", "20000", "-c", "8", "-m", "10",
                                 g.plain_url("/sleep?s=0.01")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1)
        assert w.stop() == 0
        w2 = Worker("probe:app", workers=2, port=port)
        out, _ = load.communicate(timeout=300)
        assert "20000 succeeded, 0 failed" in out, out + g.log()[-2000:]
        assert "connect failed" in g.log(), g.log()[-2000:]  # the gap was there
    finally:
        g.stop()
        if w2:
            w2.stop()


def test_sighup_reload_under_load():
    w = Worker("probe:app", workers=2)
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{w.port}", response_timeout="10s")
    try:
        load = subprocess.Popen(["h2load", "--h1", "-n", "3000", "-c", "4",
                                 g.tls_url("/sleep?s=0.002")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        g.write_config(BASIC_CONFIG.replace("level: info", "level: debug"),
                       servers=f"127.0.0.1:{w.port}", response_timeout="10s")
        g.signal(signal.SIGHUP)
        assert g.wait_log("configuration reloaded")
        out, _ = load.communicate(timeout=120)
        assert "3000 succeeded, 0 failed" in out, out + g.log()[-3000:]
        assert curl_json("-k", g.tls_url("/pid"))["pid"] in w.worker_pids()
    finally:
        g.stop()
        w.stop()


def test_hypercorn_as_backend():
    port = free_port()
    h = Process([PYTHON, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "probe:app"],
                cwd=APPS, name="hypercorn")
    try:
        assert wait_port(port)
        g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{port}", response_timeout="10s")
        try:
            for flags in (["-k", "--http2"], ["-k", "--http1.1"]):
                s = curl_json(*flags, "-d", "abc", g.tls_url("/scope"))
                assert s["body"]["size"] == 3 and s["method"] == "POST"
            r = run(["h2load", "-n", "500", "-c", "4", "-m", "4", g.tls_url("/pid")], timeout=60)
            assert "500 succeeded, 0 failed" in r.stdout, r.stdout[r.stdout.find("requests:"):][:200]
            # It does not say how many processes share its port: the
            # default opens four connections, for any that might.
            assert eventually(lambda: tcp_connections(g.pid, port) == 4), tcp_connections(g.pid, port)
        finally:
            g.stop()
    finally:
        h.stop()


def test_graceful_stop_finishes_in_flight_requests(worker):
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="10s")
    load = subprocess.Popen(["h2load", "-n", "20", "-c", "2", "-m", "10",
                             g.plain_url("/sleep?s=1")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.5)
    g.signal(signal.SIGTERM)
    out, _ = load.communicate(timeout=60)
    assert "20 succeeded, 0 failed" in out, out
    assert g.proc.wait(timeout=30) == 0


def test_unix_socket_upstream(tmp_path):
    sock = tmp_path / "backend.sock"
    w = Worker("probe:app", args=["--uds", str(sock)])
    g = Gateway(BASIC_CONFIG, servers=f"unix:{sock}", response_timeout="10s")
    try:
        for flags in (["-k", "--http2"], ["-k", "--http1.1"]):
            s = curl_json(*flags, g.tls_url("/scope"))
            assert s["server"][0] == str(sock) and s["http_version"] in ("2", "1.1")
    finally:
        g.stop()
        w.stop()


def test_a_stalled_response_meets_the_idle_timeout_and_a_trickle_does_not(worker):
    """timeouts.idle bounds the silence inside a response, not its length: a
    body that trickles a chunk every 0.2 s for 1.6 s passes a 500 ms idle
    timeout whole, and one that stops after its first chunk is cut well
    before the app would have finished, over HTTP/1.1 and HTTP/2 alike."""
    config = BASIC_CONFIG.replace("  response_header: {response_timeout}\n",
                                  "  response_header: {response_timeout}\n  idle: 500ms\n")
    g = Gateway(config, servers=f"127.0.0.1:{worker.port}", response_timeout="5s")
    try:
        for flags in (["--http1.1"], ["--http2-prior-knowledge"]):
            r = curl(*flags, g.plain_url("/stream?n=8&delay=0.2"), timeout=20)
            assert r.returncode == 0, (flags, r.returncode, r.stderr)
            assert r.stdout == "".join(f"chunk {i}\n" for i in range(8)), (flags, r.stdout)

            started = time.monotonic()
            r = curl(*flags, g.plain_url("/stream?n=2&delay=10"), timeout=30)
            took = time.monotonic() - started
            assert r.returncode not in (0, 28), (flags, r.returncode, r.stderr)  # cut, not ended
            assert r.stdout == "chunk 0\n", (flags, r.stdout)
            assert took < 8, (flags, took)  # the gateway gave up, the app did not finish
        assert g.log().count("upstream idle timeout") == 2, g.log()[-2000:]
    finally:
        g.stop()


def test_response_header_waits_for_the_request_to_end_and_a_stalled_body_gets_408(worker, tmp_path):
    """timeouts.response_header starts once the request has ended, as
    nginx's proxy_read_timeout and Envoy's route timeout do: a 2.5 s upload
    passes a 1 s response_header whole, over HTTP/1.1 and HTTP/2 (it got 504
    at 1 s). Until its end a body must not stall for timeouts.idle: one the
    client stops sending gets 408, one the backend stops reading 504. A
    backend slow to answer a whole request still gets its 504."""
    config = BASIC_CONFIG.replace("  response_header: {response_timeout}\n",
                                  "  response_header: {response_timeout}\n  idle: 1500ms\n")
    g = Gateway(config, servers=f"127.0.0.1:{worker.port}", response_timeout="1s")
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(1_000_000))
    try:
        for flags in (["--http1.1"], ["--http2-prior-knowledge"]):
            r = curl(*flags, "--limit-rate", "400k", "--data-binary", f"@{body}", g.plain_url("/upload"))
            assert r.returncode == 0 and json.loads(r.stdout)["size"] == 1_000_000, (flags, r.stdout[:300])
        with socket.create_connection(("127.0.0.1", g.plain_port), timeout=10) as s:
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"the request body stalled" in answer, answer
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(8_000_000))  # past every window and buffer on the way
        r = curl("--http1.1", "--data-binary", f"@{big}", "-w", "%{http_code}", g.plain_url("/sleep?s=3"))
        assert r.stdout.endswith("504") and "did not read the request body" in r.stdout, r.stdout[-300:]
        r = curl("-w", "%{http_code}", g.plain_url("/sleep?s=3"))
        assert r.stdout.endswith("504") and "upstream response header timeout" in r.stdout, r.stdout
    finally:
        g.stop()


@pytest.mark.parametrize("forwarded_header", [True, False])
def test_a_trusted_proxys_forwarding_fields_are_extended(worker, forwarded_header):
    """From an address in forwarding.trusted_proxies, X-Forwarded-For,
    Forwarded and Via are appended to, and X-Forwarded-Proto and -Host are
    the proxy's; with forwarded_header off, its Forwarded passes as it is.
    The app sees the proxy's client."""
    config = BASIC_CONFIG + ("forwarding: {{trusted_proxies: [127.0.0.1/32], forwarded_header: %s}}\n"
                             % ("true" if forwarded_header else "false"))
    g = Gateway(config, servers=f"127.0.0.1:{worker.port}", response_timeout="5s")
    try:
        s = curl_json("--http1.1", "-H", "X-Forwarded-For: 203.0.113.7",
                      "-H", "X-Forwarded-Proto: https", "-H", "X-Forwarded-Host: app.example",
                      "-H", 'Forwarded: for="203.0.113.7:4711";proto=https;host=app.example',
                      "-H", "Via: 2 edge", g.plain_url("/scope"))
        headers = {}
        for k, v in s["headers"]:
            headers.setdefault(k, []).append(v)
        assert headers["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
        assert headers["x-forwarded-proto"] == ["https"]
        assert headers["x-forwarded-host"] == ["app.example"]
        assert headers["via"] == ["2 edge, 1.1 h3gate"]
        proxy_said = 'for="203.0.113.7:4711";proto=https;host=app.example'
        if forwarded_header:
            assert headers["forwarded"][0].startswith(proxy_said + ', for="127.0.0.1:'), headers
            assert headers["forwarded"][0].endswith(f';proto=http;host="127.0.0.1:{g.plain_port}"')
        else:
            assert headers["forwarded"] == [proxy_said]
        assert s["client"][0] == "203.0.113.7", s["client"]  # the proxy's client, end to end
        assert s["http_version"] == "2", s["http_version"]  # and what it spoke to the proxy
        # a trusted proxy's :scheme stands (one ending TLS and speaking h2c to us)
        status, body = h2_raw_request(g.plain_port, [(":method", "GET"), (":path", "/scope"), (":scheme", "https"),
                                                 (":authority", "app.example")])
        assert status == "200" and dict(json.loads(body)["headers"])["x-forwarded-proto"] == "https", body
    finally:
        g.stop()


def test_active_health_checks_take_a_server_out_and_back():
    """upstreams.health_check: a server whose health path answers 503 twice
    is taken out while it still accepts connections (passive health is off
    here, so only the check can tell), and comes back after two passes."""
    w1, w2 = Worker("probe:app"), Worker("probe:app")
    config = BASIC_CONFIG.replace(
        "    resolve_interval: 1s\n",
        "    resolve_interval: 1s\n    max_fails: 0\n    balance: round_robin\n"
        "    health_check: {{path: /health, interval: 200ms, timeout: 1s, fails: 2, passes: 2}}\n")
    g = Gateway(config, servers=f"127.0.0.1:{w1.port}, 127.0.0.1:{w2.port}", response_timeout="5s")
    pid1, pid2 = curl_json(w1.url("/pid"))["pid"], curl_json(w2.url("/pid"))["pid"]

    def pids_seen(n=12):
        return {curl_json(g.plain_url("/pid"))["pid"] for _ in range(n)}

    try:
        assert pids_seen() == {pid1, pid2}
        assert curl_json(w2.url("/health/set?status=503"))["status"] == 503
        assert g.wait_log(f"server 127.0.0.1:{w2.port} fails its health check (status 503): taken out",
                          timeout=10), g.log()[-2000:]
        assert pids_seen() == {pid1}  # every request answered, none by the server taken out
        assert curl_json(w2.url("/health/set?status=200"))["status"] == 200
        assert g.wait_log(f"server 127.0.0.1:{w2.port} passes its health check again", timeout=10), \
            g.log()[-2000:]
        assert pids_seen() == {pid1, pid2}
    finally:
        g.stop()
        w1.stop()
        w2.stop()


def test_body_limit_413_and_slow_request_head_408(worker, tmp_path):
    """limits.max_body_size answers 413 (with or without a length, HTTP/1.1
    and HTTP/2) and lets a body at the limit through; timeouts.client_header
    answers a request head that stalls with 408, and closes a connection
    that never starts one."""
    config = (BASIC_CONFIG.replace("  response_header: {response_timeout}\n",
                                   "  response_header: {response_timeout}\n  client_header: 300ms\n")
              + "limits: {{max_body_size: 1k}}\n")
    g = Gateway(config, servers=f"127.0.0.1:{worker.port}", response_timeout="5s")
    try:
        for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
            r = curl("--http1.1", *extra, "-w", "%{http_code}", "-o", "/dev/null",
                     "--data-binary", "x" * 1025, g.plain_url("/upload"))
            assert r.stdout == "413", (extra, r.stdout, r.stderr)
        # Over HTTP/2 the 413 ends the stream before the upload does, and the
        # gateway asks the client to stop (RST_STREAM NO_ERROR, RFC 9113
        # 8.1). curl 7.88 fails such a transfer (exit 92) when the reset
        # overtakes its upload loop; nghttp shows the response it got.
        big = tmp_path / "big"
        big.write_bytes(b"x" * 1025)
        r = run(["nghttp", "-nv", "-d", str(big), g.plain_url("/upload")], timeout=30)
        assert ":status: 413" in r.stdout, r.stdout[-2000:]
        for flags in (["--http1.1"], ["--http2-prior-knowledge"]):
            s = curl_json(*flags, "--data-binary", "x" * 1024, g.plain_url("/upload"))
            assert s["size"] == 1024, s

        with socket.create_connection(("127.0.0.1", g.plain_port), timeout=10) as s:
            s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n")  # and no blank line
            started = time.monotonic()
            answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", g.plain_port), timeout=10) as s:
            assert s.recv(4096) == b""  # nothing sent, nothing answered: closed
    finally:
        g.stop()


V6_CONFIG = """
listen:
  - address: "[::1]:{tls_port}"
    tls: {{certificate: cert.pem, key: key.pem}}
  - address: "[::1]:{plain_port}"
upstreams:
  - name: app
    servers: ["[::1]:{worker_port}"]
routes:
  - path_prefix: /
    upstream: app
"""


def test_ipv6_from_client_to_app():
    """Over IPv6 loopback end to end: TLS (HTTP/1.1, HTTP/2), h2c and
    HTTP/3 to the gateway, HTTP/2 to a worker on [::1]. The app sees the
    client's address, the forwarding fields name it as RFC 7239 writes
    IPv6 (bracketed and quoted), and Alt-Svc is sent. h3load used to put
    "::1" in SNI, which RFC 6066 forbids and GnuTLS servers refuse."""
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
    v6_port = free_port()
    w = Worker("probe:app", args=["--bind", f"[::1]:{v6_port}"])  # and 127.0.0.1
    try:
        g = Gateway(V6_CONFIG, worker_port=v6_port)
        try:
            tls, plain = f"https://[::1]:{g.tls_port}/scope", f"http://[::1]:{g.plain_port}/scope"
            for args, url, version, scheme, port in ((["-k", "--http1.1"], tls, "1.1", "https", g.tls_port),
                                                     (["-k", "--http2"], tls, "2", "https", g.tls_port),
                                                     (["--http2-prior-knowledge"], plain, "2", "http", g.plain_port)):
                s = curl_json("-g", *args, url)
                client_port = s["client"][1]
                headers = dict((k, v) for k, v in s["headers"])
                assert (s["http_version"], s["scheme"], s["client"][0]) == (version, scheme, "::1"), s
                assert headers["host"] == f"[::1]:{port}" and headers["x-forwarded-for"] == "::1", headers
                assert headers["forwarded"] == f'for="[::1]:{client_port}";proto={scheme};host="[::1]:{port}"', headers
            assert f'alt-svc: h3=":{g.tls_port}"' in curl("-gsk", "-D", "-", "-o", "/dev/null", tls).stdout
            r = run([BIN / "h3load", "-n", "3", f"https://[::1]:{g.tls_port}/scope"], timeout=30)
            assert "3 succeeded" in r.stdout, r.stdout + r.stderr
        finally:
            g.stop()
    finally:
        w.stop()


STRIP_CONFIG = BASIC_CONFIG.replace("""routes:
  - path_prefix: /
    upstream: app
""", """routes:
  - path_prefix: /api/
    upstream: app
    strip_prefix: true
  - path_prefix: /
    upstream: app
""")


def test_a_route_can_strip_its_prefix(worker):
    """routes[].strip_prefix (nginx's proxy_pass with a URI, Caddy's
    handle_path): the app mounted at /api/ gets the path below it, and
    X-Forwarded-Prefix, which h3gate-worker takes from a trusted peer as the
    app's root_path (so url_for builds /api/... links). A client's own
    X-Forwarded-Prefix is dropped, as the other forwarding fields are; a
    peer the worker does not trust sets no root_path."""
    g = Gateway(STRIP_CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="5s")
    untrusting = Worker("probe:app", args=["--forwarded-allow-ips", "10.9.9.9"])
    try:
        for flags in (["--http1.1"], ["--http2-prior-knowledge"]):
            s = curl_json(*flags, "-H", "X-Forwarded-Prefix: /evil", g.plain_url("/api/scope?x=1"))
            prefixes = [v for k, v in s["headers"] if k == "x-forwarded-prefix"]
            assert (s["path"], s["raw_path"], s["query_string"], s["root_path"], prefixes) == \
                ("/scope", "/scope", "x=1", "/api", ["/api"]), s
            s = curl_json(*flags, "-H", "X-Forwarded-Prefix: /evil", g.plain_url("/scope"))  # no stripping here
            assert s["root_path"] == "" and "x-forwarded-prefix" not in dict(s["headers"]), s
            r = curl(*flags, g.plain_url("/api/"))  # the app's own root
            assert json.loads(r.stdout)["path"] == "/", r.stdout
        s = curl_json("-H", "X-Forwarded-Prefix: /api", untrusting.url("/scope"))
        assert s["root_path"] == "", s
        s = curl_json("-H", "X-Forwarded-Prefix: /api", worker.url("/scope"))  # 127.0.0.1 is trusted
        assert s["root_path"] == "/api", s
    finally:
        g.stop()
        untrusting.stop()


REDIRECT_CONFIG = LISTEN_TLS_AND_CLEARTEXT + """    redirect_https: {tls_port}
  - address: 127.0.0.1:{third_port}
    redirect_https: 443
upstreams:
  - name: app
    servers: [{servers}]
routes:
  - path_prefix: /
    upstream: app
"""


def test_a_cleartext_listener_redirects_to_https(worker):
    """listen.redirect_https: every request on that cleartext port, HTTP/1.1
    or h2c, gets a 308 to the same host and target over https on the given
    port (none written for 443), so that a client following it keeps its
    method and body; ACME HTTP-01 challenges still reach their route."""
    third = free_port()
    g = Gateway(REDIRECT_CONFIG, servers=f"127.0.0.1:{worker.port}", third_port=third)
    try:
        for flags in (["--http1.1"], ["--http2-prior-knowledge"]):
            r = curl(*flags, "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", g.plain_url("/scope?a=1&b=/x"))
            assert r.stdout == f"308 https://127.0.0.1:{g.tls_port}/scope?a=1&b=/x", (flags, r.stdout, r.stderr)
            s = curl_json(*flags, "-k", "-L", g.plain_url("/scope"))
            assert (s["method"], s["scheme"]) == ("GET", "https"), s
        # Over HTTP/1.1 (curl 7.88 fails an h2c upload whose stream the
        # redirect ends first: see test_body_limit_413_and_slow_request_head_408)
        s = curl_json("--http1.1", "-k", "-L", "--data-binary", "abc", g.plain_url("/scope"))
        assert (s["method"], s["body"]["size"], s["scheme"]) == ("POST", 3, "https"), s
        r = curl("-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H", "Host: Example.COM:8080",
                 f"http://127.0.0.1:{third}/a/b")
        assert r.stdout == "308 https://example.com/a/b", r.stdout
        long_path = "/" + "a" * 20000  # longer than any fixed buffer; max_header_bytes allows it
        r = curl("-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", g.plain_url(long_path))
        assert r.stdout == f"308 https://127.0.0.1:{g.tls_port}{long_path}", r.stdout[:200]
        r = curl("-w", "\n%{http_code}", g.plain_url("/.well-known/acme-challenge/token1"))
        body, status = r.stdout.rsplit("\n", 1)
        assert status == "404" and json.loads(body)["path"] == "/.well-known/acme-challenge/token1", r.stdout
    finally:
        g.stop()


ROUTE_LIMITS_CONFIG = LISTEN_TLS_AND_CLEARTEXT + """limits: {{max_body_size: 1k}}
timeouts: {{response_header: 1s, idle: 1s}}
upstreams:
  - name: app
    servers: [{servers}]
routes:
  - path_prefix: /upload
    upstream: app
    limits: {{max_body_size: 64k}}
  - path_prefix: /stream
    upstream: app
    timeouts: {{idle: 10s}}
  - host: idle.example
    path_prefix: /stream
    upstream: app
  - path_prefix: /sleep
    upstream: app
  - path_prefix: /scope
    upstream: app
  - host: slow.example
    path_prefix: /sleep
    upstream: app
    timeouts: {{response_header: 10s}}
"""


def test_a_route_sets_its_own_body_limit_and_timeouts(worker, tmp_path):
    """A route's limits and timeouts (an upload endpoint taking larger
    bodies, a slow one more time) override the top level's for its
    requests only; what it leaves out is the top level's. The Content-Length
    is held against the route's limit, so a too-large upload gets its 413
    before any of it is sent, and an Expect: 100-continue request that is
    refused (413, or 404 with no route) never gets a 100 Continue: the
    gateway used to send it before routing, and the client its body."""
    g = Gateway(ROUTE_LIMITS_CONFIG, servers=f"127.0.0.1:{worker.port}")
    try:
        def status(*args):
            r = curl("-o", "/dev/null", "-w", "%{http_code}", *args)
            return r.stdout if r.returncode == 0 else (r.stdout, r.stderr)

        def h2_upload_status(path, size):
            # nghttp, not curl 7.88: see test_body_limit_413_and_slow_request_head_408
            body = tmp_path / f"body{size}"
            body.write_bytes(b"x" * size)
            out = run(["nghttp", "-nv", "-d", str(body), g.plain_url(path)], timeout=30).stdout
            return re.findall(r":status: (\d+)", out)

        for flags in (["--http1.1"], ["--http2-prior-knowledge"]):
            assert curl_json(*flags, "--data-binary", "x" * 65536, g.plain_url("/upload"))["size"] == 65536
            assert status(*flags, "--data-binary", "x" * 1024, g.plain_url("/scope")) == "200"
        assert status("--http1.1", "-H", "Expect:", "--data-binary", "x" * 65537, g.plain_url("/upload")) == "413"
        assert status("--http1.1", "-H", "Expect:", "--data-binary", "x" * 1025, g.plain_url("/scope")) == "413"
        assert h2_upload_status("/upload", 65537) == ["413"]
        assert h2_upload_status("/scope", 1025) == ["413"]
        for path, size, answer in (("/upload", 65536, "1 2xx"), ("/upload", 65537, "1 4xx"), ("/scope", 1025, "1 4xx")):
            r = run([BIN / "h3load", "-n", "1", "--upload-size", str(size), f"https://127.0.0.1:{g.tls_port}{path}"],
                    timeout=30)
            assert answer in r.stdout, (path, size, r.stdout)  # HTTP/3 too
        for flags in (["--http1.1"], ["--http2-prior-knowledge"]):
            # the route's 10 s for the slow host, the top level's 1 s elsewhere
            assert status(*flags, "-H", "Host: slow.example", g.plain_url("/sleep?s=1.5")) == "200"
            assert status(*flags, g.plain_url("/sleep?s=1.5")) == "504"
            # a response that pauses 1.5 s: whole on the route with idle 10s; cut
            # where the top level's 1 s holds
            r = curl(*flags, g.plain_url("/stream?n=2&delay=1.5"))
            assert r.returncode == 0 and r.stdout == "chunk 0\nchunk 1\n", (flags, r.stdout, r.stderr)
            r = curl(*flags, "-H", "Host: idle.example", g.plain_url("/stream?n=2&delay=1.5"))
            assert r.returncode != 0 and r.stdout == "chunk 0\n", (flags, r.returncode, r.stdout)
        for path, answer in (("/upload", b"413"), ("/nowhere", b"404"), ("/scope", b"413")):
            head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                    f"Expect: 100-continue\r\n\r\n").encode()
            reply = raw_http(g.plain_port, head)  # no body sent: the answer must come without it
            assert reply.startswith(b"HTTP/1.1 " + answer), (path, reply[:200])
            assert b"100 Continue" not in reply and b"connection: close" in reply, (path, reply[:300])
        head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        with socket.create_connection(("127.0.0.1", g.plain_port), timeout=10) as s:
            s.sendall(head)
            assert s.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(b"hello")
            assert b'"size": 5' in s.recv(65536)
    finally:
        g.stop()


def test_body_buffer_bounds_what_the_gateway_holds_of_an_upload(worker, tmp_path):
    """limits.body_buffer: while the app reads nothing (the backend's 1 MiB
    stream window fills), the gateway stops reading an HTTP/1.1 upload once
    it holds body_buffer, and the rest waits in the client's socket. With
    16k its memory hardly grows; with 12m it holds about that much, so the
    setting is what bounds it. Either way the 16 MB arrive intact."""
    size = 16 << 20
    body = tmp_path / "body"
    block = os.urandom(1 << 20)
    body.write_bytes(block * (size >> 20))
    growth = {}
    for body_buffer in ("16k", "12m"):
        g = Gateway(BASIC_CONFIG + f"limits: {{{{body_buffer: {body_buffer}}}}}\n",
                    servers=f"127.0.0.1:{worker.port}", response_timeout="30s")
        try:
            before = g.peak_rss_kb()
            info = curl_json("--http1.1", "--data-binary", f"@{body}", g.plain_url("/hold?s=2"), timeout=60)
            assert info["size"] == size and info["sha256"] == hashlib.sha256(block * (size >> 20)).hexdigest()
            growth[body_buffer] = g.peak_rss_kb() - before
        finally:
            g.stop()
    # Under AddressSanitizer every allocation costs more (redzones, a 4 MiB
    # quarantine): 16k grows by about 6 MiB there, 0.3 MiB otherwise. Without
    # the bound it would hold the 15 MiB the backend has not taken.
    assert growth["16k"] < 10 * 1024, growth
    assert growth["12m"] - growth["16k"] > 8 * 1024, growth


def test_a_refused_request_gets_its_answer_not_a_reset(worker):
    """The gateway answers 431 to a head over the limit, or 413 to an
    upload over max_body_size, while the client is still sending, over
    TLS or not (the worker too, for the head). Neither may close with those bytes unread:
    the kernel would answer them with a reset, which can destroy the answer
    before the client reads it. They shut their write side and read the
    rest first (lingering close)."""
    g = Gateway(BASIC_CONFIG + "limits: {{max_body_size: 1m}}\n", servers=f"127.0.0.1:{worker.port}",
                response_timeout="5s")
    try:
        for _ in range(3):
            head_too_big = b"GET /pid HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 200000 + b"\r\n\r\n"
            upload_too_big = (b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n\r\n"
                              + b"x" * 4000000)
            for port, request, status in ((g.plain_port, head_too_big, b"431"),
                                          (g.plain_port, upload_too_big, b"413"),
                                          (g.tls_port, head_too_big, b"431"),
                                          (g.tls_port, upload_too_big, b"413"),
                                          (worker.port, head_too_big, b"431")):
                # a reset raises ConnectionResetError
                answer = raw_http(port, request, tls=port == g.tls_port)
                assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
                assert answer.endswith(b"\n") and b"connection: close" in answer, answer[-200:]
    finally:
        g.stop()


def reset_on_poke(s):
    """Sends a byte on a connection whose server side sent its FIN: True
    when the server answers with a reset (its socket is gone), False while
    it still reads and drops what comes (lingering)."""
    try:
        s.sendall(b"x")
        time.sleep(0.2)
        s.recv(1)  # b"": the FIN seen before, nothing new
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_lingering_ends_even_if_the_client_never_closes(worker):
    """A client that takes its 431 and then neither closes nor stops
    sending does not hold the connection: the gateway and the worker read
    and drop its bytes for a while (no reset yet), then close for good
    (LINGER_MS, 2 s; the worker ends it on its 1 s tick)."""
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="5s")
    try:
        for port in (g.plain_port, worker.port):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 200000 + b"\r\n\r\n")
                answer = b""
                while chunk := s.recv(65536):  # up to the server's FIN
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
                assert not reset_on_poke(s), port  # lingering: read and dropped
                assert eventually(lambda: reset_on_poke(s), timeout=8), port  # and then gone
    finally:
        g.stop()


def test_max_connections_pauses_accepting(worker):
    """limits.max_connections: above it the gateway stops accepting (the
    kernel's backlog holds newcomers) and takes them on once a connection
    closes."""
    g = Gateway(BASIC_CONFIG + "limits: {{max_connections: 2}}\n",
                servers=f"127.0.0.1:{worker.port}", response_timeout="5s")
    try:
        held = [socket.create_connection(("127.0.0.1", g.plain_port), timeout=10) for _ in range(2)]
        r = curl("--max-time", "1", g.plain_url("/pid"))
        assert r.returncode == 28, (r.returncode, r.stdout)  # waited in the backlog
        held.pop().close()
        r = curl("--max-time", "10", g.plain_url("/pid"))
        assert r.returncode == 0 and '"pid"' in r.stdout, (r.returncode, r.stdout, r.stderr)
        for s in held:
            s.close()
    finally:
        g.stop()


def test_out_of_file_descriptors_rests_accepting_and_loses_no_one(worker):
    """At its open-files limit, accept() fails with EMFILE while the
    listening socket stays readable. The gateway retried at once: it spun a
    CPU and wrote a warning per try (1.7 million lines in 5 s). It now rests
    accepting for 500 ms, says so once per rest, and the connections left
    waiting in the backlog are served once files free up. An upstream
    connection that cannot get a file fails at once and is not the
    backend's failure: it used to wait out connect_timeout and eject the
    server, so every request for fail_timeout (10 s) after got a 503."""
    admin = free_port()
    g = Gateway(BASIC_CONFIG + f"admin: {{{{address: 127.0.0.1:{admin}}}}}\n", servers=f"127.0.0.1:{worker.port}",
                response_timeout="10s")

    def cpu_seconds():
        fields = pathlib.Path(f"/proc/{g.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def limit_files(extra):
        open_now = len(os.listdir(f"/proc/{g.pid}/fd"))
        # the soft limit only: raising a lowered hard limit needs CAP_SYS_RESOURCE
        run(["prlimit", "--pid", str(g.pid), f"--nofile={open_now + extra}:"], check=True)

    def get_pid(s):
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return s.recv(100).split(b"\r\n")[0]

    try:
        # no upstream connection yet, and room for one client only
        limit_files(1)
        with socket.create_connection(("127.0.0.1", g.plain_port), timeout=10) as s:
            assert get_pid(s) == b"HTTP/1.1 502 Bad Gateway"
        assert g.wait_log("cannot open a connection: Too many open files"), g.log()[-2000:]
        limit_files(100)
        assert curl_json(g.plain_url("/pid"))["pid"] > 0  # the backend was not ejected
        assert "ejected" not in g.log(), g.log()[-2000:]
        # clients beyond the limit wait in the backlog
        limit_files(20)
        held = [socket.create_connection(("127.0.0.1", g.plain_port), timeout=10) for _ in range(60)]
        scrape = socket.create_connection(("127.0.0.1", admin), timeout=10)  # the admin listener too
        before = cpu_seconds()
        time.sleep(2)  # over the limit for a while
        # not a speed: a spinning loop would use the whole 2 s; resting uses next to none
        assert cpu_seconds() - before < 1.0
        warnings = g.log_count("accept: Too many open files")
        assert 1 <= warnings <= 10, (warnings, g.log()[-1000:])
        for s in held[:45]:
            s.close()
        for s in held[45:]:  # these waited in the backlog: each is served now
            assert get_pid(s) == b"HTTP/1.1 200 OK", "a connection from the backlog was lost"
            s.close()
        scrape.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert scrape.recv(100).startswith(b"HTTP/1.1 200"), "the waiting scrape was lost"
        scrape.close()
    finally:
        g.stop()


def soft_nofile(pid):
    for line in pathlib.Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return None


def test_the_open_files_limit_is_raised_and_a_short_one_is_said(worker, tmp_path):
    """Both programs raise their soft open-files limit to the hard one at
    start, as Go servers (Caddy) do: started from a shell with a soft limit
    of 1024, the gateway held about a thousand connections while the hard
    limit allowed far more. A limit still below max_connections is said at
    start, as nginx says it of worker_connections."""
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = min(hard, 1 << 20)
    for max_conns, warned in ((100, False), (want + 1, True)):
        config = BASIC_CONFIG.replace("log:\n", f"limits: {{{{max_connections: {max_conns}}}}}\nlog:\n")
        (tmp_path / "g").mkdir(exist_ok=True)
        g = Gateway(config, directory=tmp_path / "g", servers=f"127.0.0.1:{worker.port}", response_timeout="5s",
                    wait=False)
        g.stop()  # only its start matters: run it again below under a soft limit of 512
        p = Process(["prlimit", "--nofile=512:", BIN / "h3gate", "-c", g.config], cwd=g.dir, name="gateway")
        try:
            assert p.wait_log(GATEWAY_READY), p.log()[-2000:]
            assert soft_nofile(p.pid) == want
            assert ("is below what max_connections" in p.log()) == warned, p.log()[-2000:]
        finally:
            p.stop()
    w = Process(["prlimit", "--nofile=512:", BIN / "h3gate-worker", "--bind", f"127.0.0.1:{free_port()}",
                 "--app-dir", APPS, "probe:app"], cwd=APPS, name="worker")
    try:
        assert w.wait_log("worker processes ready", timeout=60), w.log()
        assert soft_nofile(w.pid) == want
        children = [soft_nofile(pid) for pid in children_of(w.pid)]
        assert children and set(children) == {want}, children  # the worker processes inherit it
    finally:
        w.stop()


@pytest.mark.parametrize("fmt", ["json", "combined"])
def test_access_log_lines(worker, tmp_path, fmt):
    """log.access_log with access_log_format json (one object per line,
    with what a request carried and how it went) or combined (nginx's,
    plus rt= upstream= id=); a user agent with quotes and a control
    character cannot break either, and bytes that are not UTF-8 (which a
    field value may carry) are escaped, so that the file stays UTF-8 and
    each JSON line parses: they used to be written raw. Requests refused
    before they reached a route are logged with their status (and method
    and path when the first line was whole): they used to be 499 with no
    method, or missing when the first line was bad."""
    log = tmp_path / "access.log"
    g = Gateway(BASIC_CONFIG.replace("log:\n  level: info\n",
                                     f'log: {{{{level: info, access_log: "{log}", access_log_format: {fmt}}}}}\n'),
                servers=f"127.0.0.1:{worker.port}", response_timeout="5s")
    agent = 'probe "quoted"\tagent'
    try:
        assert curl_json("--http1.1", "-A", agent, "-H", "X-Request-ID: req-1", g.plain_url("/pid?x=1"))
        s = curl_json("--http2-prior-knowledge", "--data-binary", "y" * 100, g.plain_url("/upload"))
        assert s["size"] == 100
        r = curl("--http1.1", "-w", "%{http_code}", "-o", "/dev/null", g.plain_url("/nowhere/../x"))
        assert r.returncode == 0
        raw_http(g.plain_port, b"GET /pid HTTP/1.1\r\nHost: x\r\nUser-Agent: \xff\xfe caf\xc3\xa9 \xe2\x82\xac\r\n"
                               b"Connection: close\r\n\r\n")
        assert raw_http(g.plain_port, b"GET /bad?q HTTP/1.1\r\nHost: x\r\nX: \x01\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert raw_http(g.plain_port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 501")
    finally:
        g.stop()
    lines = log.read_bytes().decode("utf-8").splitlines()  # strictly UTF-8
    assert len(lines) == 6, lines
    upstream = f"127.0.0.1:{worker.port}"
    if fmt == "json":
        first, second = json.loads(lines[0]), json.loads(lines[1])
        assert (first["method"], first["path"], first["protocol"], first["status"]) == \
            ("GET", "/pid?x=1", "HTTP/1.1", 200)
        assert first["user_agent"] == agent and first["request_id"] == "req-1"
        assert first["client"] == "127.0.0.1" and first["upstream"] == upstream
        assert first["bytes"] > 0 and first["duration_ms"] >= 0 and first["attempts"] >= 1
        assert (second["method"], second["protocol"], second["request_bytes"]) == ("POST", "HTTP/2", 100)
        assert len(second["request_id"]) == 32  # made by the gateway
        json.loads(lines[2])
        assert json.loads(lines[3])["user_agent"] == "\u00ff\u00fe caf\u00e9 \u20ac"
        assert [(e["method"], e["path"], e["status"], e["upstream"]) for e in map(json.loads, lines[4:])] == \
            [("GET", "/bad?q", 400, "-"), ("-", "-", 501, "-")]
    else:
        pattern = (r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                   r'"GET /pid\?x=1 HTTP/1\.1" 200 \d+ "-" "(?P<ua>.*)" rt=[\d.]+ '
                   r'upstream=(?P<up>\S+) id=req-1$')
        m = re.match(pattern, lines[0])
        assert m, lines[0]
        assert m["up"] == upstream
        assert '"' not in m["ua"].replace('\\"', "") and "\t" not in m["ua"], m["ua"]
        assert lines[1].split('"')[1] == "POST /upload HTTP/2", lines[1]
        assert lines[3].split('"')[-2] == "\\u00ff\\u00fe caf\u00e9 \u20ac", lines[3]
        assert [line.split('"')[1] + line.split('"')[2][:5] for line in lines[4:]] == \
            ["GET /bad?q HTTP/1.1 400 ", "- - HTTP/1.1 501 "], lines[4:]


def test_a_silent_name_server_fails_fast_with_resolver_timeout():
    """upstreams by name, with resolver and resolver_timeout: a name server
    that never answers costs the first request its resolver_timeout (times
    the 2 attempts), not evdns's default 5 s each, and the client gets a 502
    (nothing to reach, as nginx says when a name does not resolve) rather
    than a hang."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # takes the queries, answers none
        config = BASIC_CONFIG + (f"resolver: 127.0.0.1:{silent.getsockname()[1]}\n"
                                 "resolver_timeout: 300ms\n")
        g = Gateway(config, servers="app.invalid:8000", response_timeout="10s")
        try:
            started = time.monotonic()
            r = curl("-w", "%{http_code}", "-o", "/dev/null", g.plain_url("/pid"), timeout=30)
            took = time.monotonic() - started
            assert r.stdout == "502", (r.stdout, g.log()[-2000:])
            assert took < 4, took  # 2 x 300 ms and change, where the default would be 10 s
            assert "resolving app.invalid:8000 failed" in g.log()
        finally:
            g.stop()


def test_an_upgrade_offer_not_taken_leaves_the_connection_serving(gateway, worker):
    """curl --http2 on http:// offers "Upgrade: h2c" with each request. The
    gateway (and the worker) answer in HTTP/1.1, as RFC 9110 allows, and
    the connection must go on: curl sends its second URL on it. It used to
    wait there until curl gave up."""
    for port in (gateway.plain_port, worker.port):
        url = f"http://127.0.0.1:{port}/pid"
        r = curl("-v", "--http2", url, url, timeout=10)
        assert r.returncode == 0, (port, r.returncode, r.stderr[-1500:])
        assert r.stdout.count('"pid"') == 2, (port, r.stdout)
        assert "Re-using existing connection" in r.stderr and "Upgrade: h2c" in r.stderr, r.stderr[-1500:]


def test_the_asterisk_target_is_for_options_only(gateway, worker):
    """"OPTIONS *" asks about the server as a whole (RFC 9110 9.3.7): the
    gateway routes it as "/" and the app sees the path "*", over HTTP/1.1
    and HTTP/2 (straight to the worker too). "*" with any other method, or
    a target that is no path, is a 400 (HTTP/2 clients get a stream error
    from nghttp2 before we see it). The gateway used to answer "OPTIONS *"
    with a 404 (no route) and pass "GET *" on."""
    for url in (gateway.plain_url(), gateway.tls_url(), worker.url()):
        for flags in (["--http1.1"], ["--http2"] if url.startswith("https") else ["--http2-prior-knowledge"]):
            s = curl_json("-k", *flags, "-X", "OPTIONS", "--request-target", "*", url)
            assert (s["method"], s["path"]) == ("OPTIONS", "*"), (url, flags, s)
            assert s["http_version"] == ("2" if "--http1.1" not in flags else "1.1"), (url, flags, s)
        for target in ("*", "pid", "pid?x=1"):
            r = curl("-k", "--http1.1", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                     "--request-target", target, url)
            assert r.stdout == "400", (url, target, r.stdout, r.stderr)


def test_a_server_whose_app_failed_the_request_is_not_tried_again():
    """A live backend that resets a stream it took (INTERNAL_ERROR, before
    any response: its app failed) has answered. The gateway may try an
    idempotent request on another server, as nginx tries each server once,
    but never on one that already failed it: with one server the backend
    sees the request once and the client gets a 502; with two, once each.
    It used to send it three times to one server (retries: 2), and would
    have gone back to the first of two."""
    servers = [faulty("fail") for _ in range(2)]

    def seen():
        return [p.log().count("request /x") for p, _ in servers]
    try:
        for n, expected in ((1, [1, 0]), (2, [1, 1])):
            before = seen()
            g = Gateway(NO_EJECT_CONFIG, servers=", ".join(f"127.0.0.1:{port}" for _, port in servers[:n]),
                        response_timeout="5s")
            try:
                r = curl("-w", "%{http_code}", "-o", "/dev/null", g.plain_url("/x"))
                assert r.stdout == "502", (n, r.stdout, r.stderr)
                assert "reset the stream (INTERNAL_ERROR)" in g.log(), g.log()[-2000:]
            finally:
                g.stop()
            assert [a - b for a, b in zip(seen(), before)] == expected, (n, seen(), before)
    finally:
        for p, _ in servers:
            p.stop()


def self_signed(directory, name, *more_names):
    """NAME.pem and NAME.key in directory, for name and more_names."""
    sans = ",".join(f"DNS:{n}" for n in (name, *more_names))
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", f"{directory}/{name}.key", "-out", f"{directory}/{name}.pem", "-days", "30",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName={sans}"], check=True)
    return f"{directory}/{name}.pem"


def served_certificate(port, name):
    """The DER certificate a TLS handshake naming name in SNI gets."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            return s.getpeercert(binary_form=True)


SNI_TLS = """    tls:
      certificate: cert.pem
      key: key.pem
      certificates:
        - {{certificate: a.test.pem, key: a.test.key}}
        - {{certificate: b.test.pem, key: b.test.key}}
"""


def dates(head):
    """The Date values in a response head (bytes or str)."""
    text = head.decode("latin1") if isinstance(head, bytes) else head
    return [line.split(":", 1)[1].strip() for line in text.split("\r\n\r\n")[0].splitlines()
            if line.lower().startswith("date:")]


def is_now(date):
    import email.utils
    when = email.utils.parsedate_to_datetime(date).timestamp()
    return date.endswith(" GMT") and abs(when - time.time()) < 300


def test_every_response_carries_one_date(worker):
    """RFC 9110 6.6.1: an origin server with a clock sends Date, and a
    proxy adds one to a response that came without. The worker adds it
    unless the app gave its own, over HTTP/1.1 and HTTP/2, and to its own
    error answers; the gateway passes a backend's on, adds one where a
    backend sent none, and to its own answers. Neither sent any before."""
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="5s")
    backend, backend_port = faulty("big-head")  # sends no Date
    g2 = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{backend_port}", response_timeout="5s")
    try:
        for port in (worker.port, g.plain_port):
            for path in ("/pid", "/no-such-page"):
                found = dates(raw_http(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()))
                assert len(found) == 1 and is_now(found[0]), (port, path, found)
                found = dates(curl("-sS", "-D", "-", "-o", "/dev/null", "--http2-prior-knowledge",
                                   f"http://127.0.0.1:{port}{path}").stdout)
                assert len(found) == 1 and is_now(found[0]), (port, path, found)
            assert dates(raw_http(port, b"GET /dated HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == \
                ["Mon, 01 Jan 2024 00:00:00 GMT"]
            bad = raw_http(port, b"GET /pid HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # their own 400
            assert bad.startswith(b"HTTP/1.1 400") and len(dates(bad)) == 1 and is_now(dates(bad)[0]), bad
        found = dates(raw_http(g2.plain_port, b"GET /1x10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        assert len(found) == 1 and is_now(found[0]), found
    finally:
        g.stop()
        g2.stop()
        backend.stop()


def test_sni_chooses_the_certificate_over_tcp_and_quic(worker):
    """tls.certificates: more certificates on one listener, each served to
    clients whose SNI names one of its names (wildcards too), over TLS and
    QUIC alike; the default one for any other name. Each client trusts only
    the certificate it should get, so a wrong one fails the handshake."""
    d = tempfile.mkdtemp(prefix="h3gw-sni-")
    make_cert(d)  # the default: localhost, 127.0.0.1
    self_signed(d, "a.test")
    self_signed(d, "b.test", "*.b.test")
    cfg = BASIC_CONFIG.replace("    tls: {{certificate: cert.pem, key: key.pem}}\n", SNI_TLS)
    g = Gateway(cfg, directory=d, servers=f"127.0.0.1:{worker.port}", response_timeout="5s")
    try:
        port = g.tls_port
        for name, trusted in (("a.test", "a.test"), ("b.test", "b.test"), ("x.b.test", "b.test"),
                              ("localhost", "cert"), ("a.test", "b.test")):
            right = trusted == name or (name, trusted) == ("x.b.test", "b.test") or name == "localhost"
            for flags in (["--http1.1"], ["--http2"]):
                r = curl(*flags, "--cacert", f"{d}/{trusted}.pem", "--resolve", f"{name}:{port}:127.0.0.1",
                         "-o", "/dev/null", "-w", "%{http_code}", f"https://{name}:{port}/pid")
                assert (r.stdout == "200") == right, (name, trusted, flags, r.stdout, r.stderr)
            r = run([BIN / "h3load", "-n", "1", "--cacert", f"{d}/{trusted}.pem", "--sni", name,
                     f"https://127.0.0.1:{port}/pid"], timeout=30)
            assert (", 1 succeeded" in r.stdout) == right, (name, trusted, r.stdout, r.stderr)
        # A name no certificate covers, or none, gets the default.
        default = ssl.PEM_cert_to_DER_cert(pathlib.Path(f"{d}/cert.pem").read_text())
        assert served_certificate(port, "c.test") == default
        assert served_certificate(port, None) == default
        assert served_certificate(port, "a.test") != default
    finally:
        g.stop()


def h2_status(port, headers):
    """One raw HTTP/2 request with exactly these fields: its :status."""
    return h2_raw_request(port, headers)[0]


def test_which_host_a_request_names(gateway, worker):
    """RFC 9112 3.2: an HTTP/1.1 request without Host, or with two, is a 400
    (at the gateway and the worker; both used to take two, and the worker
    one without); an HTTP/1.0 one may name none (the gateway uses its
    listener's address). An absolute-form target's authority stands for
    Host (3.2.2), also at the worker, which used to keep the Host field.
    Over HTTP/2 a Host that differs from :authority is malformed (RFC 9113
    8.3.1); an equal one passes."""
    def status_and_scope(port, request):
        head, _, body = raw_http(port, request).partition(b"\r\n\r\n")
        return head.split(b" ")[1].decode(), body

    for port in (gateway.plain_port, worker.port):
        for request, why in ((b"GET /pid HTTP/1.1\r\nConnection: close\r\n\r\n", b"needs a Host field"),
                             (b"GET /pid HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
                              b"more than one Host field")):
            status, body = status_and_scope(port, request)
            assert status == "400" and why in body, (port, request, body)  # and says why
        status, body = status_and_scope(port, b"GET /scope HTTP/1.0\r\n\r\n")
        assert status == "200", (port, body[:200])
        status, body = status_and_scope(port, b"GET http://named.example/scope HTTP/1.1\r\nHost: other.example\r\n"
                                              b"Connection: close\r\n\r\n")
        hosts = [v for k, v in json.loads(body)["headers"] if k == "host"]
        assert (status, hosts) == ("200", ["named.example"]), (port, status, hosts)
        status, body = status_and_scope(port, b"GET http://named.example?x=1/2 HTTP/1.1\r\nHost: other.example\r\n"
                                              b"Connection: close\r\n\r\n")
        assert status == "404" and json.loads(body) == {"error": "not found", "path": "/", "query": "x=1/2"}, \
            (port, status, body)
    hosts = [v for k, v in json.loads(status_and_scope(gateway.plain_port, b"GET /scope HTTP/1.0\r\n\r\n")[1])["headers"]
             if k == "host"]
    assert hosts == [f"127.0.0.1:{gateway.plain_port}"], hosts
    base = [(":method", "GET"), (":path", "/scope"), (":scheme", "http"), (":authority", "a.example")]
    assert h2_status(gateway.plain_port, base + [("host", "b.example")]) == "400"
    assert h2_status(gateway.plain_port, base + [("host", "A.example")]) == "200"


def test_transfer_codings_other_than_chunked_get_501(gateway, worker):
    """RFC 9112 6.1: a transfer coding the server does not implement gets
    501, at the gateway and the worker. llhttp looks only at the last
    coding, and used to frame "identity, chunked" as chunked (a 200)."""
    for port in (gateway.plain_port, worker.port):
        for coding in (b"identity, chunked", b"gzip, chunked", b"gzip"):
            answer = raw_http(port, b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding +
                              b"\r\n\r\n0\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 501 "), (port, coding, answer)
            assert b"connection: close" in answer.lower(), answer
        answer = raw_http(port, b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: , Chunked\r\n"
                                b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"size": 3' in answer, (port, answer)


@pytest.mark.parametrize("host", [b"a b", b"a@b", b"[::1", b"[]", b":80", b"a:8x", b"a%4", b"a/b", b"a\\b"])
def test_an_invalid_host_gets_400_not_the_backends_reset(gateway, host):
    """RFC 9112 3.2: a Host with an invalid value is a 400 (a MUST); RFC
    9113 8.3.1 likewise for :authority, and userinfo is not allowed in
    either. "a b" used to reach the backend, whose HTTP/2 stack reset the
    stream: the client got a 502 for its own error. "a@b" reached the app.
    Over HTTP/1.1 (as Host, and as a Host an absolute-form target
    overrides) and HTTP/2 (as :authority, and as Host without one)."""
    def status(request):
        return raw_http(gateway.plain_port, request).split(b"\r\n")[0]

    assert status(b"GET /pid HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n") == \
        b"HTTP/1.1 400 Bad Request"
    assert status(b"GET http://a/pid HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n") == \
        b"HTTP/1.1 400 Bad Request"
    if b"/" not in host:  # "http://a/b/pid" is host a, path /b/pid
        assert status(b"GET http://" + host + b"/pid HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n") == \
            b"HTTP/1.1 400 Bad Request"
    base = [(":method", "GET"), (":path", "/pid"), (":scheme", "http")]
    for fields in ([(":authority", host.decode())], [("host", host.decode())]):
        # nghttp2 resets the stream itself for some (a space): also not a 502
        assert h2_status(gateway.plain_port, base + fields) in ("400", "reset 1"), (host, fields)


def test_valid_and_empty_hosts_pass(gateway):
    """The other side of the check: names, ports, IP literals and
    percent-encoding pass; an empty HTTP/1.1 Host names no host (RFC 9112
    3.3), so the listener's address stands for it, as for HTTP/1.0 without
    one. It used to go to the backend as an empty :authority: a 502."""
    for host in (b"a", b"a:80", b"A.Example.org:8080", b"[::1]:80", b"[v1.x]", b"%41b", b"xn--bcher-kva.example",
                 b"a:"):
        answer = raw_http(gateway.plain_port, b"GET /pid HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 "), (host, answer)
    answer = raw_http(gateway.plain_port, b"GET /scope HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    hosts = [v for k, v in json.loads(answer.split(b"\r\n\r\n", 1)[1])["headers"] if k == "host"]
    assert hosts == [f"127.0.0.1:{gateway.plain_port}"], hosts
    base = [(":method", "GET"), (":path", "/pid"), (":scheme", "http")]
    assert h2_status(gateway.plain_port, base + [(":authority", "[::1]:80")]) == "200"
    assert h2_status(gateway.plain_port, base + [(":authority", "")]) in ("400", "reset 1")


def test_a_backend_that_speaks_only_http1_is_named_as_such():
    """Pointed at an HTTP/1.1-only server (uvicorn, gunicorn), the gateway
    said "refused the stream (REFUSED_STREAM)": nghttp2 only saw a frame too
    large in the answer to our preface. The 502 and the log now say that
    the backend speaks HTTP/1.x, not HTTP/2."""
    import threading
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def answer_like_http1():
        try:
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        except OSError:
            pass

    threading.Thread(target=answer_like_http1, daemon=True).start()
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{server.getsockname()[1]}", response_timeout="5s")
    try:
        r = curl("-w", "\n%{http_code}", g.plain_url("/"))
        body, status = r.stdout.rsplit("\n", 1)
        assert status == "502" and "speaks HTTP/1.x, not HTTP/2" in body, r.stdout
        assert "speaks HTTP/1.x, not HTTP/2 (h2c): use an HTTP/2 backend such as h3gate-worker" in g.log()
    finally:
        g.stop()
        server.close()


def test_a_missing_unix_socket_backend_is_named_as_such(tmp_path):
    """A backend on a unix socket that is not there fails at once. The
    gateway logged it from its connect timer as "connect timed out"; the log
    now gives the error itself (the client gets its 502, as for a refused
    TCP connection)."""
    g = Gateway(BASIC_CONFIG, servers=f"unix:{tmp_path}/no-such.sock", response_timeout="5s")
    try:
        r = curl("-o", "/dev/null", "-w", "%{http_code}", g.plain_url("/"))
        assert r.stdout == "502", r.stdout
        assert "connect failed: No such file or directory" in g.log(), g.log()[-2000:]
        assert "connect timed out" not in g.log()
    finally:
        g.stop()


def test_a_backend_that_accepts_and_never_answers_is_given_up_after_connect_timeout(worker):
    """A backend that accepts connections and never speaks (another
    service, a TLS port) held every request until the response timeout and
    was never counted as failing. Without its SETTINGS within
    connect_timeout (2 s here), the connection is given up: alone, a 502
    that says why; beside a working server, it is ejected (passive health)
    and the request is answered there."""
    import threading
    server = socket.create_server(("127.0.0.1", 0))
    held = []

    def accept_and_stay_silent():
        try:
            while True:
                held.append(server.accept()[0])
        except OSError:
            pass

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    silent = f"127.0.0.1:{server.getsockname()[1]}"
    g = Gateway(BASIC_CONFIG, servers=silent, response_timeout="60s")
    try:
        r = curl("--max-time", "30", "-w", "\n%{http_code}", g.plain_url("/"))
        body, status = r.stdout.rsplit("\n", 1)
        assert status == "502" and "no HTTP/2 SETTINGS from the backend" in body, (r.stdout, r.stderr)
    finally:
        g.stop()
    config = BASIC_CONFIG.replace("    resolve_interval: 1s\n",
                                  "    resolve_interval: 1s\n    balance: round_robin\n")
    g = Gateway(config, servers=f"{silent}, 127.0.0.1:{worker.port}", response_timeout="60s")
    try:
        for _ in range(2):  # one of them goes to the silent server first
            assert curl_json("--max-time", "30", g.plain_url("/pid"))["pid"] > 0
        assert "no HTTP/2 SETTINGS from the backend" in g.log(), g.log()[-2000:]
        assert f"server {silent} ejected" in g.log(), g.log()[-2000:]
    finally:
        g.stop()
        server.close()
        for c in held:
            c.close()


def test_a_reload_serves_requests_already_on_their_way(worker):
    """Graceful shutdown in two steps (RFC 9113 6.8): a reload first sends a
    GOAWAY that refuses nothing (2^31-1), and only a second later one that
    names the last stream taken. A request the client sent before it read
    the first is served. With a single GOAWAY it was refused: the client
    saw last-stream-id 1 and no answer for stream 3."""
    import h2.config
    import h2.connection
    import hpack
    from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame

    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="5s")
    try:
        s = socket.create_connection(("127.0.0.1", g.plain_port), timeout=10)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        head = [(":method", "GET"), (":path", "/pid"), (":scheme", "http"), (":authority", "x")]
        conn.send_headers(1, head, end_stream=True)
        s.sendall(conn.data_to_send())
        time.sleep(0.5)  # stream 1 answered, unread
        g.signal(signal.SIGHUP)
        assert g.wait_log("configuration reloaded"), g.log()[-2000:]
        conn.send_headers(3, head, end_stream=True)  # on its way before the client reads the GOAWAY
        s.sendall(conn.data_to_send())
        data, deadline = b"", time.monotonic() + 5
        while time.monotonic() < deadline and (chunk := s.recv(65536)):
            data += chunk
        s.close()
        # Read the frames ourselves: python-h2 takes nothing after a GOAWAY.
        frames, decoder, statuses, goaways = [], hpack.Decoder(), {}, []
        while len(data) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            frame.parse_body(memoryview(data[9:9 + length]))
            data = data[9 + length:]
            if isinstance(frame, HeadersFrame):
                statuses[frame.stream_id] = dict(decoder.decode(frame.data))[":status"]
            elif isinstance(frame, GoAwayFrame):
                goaways.append(frame.last_stream_id)
        assert statuses == {1: "200", 3: "200"}, (statuses, goaways)
        assert goaways[0] == 2**31 - 1 and goaways[-1] == 3, goaways
    finally:
        g.stop()


def scope_of_chunked_post_with_trailers(port):
    """POST /scope, chunked, whose trailer section carries fields a client
    may not set through a proxy; returns the scope the app saw."""
    answer = raw_http(port, b"POST /scope HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                            b"3\r\nabc\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nVia: 3 spoofed\r\nX-Injected: yes\r\n\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), answer
    return json.loads(body)


def test_request_trailers_never_become_request_headers(worker):
    """Trailer fields arrive after the head was acted on: the gateway has
    rewritten the forwarding fields, the worker has built the app's scope.
    They must not join the headers then. The gateway's first request waits
    for its upstream connection, so the trailers arrive before it is sent:
    they used to go upstream as headers, after the gateway's own
    X-Forwarded-For. Straight to the worker they used to appear in the
    running app's scope."""
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="5s")
    try:
        for port in (g.plain_port, worker.port):  # a fresh gateway's first request, then the worker's own HTTP/1.1
            scope = scope_of_chunked_post_with_trailers(port)
            names = [name for name, _ in scope["headers"]]
            assert "x-injected" not in names, (port, scope["headers"])
            assert names.count("x-forwarded-for") == (1 if port == g.plain_port else 0), (port, scope["headers"])
            assert ["via", "3 spoofed"] not in scope["headers"], (port, scope["headers"])
            assert scope["http_version"] == "1.1", scope
    finally:
        g.stop()


def test_request_trailers_are_accepted_and_not_forwarded(gateway):
    """A chunked HTTP/1.1 upload ending in trailers: the body arrives whole
    and the exchange goes on; the trailers stop at the gateway (ASGI has no
    request trailers to give the app)."""
    answer = raw_http(gateway.plain_port,
                      b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n"
                      b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200") == 2, answer  # the next request on the connection too
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])
    assert body["size"] == 11 and body["sha256"] == hashlib.sha256(b"hello world").hexdigest()
