"""The admin listener: /healthz, and /metrics that parses as Prometheus
text and whose counters match the requests sent."""

import socket
import ssl
import subprocess
import time

import h2.config
import h2.connection
import h2.errors
import pytest

from h3env import BASIC_CONFIG, BIN, Gateway, Worker, curl, eventually, free_port, metric, metrics, run
from test_http3 import H3_CONFIG, SECRET


@pytest.fixture(scope="module")
def stack():
    w = Worker("probe:app", workers=2)
    admin = free_port()
    g = Gateway(H3_CONFIG + f"admin: {{{{address: 127.0.0.1:{admin}}}}}\n",
                servers=f"127.0.0.1:{w.port}", response_timeout="5s", secret=SECRET, retry="never")
    yield g, w, admin
    g.stop()
    w.stop()


def test_healthz(stack):
    _, _, admin = stack
    r = curl("-w", "%{http_code}", f"http://127.0.0.1:{admin}/healthz")
    assert r.stdout == "ok\n200"


def test_counters_match_the_requests_sent(stack):
    g, w, admin = stack
    before = metrics(admin)
    for _ in range(3):
        assert curl("-k", "--http1.1", g.tls_url("/pid")).returncode == 0
    for _ in range(4):
        assert curl("-k", "--http2", g.tls_url("/pid")).returncode == 0
    for _ in range(2):
        curl("-k", "--http2", g.tls_url("/no-such-page"))
    r = run([BIN / "h3load", "-q", "-n", "5", f"https://127.0.0.1:{g.tls_port}/pid"])
    assert "5 succeeded" in r.stdout

    def delta(protocol, code):
        labels = {"protocol": protocol, "code": str(code)}
        return metric(after, "h3gate_requests_total", **labels) - metric(before, "h3gate_requests_total", **labels)

    # An exchange is counted when the gateway lets go of it, a moment after
    # the client has its response (HTTP/3: when the stream closes).
    after = None

    def all_counted():
        nonlocal after
        after = metrics(admin)
        return delta("3", 200) >= 5

    eventually(all_counted, timeout=5)

    assert delta("1.1", 200) == 3
    assert delta("2", 200) == 4
    assert delta("2", 404) == 2
    assert delta("3", 200) == 5
    # histogram count agrees with the counters
    count = metric(after, "h3gate_request_duration_seconds_count", protocol="2") - \
        metric(before, "h3gate_request_duration_seconds_count", protocol="2")
    assert count == 6
    # the upstream server is listed, up, with the requests it got
    server = f"127.0.0.1:{w.port}"
    assert metric(after, "h3gate_upstream_server_state", upstream="app", server=server, state="up") == 1
    sent = metric(after, "h3gate_upstream_requests_total", upstream="app", server=server) - \
        metric(before, "h3gate_upstream_requests_total", upstream="app", server=server)
    assert sent == 3 + 4 + 2 + 5
    assert metric(after, "h3gate_requests_in_flight") == 0


def test_quic_library_memory_is_counted(stack):
    g, w, admin = stack
    held = subprocess.Popen([str(BIN / "h3load"), "-q", "-n", "1", "--hold", "3",
                             f"https://127.0.0.1:{g.tls_port}/pid"], stdout=subprocess.DEVNULL)
    try:
        eventually(lambda: metric(metrics(admin), "h3gate_client_connections", transport="quic") >= 1, timeout=5)
        m = metrics(admin)
        # an open connection's ngtcp2 and nghttp3 state is tens of kilobytes
        assert metric(m, "h3gate_quic_library_bytes", library="ngtcp2") > 10000
        assert metric(m, "h3gate_quic_library_bytes", library="nghttp3") > 1000
    finally:
        held.wait(timeout=15)


def test_admin_is_off_by_default():
    w = Worker("probe:app")
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{w.port}", response_timeout="5s")
    try:
        assert "admin listener" not in g.log()
    finally:
        g.stop()
        w.stop()


def in_flight(admin):
    samples = metrics(admin)
    return sum(v for (name, _), v in samples.items()
               if name in ("h3gate_requests_in_flight", "h3gate_upstream_in_flight"))


