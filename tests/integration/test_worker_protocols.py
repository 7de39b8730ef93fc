"""h3gate-worker speaking HTTP/1.1 and h2c to real clients: the ASGI scope,
trailers, errors, limits."""

import json
import os
import signal
import socket
import ssl  # noqa: F401  (h2 needs it importable)
import time

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

import h2frames

from h3env import Worker, curl, curl_json, eventually, h2_raw_request, raw_http, run


@pytest.fixture(scope="module")
def worker():
    w = Worker("probe:app", workers=1, args=["--root-path", "/api"])
    yield w
    assert w.stop() == 0
    w.assert_clean()


def test_scope_over_http1_and_h2(worker):
    for flag, version in (("--http1.1", "1.1"), ("--http2-prior-knowledge", "2")):
        s = curl_json(flag, "-H", "X-Custom: One", "-H", "x-custom: two", "-d", "hello",
                      worker.url("/scope/caf%C3%A9/x%2Fy?a=1&b=%20"))
        assert s["type"] == "http"
        assert s["asgi"] == {"version": "3.0", "spec_version": "2.3"}
        assert s["http_version"] == version
        assert s["method"] == "POST"
        assert s["scheme"] == "http"
        assert s["path"] == "/scope/café/x/y"
        assert s["raw_path"] == "/scope/caf%C3%A9/x%2Fy"
        assert s["query_string"] == "a=1&b=%20"
        assert s["root_path"] == "/api"
        assert s["client"][0] == "127.0.0.1" and isinstance(s["client"][1], int)
        assert s["server"] == ["127.0.0.1", worker.port]
        assert s["state"]["started"] == "probe-started"
        assert s["types"]["headers"] == "list" and s["header_types"] == ["bytes"]
        names = [k for k, _ in s["headers"]]
        assert names == [n.lower() for n in names]
        assert names[0] == "host"  # :authority becomes host, first
        customs = [v for k, v in s["headers"] if k == "x-custom"]
        assert customs == ["One", "two"]  # arrival order kept
        assert s["body"]["size"] == 5
        assert "http.response.trailers" not in s["extensions"]


def test_trailers_extension_offered_only_with_te_trailers(worker):
    s = curl_json("--http2-prior-knowledge", "-H", "TE: trailers", worker.url("/scope"))
    assert "http.response.trailers" in s["extensions"]


