"""The admin listener: /healthz, and /metrics that parses as Prometheus
text and whose counters match the requests sent."""

import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from h3env import BASIC_CONFIG, BIN, Gateway, Worker, curl, free_port, run
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


def metrics(admin):
    r = curl(f"http://127.0.0.1:{admin}/metrics")
    assert r.returncode == 0
    samples = {}
    for family in text_string_to_metric_families(r.stdout):  # raises on malformed text
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


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
        return value(after, "h3gate_requests_total", **labels) - value(before, "h3gate_requests_total", **labels)

    # An exchange is counted when the gateway lets go of it, a moment after
    # the client has its response (HTTP/3: when the stream closes).
    deadline = time.monotonic() + 5
    while True:
        after = metrics(admin)
        if delta("3", 200) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    assert delta("1.1", 200) == 3
    assert delta("2", 200) == 4
    assert delta("2", 404) == 2
    assert delta("3", 200) == 5
    # histogram count agrees with the counters
    count = value(after, "h3gate_request_duration_seconds_count", protocol="2") - \
        value(before, "h3gate_request_duration_seconds_count", protocol="2")
    assert count == 6
    # the upstream server is listed, up, with the requests it got
    server = f"127.0.0.1:{w.port}"
    assert value(after, "h3gate_upstream_server_state", upstream="app", server=server, state="up") == 1
    sent = value(after, "h3gate_upstream_requests_total", upstream="app", server=server) - \
        value(before, "h3gate_upstream_requests_total", upstream="app", server=server)
    assert sent == 3 + 4 + 2 + 5
    assert value(after, "h3gate_requests_in_flight") == 0


def test_quic_library_memory_is_counted(stack):
    g, w, admin = stack
    held = subprocess.Popen([str(BIN / "h3load"), "-q", "-n", "1", "--hold", "3",
                             f"https://127.0.0.1:{g.tls_port}/pid"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            m = metrics(admin)
            if value(m, "h3gate_client_connections", transport="quic") >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        # an open connection's ngtcp2 and nghttp3 state is tens of kilobytes
        assert value(m, "h3gate_quic_library_bytes", library="ngtcp2") > 10000
        assert value(m, "h3gate_quic_library_bytes", library="nghttp3") > 1000
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
