"""Bodies stream through h3gate-worker in bounded memory, both ways, with
flow control and disconnects seen by the app."""

import hashlib
import json
import os
import socket
import tempfile
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from h3env import Worker, curl, curl_json, run

SIZE = 100 * 1024 * 1024
RSS_SLACK_KB = 32 * 1024


@pytest.fixture(scope="module")
def worker():
    w = Worker("probe:app", workers=1)
    yield w
    assert w.stop() == 0
    w.assert_clean()


def expected_download_sha(size, chunk=65536):
    block = (bytes(range(256)) * (chunk // 256 + 1))
    h = hashlib.sha256()
    sent = 0
    while sent < size:
        n = min(chunk, size - sent)
        h.update(block[:n])
        sent += n
    return h.hexdigest()


@pytest.mark.parametrize("flag", ["--http1.1", "--http2-prior-knowledge"])
def test_100mb_download_streams_in_bounded_memory(worker, flag):
    before = curl_json(worker.url("/rss"))
    r = run(["sh", "-c", f"curl -sS {flag} '{worker.url(f'/download?size={SIZE}')}' | sha256sum"],
            timeout=300)
    assert r.stdout.split()[0] == expected_download_sha(SIZE)
    after = curl_json(worker.url("/rss"))
    assert after["pid"] == before["pid"]
    assert after["peak_rss_kb"] - before["peak_rss_kb"] < RSS_SLACK_KB, (before, after)


@pytest.mark.parametrize("flag", ["--http1.1", "--http2-prior-knowledge"])
def test_100mb_upload_streams_in_bounded_memory(worker, flag):
    with tempfile.NamedTemporaryFile() as f:
        block = os.urandom(1 << 20)
        h = hashlib.sha256()
        for _ in range(SIZE >> 20):
            f.write(block)
            h.update(block)
        f.flush()
        before = curl_json(worker.url("/rss"))
        info = curl_json(flag, "--data-binary", f"@{f.name}", "-H",
                         "Content-Type: application/octet-stream", worker.url("/upload"),
                         timeout=300)
    assert info["size"] == SIZE
    assert info["sha256"] == h.hexdigest()
    assert info["chunks"] > 10  # streamed in pieces, not buffered whole
    assert info["peak_rss_kb"] - before["peak_rss_kb"] < RSS_SLACK_KB, (before, info)


def test_streaming_response_arrives_in_pieces(worker):
    r = run(["nghttp", "-v", worker.url("/stream?n=4&delay=0.05")], timeout=30)
    data_frames = [l for l in r.stdout.splitlines() if "recv DATA frame" in l]
    assert len(data_frames) >= 4
    assert curl("--http1.1", worker.url("/stream?n=3")).stdout == "chunk 0\nchunk 1\nchunk 2\n"


def test_disconnect_seen_by_slow_app(worker):
    before = len(curl_json(worker.url("/disconnects"))["disconnects"])
    for flag in ("--http1.1", "--http2-prior-knowledge"):
        r = curl(flag, worker.url("/slow?delay=20"), timeout=1)
        assert r.returncode == 28  # curl gave up: the app must notice
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = curl_json(worker.url("/disconnects"))["disconnects"][before:]
        if len(seen) >= 2:
            break
        time.sleep(0.1)
    assert seen == ["http.disconnect", "http.disconnect"]


class H2:
    """A small python-h2 client for frame-level tests."""

    def __init__(self, port, window=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.port = port
        self.responses = {}

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, method="GET", end=True):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", method), (":path", path), (":scheme", "http"),
                                     (":authority", f"127.0.0.1:{self.port}")], end_stream=end)
        self.responses[sid] = {"status": None, "data": b"", "ended": False, "reset": None}
        self.flush()
        return sid

    def pump(self, ack=True, timeout=None):
        if timeout is not None:
            self.sock.settimeout(timeout)
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed")
        for ev in self.conn.receive_data(chunk):
            r = self.responses.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived):
                r["status"] = dict(ev.headers)[b":status"]
            elif isinstance(ev, h2.events.DataReceived):
                r["data"] += ev.data
                if ack:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                r["ended"] = True
            elif isinstance(ev, h2.events.StreamReset) and r is not None:
                r["reset"] = ev.error_code
                r["ended"] = True
        self.flush()

    def wait_all(self, limit_s=60):
        deadline = time.monotonic() + limit_s
        while not all(r["ended"] for r in self.responses.values()):
            assert time.monotonic() < deadline, "responses did not finish"
            self.pump()

    def close(self):
        self.sock.close()


def test_100_concurrent_streams_on_one_connection(worker):
    c = H2(worker.port)
    for _ in range(100):
        c.request("/sleep?s=0.3")
    c.wait_all()
    assert all(r["status"] == b"200" for r in c.responses.values())
    peak = max(json.loads(r["data"])["max_inflight"] for r in c.responses.values())
    assert peak >= 50  # served concurrently, not one after another
    c.close()


def test_tiny_client_window_still_delivers_everything(worker):
    c = H2(worker.port, window=16)
    sid = c.request("/download?size=200000&chunk=7000")
    c.wait_all()
    r = c.responses[sid]
    assert r["status"] == b"200" and len(r["data"]) == 200000
    assert hashlib.sha256(r["data"]).hexdigest() == expected_download_sha(200000, 7000)
    c.close()


def test_fast_uploader_is_held_by_the_stream_window(worker):
    c = H2(worker.port)
    sid = c.request("/hold?s=2", method="POST", end=False)
    sent = 0
    chunk = b"z" * 16384
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        window = min(c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size)
        if window <= 0:
            try:
                c.pump(timeout=0.2)
            except socket.timeout:
                pass
            continue
        c.conn.send_data(sid, chunk[:window])
        sent += min(window, len(chunk))
        c.flush()
    # Nothing was consumed yet: the client could send no more than the window.
    assert (1 << 20) - 65536 <= sent <= (1 << 20), sent
    c.conn.end_stream(sid)
    c.flush()
    c.sock.settimeout(20)
    c.wait_all()
    assert json.loads(c.responses[sid]["data"])["size"] >= sent
    c.close()


def test_reset_mid_body_is_a_disconnect_and_harms_no_other_stream(worker):
    before = len(curl_json(worker.url("/disconnects"))["disconnects"])
    c = H2(worker.port)
    victim = c.request("/slow?delay=20", method="POST", end=False)
    c.conn.send_data(victim, b"partial body")
    other = c.request("/download?size=300000")
    c.flush()
    c.conn.reset_stream(victim)
    c.flush()
    del c.responses[victim]
    c.wait_all()
    assert c.responses[other]["status"] == b"200"
    assert len(c.responses[other]["data"]) == 300000
    c.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = curl_json(worker.url("/disconnects"))["disconnects"][before:]
        if seen:
            break
        time.sleep(0.1)
    assert seen == ["http.disconnect"]


def test_many_resets_from_the_trusted_gateway_do_not_cut_it_off(worker):
    # Loopback is trusted by default, like the gateway: 3000 cancellations
    # in a burst (nghttp2 would GOAWAY an untrusted peer after 1000).
    c = H2(worker.port)
    for _ in range(3000):
        sid = c.request("/sleep?s=5")
        c.conn.reset_stream(sid)
        del c.responses[sid]
        if sid % 64 == 1:
            c.flush()
    c.flush()
    sid = c.request("/pid")
    c.wait_all()
    assert c.responses[sid]["status"] == b"200"
    c.close()