def h2_request(port, path, headers=(), body=None, window=None):
    """A raw h2 exchange with python-h2; returns (headers, body, trailers, reset)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    if window:
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    sid = conn.get_next_available_stream_id()
    hdrs = [(":method", "POST" if body else "GET"), (":path", path), (":scheme", "http"),
            (":authority", f"127.0.0.1:{port}"), *headers]
    conn.send_headers(sid, hdrs, end_stream=body is None)
    if body is not None:
        conn.send_data(sid, body, end_stream=True)
    sock.sendall(conn.data_to_send())
    resp_headers, data, trailers, reset = None, b"", None, None
    done = False
    while not done:
        chunk = sock.recv(65536)
        if not chunk:
            break
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.ResponseReceived):
                resp_headers = ev.headers
            elif isinstance(ev, h2.events.DataReceived):
                data += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers = ev.headers
            elif isinstance(ev, h2.events.StreamEnded):
                done = True
            elif isinstance(ev, h2.events.StreamReset):
                reset, done = ev.error_code, True
        sock.sendall(conn.data_to_send())
    sock.close()
    return dict(resp_headers or []), data, dict(trailers or []), reset


import h2.settings  # noqa: E402


def test_trailers_over_h2(worker):
    headers, body, trailers, reset = h2_request(worker.port, "/trailers", [("te", "trailers")])
    assert reset is None
    assert headers[b":status"] == b"200"
    assert body == b"body with trailers\n"
    assert trailers == {b"x-checksum": b"abc123", b"x-count": b"1"}


def test_trailers_over_http1_chunked(worker):
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as s:
        s.sendall(b"GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert rest.endswith(b"0\r\nx-checksum: abc123\r\nx-count: 1\r\n\r\n")


def test_response_headers_lowercased_and_hop_by_hop_dropped_on_h2(worker):
    headers, body, _, _ = h2_request(worker.port, "/headers")
    assert headers[b":status"] == b"201"
    assert headers[b"content-type"] == b"text/plain"
    assert b"connection" not in headers
    r = curl("--http2-prior-knowledge", "-D", "-", worker.url("/headers"))
    assert r.stdout.count("x-multi:") == 2


def test_app_exception_before_start_gives_500_and_traceback(worker):
    for flag in ("--http1.1", "--http2-prior-knowledge"):
        r = curl(flag, "-w", "%{http_code}", "-o", "/dev/null", worker.url("/error-before"))
        assert r.stdout == "500"
    assert "probe: failing before the response" in worker.log()
    assert "Traceback" in worker.log()
    assert curl_json(worker.url("/pid"))["pid"] > 0  # still serving


def test_app_returning_without_response_gives_500(worker):
    r = curl("-w", "%{http_code}", "-o", "/dev/null", worker.url("/no-response"))
    assert r.stdout == "500"


def test_app_exception_after_start_resets_the_stream(worker):
    r = curl("--http2-prior-knowledge", worker.url("/error-after"))
    assert r.returncode != 0  # INTERNAL_ERROR reset, not a clean end
    _, _, _, reset = h2_request(worker.port, "/error-after")
    assert reset == 2  # INTERNAL_ERROR
    r = curl("--http1.1", worker.url("/error-after"))
    assert r.returncode != 0  # chunked body cut short


# /misuse?how=: each way an app breaks the ASGI contract, the status the
# client gets (None: the head had gone out, so the response is cut) and
# the error logged for it.
MISUSES = {
    "crlf": (500, "ValueError: header value contains CR, LF or NUL"),
    "nul": (500, "ValueError: header value contains CR, LF or NUL"),
    "name": (500, "ValueError: invalid header name b'x a'"),
    "name-empty": (500, "ValueError: invalid header name b''"),
    # 100 fields of 1000 bytes: HTTP/2 left the stream hanging (nghttp2
    # sends no header block over 64 KiB), HTTP/1.1 sent them
    "head-too-large": (500, "ValueError: header fields too large: 103990 bytes (counted as HTTP/2 does), "
                            "at most 64512"),
    "str": (500, "TypeError: header names and values must be bytes"),
    "triple": (500, "TypeError: each header must be a [name, value] pair"),
    "status": (500, "ValueError: invalid HTTP status 1000"),
    "status-103": (500, "ValueError: HTTP status 103 is informational, not a response's status"),
    "no-status": (500, "KeyError: 'http.response.start needs a status'"),
    "body-first": (500, "RuntimeError: http.response.body sent before http.response.start"),
    "not-a-dict": (500, "TypeError: send() takes a message dict"),
    "no-type": (500, "KeyError: 'message has no \"type\"'"),
    "websocket-type": (500, "RuntimeError: unexpected ASGI message type 'websocket.accept' for an http scope"),
    "start-twice": (500, "RuntimeError: http.response.start sent twice"),
    "after-end": (200, "RuntimeError: http.response.body sent after the response ended"),
    "trailers-unannounced": (200, "RuntimeError: http.response.trailers sent without trailers=True in "
                                  "http.response.start"),
    "trailers-twice": (200, "RuntimeError: http.response.trailers sent twice"),
    "receive-twice": (500, "RuntimeError: receive() awaited twice at the same time"),
    # The body must match the app's own Content-Length: more would run into
    # the next response on the connection, less would leave the client
    # waiting (both used to happen over HTTP/1.1).
    "length-longer": (500, "RuntimeError: response body longer than its Content-Length of 3 bytes"),
    "length-shorter": (500, "RuntimeError: response body ended at 4 of its Content-Length of 10 bytes"),
    "length-shorter-late": (None, "RuntimeError: response body ended at 6 of its Content-Length of 10 bytes"),
    "length-twice": (500, "ValueError: more than one Content-Length in the response"),
    "length-bogus": (500, "ValueError: invalid Content-Length in the response: b'4x'"),
}


@pytest.mark.parametrize("how", MISUSES)
def test_an_app_breaking_the_asgi_contract_gets_a_clear_error(worker, how):
    """send() refuses what ASGI does not allow (a header that would split
    the response, a status out of range, messages out of order) with an
    error that names it, and the app's exception is logged. While the head
    is still in the worker (even after http.response.start) the client gets
    a 500; once it has gone out, the response is cut; once the response is
    complete it stands. HTTP/1.1 keeps its connection for
    the next request when the answer was whole (curl sends both URLs on
    one)."""
    status, error = MISUSES[how]
    url = worker.url(f"/misuse?how={how}")
    before = worker.log().count(error)
    r = curl("--http1.1", "-w", "%{http_code} %{num_connects}\n", "-o", "/dev/null", url,
             "-o", "/dev/null", worker.url("/pid"))
    codes = r.stdout.split()
    if status is None:  # 200 and part of the body, then the connection closes
        assert codes == ["200", "1", "200", "1"] and "transfer closed" in r.stderr, (how, r.stdout, r.stderr)
    else:
        assert codes == [str(status), "1", "200", "0"], (how, r.stdout, r.stderr)  # one connection
    headers, body, _, reset = h2_request(worker.port, f"/misuse?how={how}")
    if status is None:
        assert reset == 2 and headers[b":status"] == b"200", (how, headers, reset)  # INTERNAL_ERROR
    else:
        assert headers[b":status"] == str(status).encode() and reset is None, (how, headers, reset)
        assert b"set-cookie" not in headers and (status != 200 or body == b"done"), (how, headers, body)
    assert eventually(lambda: worker.log().count(error) == before + 2), (how, worker.log()[-3000:])


def test_head_has_no_body(worker):
    for flag in ("--http1.1", "--http2-prior-knowledge"):
        r = curl(flag, "-I", worker.url("/download?size=1000"))
        assert r.returncode == 0
        assert "content-length: 1000" in r.stdout.lower()


def test_204_and_304_have_no_body_and_a_204_no_length(worker):
    """A 204 or 304 carries no body, whatever the app sends, and a 204 no
    Content-Length (RFC 9110 8.6; Django's CommonMiddleware sets one): an
    HTTP/2 client reset a 204 with "content-length: 4". The request after
    it on the same HTTP/1.1 connection is framed right."""
    for code in (204, 304):
        for length in (None, "0", "4"):
            target = f"/status?code={code}" + (f"&length={length}" if length else "")
            answer = raw_http(worker.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"
                                           "GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            head, rest = answer.split(b"\r\n\r\n", 1)
            assert head.startswith(f"HTTP/1.1 {code} ".encode()), (target, answer)
            kept = code == 304 and length  # a 304's length is the representation's
            assert (f"content-length: {length}".encode() in head.lower()) == bool(kept), (target, head)
            assert rest.startswith(b"HTTP/1.1 200 OK"), (target, answer)
            r = curl("--http2-prior-knowledge", "-sS", "-D", "-", "-o", "/dev/null", worker.url(target))
            assert r.returncode == 0 and r.stdout.startswith(f"HTTP/2 {code}"), (target, r.stdout, r.stderr)
            assert ("content-length" in r.stdout) == bool(kept), (target, r.stdout)


def test_oversized_headers_get_431(worker):
    # Default limit (64 KiB) with python-h2: curl and nghttp refuse to send
    # header blocks over 64 KiB themselves.
    fields = [(f"x-big{i}", "x" * 30000) for i in range(3)]
    headers, body, _, reset = h2_request(worker.port, "/scope", fields)
    assert headers[b":status"] == b"431" and reset is None
    # A smaller configured limit, with curl on both protocols.
    w = Worker("probe:app", args=["--limit-request-head", "16k"])
    try:
        big = "x" * 8000
        for flag in ("--http1.1", "--http2-prior-knowledge"):
            r = curl(flag, "-H", f"X-Big1: {big}", "-H", f"X-Big2: {big}", "-H", f"X-Big3: {big}",
                     "-w", "%{http_code}", "-o", "/dev/null", w.url("/scope"))
            assert r.stdout == "431", (flag, r.stdout, r.stderr)
        assert curl_json(w.url("/pid"))["pid"] > 0
    finally:
        w.stop()


def test_malformed_http1_gets_400(worker):
    for raw in (b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n",
                b"GET / HTTP/1.1\r\n Content-Length: 1\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as s:
            s.sendall(raw)
            data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 400 "), data


def test_a_request_head_that_trickles_or_stalls_is_cut_off():
    """Slowloris: an HTTP/1.1 head sent a byte at a time (never idle long
    enough for --timeout-keep-alive) and an HTTP/2 header block left
    unfinished held their connections for good. Past --timeout-request-head
    the first gets 408 and both are closed; a head that comes in time is
    served."""
    w = Worker("probe:app", args=["--timeout-request-head", "1"])
    try:
        head = b"GET /pid HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 40 + b"\r\n\r\n"
        with socket.create_connection(("127.0.0.1", w.port), timeout=10) as s:
            got = b""
            for i in range(len(head)):  # at most 60 x 0.2 s
                try:
                    s.sendall(head[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    break
                s.settimeout(0.2)
                try:
                    got = s.recv(4096)
                    break
                except socket.timeout:
                    pass
        assert got.startswith(b"HTTP/1.1 408 "), got
        with socket.create_connection(("127.0.0.1", w.port), timeout=10) as s:
            s.sendall(h2frames.PREFACE + h2frames.frame(h2frames.SETTINGS, 0, 0) +
                      h2frames.frame(h2frames.HEADERS, 0, 1, h2frames.GET_BLOCK))  # no END_HEADERS
            assert h2frames.read_until_closed(s, limit_s=8) == 0  # GOAWAY (NO_ERROR), then closed
        assert curl_json(w.url("/pid"))["pid"] > 0
        assert curl_json("--http2-prior-knowledge", w.url("/pid"))["pid"] > 0
    finally:
        w.stop()


def test_a_stream_reset_in_its_head_does_not_start_the_head_clock_for_good():
    """A stream nghttp2 resets inside its header block (an upper-case field
    name) never finished its head: its clock used to stay set, and a second
    later (--timeout-request-head 1) the connection ended with GOAWAY, a
    request still running on it. The request finishes."""
    w = Worker("probe:app", args=["--timeout-request-head", "1", "--timeout-keep-alive", "20"])
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
        conn.initiate_connection()
        base = [(":method", "GET"), (":scheme", "http"), (":authority", "x")]
        conn.send_headers(1, base + [(":path", "/sleep?s=2.5")], end_stream=True)
        conn.send_headers(3, base + [(":path", "/pid"), ("X-Upper", "1")], end_stream=True)
        seen = []
        with socket.create_connection(("127.0.0.1", w.port), timeout=10) as s:
            s.sendall(conn.data_to_send())
            while not any(isinstance(e, (h2.events.StreamEnded, h2.events.ConnectionTerminated)) for e in seen):
                data = s.recv(65536)  # bounded by the socket timeout
                if not data:
                    break
                seen += conn.receive_data(data)
                s.sendall(conn.data_to_send())
        assert any(isinstance(e, h2.events.StreamReset) and e.stream_id == 3 for e in seen), seen
        assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 1 for e in seen), seen
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in seen), seen
    finally:
        w.stop()


def get_block(path):
    """An HPACK block for GET path: :method GET, :scheme http, :path as a
    literal with the static table's name, :authority "x"."""
    p = path.encode()
    return bytes([0x82, 0x86, 0x04, len(p)]) + p + bytes([0x41, 0x01, ord("x")])


def test_a_stopping_worker_says_goaway_in_two_steps():
    """RFC 9113 6.8: a stopping worker process first sends a GOAWAY that
    refuses nothing (2^31-1) and a PING; only once the PING comes back, the
    GOAWAY naming the last stream. A request sent before the client read
    the first one is served, not refused: refused, the gateway must send it
    again, and an upload past the 64 KiB it keeps for that got a 502."""
    F = h2frames
    w = Worker("probe:app", workers=1)
    try:
        with F.connect(w.port) as s:
            s.sendall(F.frame(F.HEADERS, F.END_STREAM | F.END_HEADERS, 1, get_block("/sleep?s=1.5")))
            time.sleep(0.3)  # the app has it
            w.signal(signal.SIGTERM)
            first, _ = F.read_frames(s, lambda fs: any(f[0] == F.PING for f in fs)
                                     and any(f[0] == F.GOAWAY for f in fs))
            goaways = [f for f in first if f[0] == F.GOAWAY]
            assert goaways and goaways[0][3][:4] == b"\x7f\xff\xff\xff", first  # refuses nothing
            ping = next(f for f in first if f[0] == F.PING and not f[1] & F.ACK)
            # A request the client sent before it read the notice, the PING's
            # ACK, and one more request read in the same turn: the final
            # GOAWAY (naming stream 3) is queued but not out, and stream 5
            # must be refused, not run (the gateway would run it again).
            s.sendall(F.frame(F.HEADERS, F.END_STREAM | F.END_HEADERS, 3, get_block("/pid"))
                      + F.frame(F.PING, F.ACK, 0, ping[3])
                      + F.frame(F.HEADERS, F.END_STREAM | F.END_HEADERS, 5, get_block("/pid")))
            rest, _ = F.read_frames(s)  # until the worker closes
        final = [f for f in rest if f[0] == F.GOAWAY]
        assert final and int.from_bytes(final[0][3][:4], "big") == 3, rest
        for stream in (1, 3):
            assert any(f[0] == F.HEADERS and f[2] == stream for f in rest), (stream, rest)
            assert not any(f[0] == F.RST_STREAM and f[2] == stream for f in rest), (stream, rest)
        refused = [f for f in rest if f[2] == 5]
        assert refused == [(F.RST_STREAM, 0, 5, (7).to_bytes(4, "big"))], rest  # REFUSED_STREAM
    finally:
        w.stop()


def test_expect_100_continue(worker):
    r = curl("--http1.1", "-v", "-H", "Expect: 100-continue", "--data-binary", "x" * 2048,
             worker.url("/upload"))
    assert "HTTP/1.1 100 Continue" in r.stderr
    assert json.loads(r.stdout)["size"] == 2048


def test_http1_pipelining_in_order(worker):
    reqs = b"".join(f"GET /scope?n={i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(5))
    reqs += b"GET /scope?n=last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as s:
        s.sendall(reqs)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    order = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["query_string"]
             for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert order == [f"n={i}" for i in range(5)] + ["n=last"]


def test_h2load_and_nghttp(worker):
    r = run(["h2load", "-n", "2000", "-c", "4", "-m", "10", worker.url("/pid")], timeout=60)
    assert "2000 succeeded" in r.stdout, r.stdout
    r = run(["h2load", "--h1", "-n", "500", "-c", "4", worker.url("/pid")], timeout=60)
    assert "500 succeeded" in r.stdout, r.stdout
    r = run(["nghttp", "-nv", worker.url("/stream?n=3")], timeout=30)
    assert r.returncode == 0 and ":status: 200" in r.stdout


def test_httpx_http1_and_h2():
    w = Worker("probe:app")
    try:
        with httpx.Client() as c:
            assert c.get(w.url("/scope")).json()["http_version"] == "1.1"
        with httpx.Client(http1=False, http2=True) as c:
            r = c.post(w.url("/upload"), content=b"y" * 100000)
            assert r.http_version == "HTTP/2"
            assert r.json()["size"] == 100000
    finally:
        assert w.stop() == 0


def test_forwarded_headers_from_trusted_peer(worker):
    s = curl_json("-H", "X-Forwarded-For: 198.51.100.7, 203.0.113.5", "-H",
                  "X-Forwarded-Proto: https", "-H", "Via: 3 h3gate", worker.url("/scope"))
    assert s["client"][0] == "203.0.113.5"
    assert s["scheme"] == "https"
    assert s["http_version"] == "3"
    s = curl_json("-H", 'Forwarded: for="[2001:db8::1]:4711";proto=https', worker.url("/scope"))
    assert s["client"] == ["2001:db8::1", 4711]
    assert s["scheme"] == "https"


def test_forwarded_headers_from_untrusted_peer_change_nothing():
    w = Worker("probe:app", args=["--forwarded-allow-ips", "10.9.9.9"])
    try:
        s = curl_json("-H", "X-Forwarded-For: 203.0.113.5", "-H", "X-Forwarded-Proto: https",
                      "-H", "Via: 3 h3gate", w.url("/scope"))
        assert s["client"][0] == "127.0.0.1"
        assert s["scheme"] == "http"
        assert s["http_version"] == "1.1"
        assert ["x-forwarded-for", "203.0.113.5"] in s["headers"]
        assert ["via", "3 h3gate"] in s["headers"]
        # nor does its :scheme: the connection is cleartext (it used to be
        # the scope's scheme as written)
        status, body = h2_raw_request(w.port, [(":method", "GET"), (":path", "/scope"), (":scheme", "https"),
                                           (":authority", "x")])
        assert (status, json.loads(body)["scheme"]) == ("200", "http"), body
    finally:
        w.stop()


def test_unix_socket_factory_and_access_log(tmp_path):
    sock = tmp_path / "app.sock"
    w = Worker("factory_app:create_app", args=["--factory", "--uds", str(sock), "--access-log"])
    try:
        for flag in ("--http1.1", "--http2-prior-knowledge"):
            r = curl(flag, "--unix-socket", str(sock), "http://localhost/some/path?x=1")
            assert r.stdout == "made by a factory"
        assert curl(w.url("/")).stdout == "made by a factory"  # and the TCP bind too
        assert w.wait_log('"GET /some/path?x=1 HTTP/2" 200')
        assert w.wait_log('"GET /some/path?x=1 HTTP/1.1" 200')
    finally:
        assert w.stop() == 0
    assert not sock.exists()  # removed on exit


def test_worker_access_log_escapes_what_it_cannot_write_as_is():
    """--access-log writes a target whose bytes HTTP/2 lets through (a
    quote, bytes that are not UTF-8) escaped, as the gateway's log does:
    they used to be written raw, so the line's quoting broke and the log
    was not UTF-8."""
    w = Worker("probe:app", args=["--access-log"])
    try:
        head = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x")]
        status, _ = h2_raw_request(w.port, head + [(b":path", b'/x"\xff\xc3\xa9?a="b"')])
        assert status == "404", status
        assert w.wait_log('"GET /x\\"\\u00ff\u00e9?a=\\"b\\" HTTP/2" 404'), w.log()[-1000:]
        w.log().encode("utf-8")  # read as UTF-8 without replacements: the line was valid
        assert "\ufffd" not in w.log()
    finally:
        assert w.stop() == 0


def test_worker_out_of_file_descriptors_rests_accepting():
    """At its open-files limit a worker process's accept() fails with
    EMFILE while its listening socket stays readable: it spun a CPU and
    logged every try. It now rests accepting for 500 ms, says so once per
    rest, and the connections waiting in the backlog are served once files
    free up."""
    w = Worker("probe:app")
    try:
        pid, = w.worker_pids()
        open_now = len(os.listdir(f"/proc/{pid}/fd"))
        run(["prlimit", "--pid", str(pid), f"--nofile={open_now + 10}:"], check=True)
        held = [socket.create_connection(("127.0.0.1", w.port), timeout=10) for _ in range(40)]
        time.sleep(2)  # over the limit for a while
        warnings = w.log_count("accept: Too many open files")
        assert 1 <= warnings <= 10, (warnings, w.log()[-1000:])
        for s in held[:30]:
            s.close()
        for s in held[30:]:  # these waited in the backlog
            s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200"), "a connection from the backlog was lost"
            s.close()
    finally:
        assert w.stop() == 0


def test_factory_that_is_not_a_factory_fails_clearly():
    from h3env import APPS, BIN, free_port, run
    r = run([BIN / "h3gate-worker", "--bind", f"127.0.0.1:{free_port()}", "--app-dir", APPS,
             "--factory", "probe:app"], timeout=60)
    assert r.returncode == 1 and 'app factory "probe:app" raised' in r.stderr


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_event_loop_choice(loop):
    w = Worker("probe:app", args=["--loop", loop, "--log-level", "debug"])
    try:
        assert curl_json("--http2-prior-knowledge", w.url("/scope"))["http_version"] == "2"
        assert w.wait_log(f"worker serving with the {loop} event loop")
    finally:
        assert w.stop() == 0


def test_keep_alive_timeout_closes_idle_connections_only():
    """--timeout-keep-alive: an idle HTTP/1.1 connection is closed, an idle
    h2c one gets GOAWAY (NO_ERROR) first; one with a request in flight
    longer than the timeout is left alone and gets its answer."""
    from h2frames import connect, read_until_closed

    w = Worker("probe:app", args=["--timeout-keep-alive", "1"])
    try:
        # closed after the 1 s asked for, not the default 5 s (the sweep runs each second)
        with socket.create_connection(("127.0.0.1", w.port), timeout=10) as s:
            s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert s.recv(65536) == b""
            assert time.monotonic() - started < 4
        s = connect(w.port)
        try:
            started = time.monotonic()
            assert read_until_closed(s, limit_s=10) == 0  # GOAWAY NO_ERROR, then closed
            assert time.monotonic() - started < 4
        finally:
            s.close()
        with socket.create_connection(("127.0.0.1", w.port), timeout=10) as s:
            s.sendall(b"GET /sleep?s=2 HTTP/1.1\r\nHost: x\r\n\r\n")  # longer than the timeout
            answer = b""
            while b"slept" not in answer:
                chunk = s.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        assert w.stop() == 0