def test_clients_that_leave_early_leave_nothing_in_flight(stack):
    """Every way a client can walk away from a request: its exchange and its
    upstream stream must go at once, not when a timeout finds them (the
    gateway's response timeout here is 5 s; the check is done well before)."""
    g, _, admin = stack
    assert eventually(lambda: in_flight(admin) == 0)
    long_stream = "/stream?n=500&delay=0.01"  # 5 s of chunks, longer than the test takes
    # HTTP/1.1 over TLS: gone after the head of a long response
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", g.tls_port)))
    s.sendall(f"GET {long_stream} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert s.recv(100).startswith(b"HTTP/1.1 200")
    s.close()
    # HTTP/2: curl gives up on a long response
    curl("-k", "--http2", "--max-time", "1", g.tls_url(long_stream))
    # HTTP/3: h3load gives up on a long response
    run([BIN / "h3load", "-q", "-n", "1", "--timeout", "1", g.tls_url(long_stream)], timeout=30)
    started = time.monotonic()
    # HTTP/1.1 cleartext: gone in the middle of an upload
    s = socket.create_connection(("127.0.0.1", g.plain_port))
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100000)
    time.sleep(0.1)
    s.close()
    # HTTP/2 (h2c): a stream reset in the middle of an upload; the connection stays
    s = socket.create_connection(("127.0.0.1", g.plain_port))
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "a"),
                       (":path", "/upload"), ("content-length", "1000000")])
    for _ in range(3):
        c.send_data(1, b"y" * 16000)
    s.sendall(c.data_to_send())
    time.sleep(0.1)
    c.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    s.sendall(c.data_to_send())
    try:
        while in_flight(admin) and time.monotonic() < started + 1.5:
            time.sleep(0.05)
        left = in_flight(admin)
    finally:
        s.close()
    assert left == 0, f"{left} exchanges or upstream streams still in flight"


def test_max_connections_per_ip_refuses_the_next_and_counts_them_back():
    """limits.max_connections_per_ip (nginx's limit_conn): an address holding
    its 3 connections gets the next closed at once, TCP or QUIC (counted
    together), and /metrics counts the refusals. Connections that end give
    their place back, whichever way they ended: 20 more, one at a time,
    all get served."""
    w = Worker("probe:app")
    admin = free_port()
    g = Gateway(H3_CONFIG + "limits: {{max_connections_per_ip: 3}}\n" + f"admin: {{{{address: 127.0.0.1:{admin}}}}}\n",
                servers=f"127.0.0.1:{w.port}", response_timeout="5s", secret=SECRET, retry="never")
    held = []
    try:
        for _ in range(3):
            held.append(socket.create_connection(("127.0.0.1", g.plain_port), timeout=10))
        assert eventually(lambda: metric(metrics(admin), "h3gate_client_connections", transport="tcp") == 3)
        # metrics() itself goes to the admin listener, which is not counted
        with socket.create_connection(("127.0.0.1", g.plain_port), timeout=10) as fourth:
            assert fourth.recv(4096) == b""  # closed at once
        r = run([BIN / "h3load", "-n", "1", "--timeout", "3", f"https://127.0.0.1:{g.tls_port}/pid"], timeout=30)
        assert "0 succeeded" in r.stdout, r.stdout
        refused = metric(metrics(admin), "h3gate_connections_refused_total", reason="per_ip")
        assert refused >= 2, refused  # h3load's Initial may come more than once
        held.pop().close()
        assert eventually(lambda: curl("-sS", g.plain_url("/pid")).stdout.startswith('{"pid"'))
        for s in held:
            s.close()
        held.clear()
        for i in range(10):
            assert curl("-sS", g.plain_url("/pid")).stdout.startswith('{"pid"'), i
            assert curl("-sSk", "--http2", g.tls_url("/pid")).stdout.startswith('{"pid"'), i
        for _ in range(3):  # 3 connections at a time, once the last ones are gone (draining too)
            assert eventually(lambda: metric(metrics(admin), "h3gate_client_connections", transport="quic") == 0)
            r = run([BIN / "h3load", "-n", "6", "-c", "3", f"https://127.0.0.1:{g.tls_port}/pid"], timeout=30)
            assert "6 succeeded" in r.stdout, r.stdout
    finally:
        for s in held:
            s.close()
        g.stop()
        w.stop()
