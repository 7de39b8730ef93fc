"""WebSockets end to end: python3-websockets over HTTP/1.1 (directly to the
worker and through the gateway over TLS), Python h2 as an RFC 8441 client,
h3load as an RFC 9220 client, Starlette and FastAPI endpoints, errors,
shutdown, a dying backend and 1,000 concurrent sessions."""

import asyncio
import base64
import json
import os
import re
import signal
import socket
import ssl
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
import websockets

from h3env import (BASIC_CONFIG, BIN, Gateway, Worker, curl, curl_json, eventually, free_port, rss_kb,
                   run)

BIG = 16 * 1024 * 1024


def wsrun(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def tls_ctx(alpn=None):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def disconnects(worker):
    return curl_json(worker.url("/disconnects"))


def sessions(worker):
    return curl_json(worker.url("/sessions"))


@pytest.fixture(scope="module")
def worker():
    w = Worker("ws_app:app", workers=1)
    yield w
    assert w.stop() == 0


def gateway_for(backend_port_or_worker, *timeouts):
    """A gateway in front of one backend, with extra `timeouts:` keys."""
    port = getattr(backend_port_or_worker, "port", backend_port_or_worker)
    config = BASIC_CONFIG.replace("  response_header: {response_timeout}",
                                  "\n".join(["  response_header: {response_timeout}"] +
                                            [f"  {t}" for t in timeouts]))
    return Gateway(config, servers=f"127.0.0.1:{port}", response_timeout="10s")


@pytest.fixture(scope="module")
def gateway(worker):
    g = gateway_for(worker)
    yield g
    assert g.stop() == 0


# ---------------------------------------------------------------------------
# Clients: a masked-frame writer, a raw HTTP/1.1 handshake, an RFC 8441 client.

def client_frame(opcode, payload, fin=True, mask=True):
    key = os.urandom(4) if mask else b""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if mask:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + payload


def parse_frames(buf):
    """Server frames (unmasked) from buf: ([(opcode, payload)], rest)."""
    out = []
    while len(buf) >= 2:
        n = buf[1] & 0x7F
        p = 2
        if n == 126:
            if len(buf) < 4:
                break
            n, p = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, p = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < p + n:
            break
        out.append((buf[0] & 0x0F, buf[p:p + n]))
        buf = buf[p + n:]
    return out, buf


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


class RawWebSocket:
    """An HTTP/1.1 handshake by hand, for what polite clients won't send."""

    def __init__(self, port, path, tls=False):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = tls_ctx(["http/1.1"]).wrap_socket(s) if tls else s
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            head += chunk
        self.head, _, self.buf = head.partition(b"\r\n\r\n")
        self.status = int(self.head.split(b" ")[1])

    def body(self):
        """The rest of a refused handshake's response (the server closes)."""
        data = self.buf
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return data
            data += chunk

    def send(self, data):
        self.sock.sendall(data)

    def frames_until_close(self, limit_s=10):
        deadline = time.monotonic() + limit_s
        got = []
        while time.monotonic() < deadline:
            frames, self.buf = parse_frames(self.buf)
            got += frames
            if any(op == 8 for op, _ in got):
                return got
            chunk = self.sock.recv(65536)
            if not chunk:
                return got
            self.buf += chunk
        return got


class H2WebSocket:
    """RFC 8441 over Python's h2, cleartext (prior knowledge) or TLS (ALPN h2)."""

    def __init__(self, port, path, tls=False, protocol="websocket", method="CONNECT", version="13"):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = tls_ctx(["h2"]).wrap_socket(s) if tls else s
        self.rawbuf, self.data, self.goaway = b"", b"", False
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.enable_connect = None
        while self.enable_connect is None:
            self._pump(lambda e: None)
        self.sid = self.conn.get_next_available_stream_id()
        self.status, self.headers, self.ended, self.reset = None, {}, False, None
        self.conn.send_headers(self.sid, [
            (":method", method), (":protocol", protocol), (":scheme", "https" if tls else "http"),
            (":path", path), (":authority", "localhost")] +
            [("sec-websocket-version", v) for v in ([version] if isinstance(version, str) else version or [])])
        self.sock.sendall(self.conn.data_to_send())
        while self.status is None and not self.reset:
            self._pump()

    def _raw_frames(self, chunk):
        """Our stream's DATA, read from the raw frames: Python's h2 refuses
        any frame after a GOAWAY, though RFC 9113 6.8 lets open streams go on."""
        self.rawbuf += chunk
        while len(self.rawbuf) >= 9:
            length = int.from_bytes(self.rawbuf[:3], "big")
            if len(self.rawbuf) < 9 + length:
                break
            ftype, flags = self.rawbuf[3], self.rawbuf[4]
            sid = int.from_bytes(self.rawbuf[5:9], "big") & 0x7FFFFFFF
            payload = self.rawbuf[9:9 + length]
            self.rawbuf = self.rawbuf[9 + length:]
            if ftype == 0 and sid == getattr(self, "sid", None):
                if flags & 0x8:  # PADDED
                    payload = payload[1:len(payload) - payload[0]]
                self.data += payload

    def _pump(self, on_event=None):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        self._raw_frames(chunk)
        if self.goaway:
            return
        try:
            events = self.conn.receive_data(chunk)
        except h2.exceptions.ProtocolError:
            self.goaway = True
            return
        for e in events:
            if isinstance(e, h2.events.RemoteSettingsChanged):
                self.enable_connect = self.conn.remote_settings.get(
                    h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL, 0)
            elif isinstance(e, h2.events.ResponseReceived):
                self.headers = {k.decode(): v.decode() for k, v in e.headers}
                self.status = int(self.headers[":status"])
            elif isinstance(e, h2.events.DataReceived):
                self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.ConnectionTerminated):
                self.goaway = True
            elif isinstance(e, h2.events.StreamEnded):
                self.ended = True
            elif isinstance(e, h2.events.StreamReset):
                self.reset = e.error_code
        if not self.goaway:
            self.sock.sendall(self.conn.data_to_send())

    def send(self, data):
        step = self.conn.max_outbound_frame_size
        for i in range(0, len(data), step):
            while self.conn.local_flow_control_window(self.sid) < min(step, len(data) - i):
                self._pump()
            self.conn.send_data(self.sid, data[i:i + step])
            self.sock.sendall(self.conn.data_to_send())

    def messages(self, count, limit_s=10):
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            frames, rest = parse_frames(self.data)
            if len(frames) >= count or self.ended or self.reset:
                self.data = rest
                return frames
            self._pump()
        raise TimeoutError("no messages")

    def end(self):
        self.conn.end_stream(self.sid)
        self.sock.sendall(self.conn.data_to_send())


# ---------------------------------------------------------------------------
# The worker on its own.

@pytest.mark.parametrize("fields,status", [
    ("Sec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13", 400),
    ("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\nSec-WebSocket-Version: 13", 400),
    ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
     "Sec-WebSocket-Version: 13", 400),
    ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", 400),
    ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8", 426),
    ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13", 101),
], ids=["short-key", "key-of-15-bytes", "two-keys", "no-version", "version-8", "valid"])
def test_handshakes_that_rfc_6455_refuses(gateway, worker, fields, status):
    """RFC 6455 4.2.1: the key must be 16 bytes in base64 (a MUST; any key
    used to get its 101), and 4.4: another version gets 426 Upgrade
    Required naming version 13 (it got a bare 400). At the gateway and the
    worker alike."""
    for port in (gateway.plain_port, worker.port):
        request = (f"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"{fields}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head and (chunk := s.recv(65536)):
                head += chunk
        lines = head.split(b"\r\n\r\n")[0].decode().lower().split("\r\n")
        assert int(lines[0].split()[1]) == status, (port, lines)
        assert ("sec-websocket-version: 13" in lines) == (status == 426), (port, lines)
        why = {400: b"malformed WebSocket handshake", 426: b"WebSocket version 13 only", 101: b""}[status]
        assert why in head.split(b"\r\n\r\n", 1)[1], (port, head)  # the body says why


def test_worker_echo_over_http1(worker):
    async def go():
        url = f"ws://127.0.0.1:{worker.port}"
        async with websockets.connect(url + "/echo?sub=1", subprotocols=["chat", "v2"],
                                      max_size=None) as ws:
            assert ws.subprotocol == "chat"
            assert ws.response_headers["x-app"] == "echo"
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\xff\x10")
            assert await ws.recv() == b"\x00\xff\x10"
            await ws.send(["frag", "men", "ted"])  # one message in three frames
            assert await ws.recv() == "fragmented"
            big = os.urandom(BIG)
            await ws.send(big)
            assert await ws.recv() == big
            assert await ws.ping(b"are you there") is not None
        async with websockets.connect(url + "/scope?x=1", subprotocols=["a", "b"]) as ws:
            scope = json.loads(await ws.recv())
        assert scope["type"] == "websocket" and scope["http_version"] == "1.1"
        assert scope["scheme"] == "ws" and scope["path"] == "/scope"
        assert scope["query_string"] == "x=1" and scope["subprotocols"] == ["a", "b"]
        assert scope["asgi"] == {"version": "3.0", "spec_version": "2.3"}
        assert "websocket.http.response" in scope["extensions"] and not scope["has_method"]
    wsrun(go())


def test_a_burst_of_websockets_on_a_cold_gateway_reaches_every_process():
    """20 WebSockets at once on a gateway with no backend connection yet:
    they waited for the connection to each worker process rather than all
    going over the first one up, where they stayed for their lives (one
    process did all the work; wsload's 100 sessions: 44 ticks of CPU
    against none)."""
    w = Worker("ws_app:app", workers=2)
    g = gateway_for(w)
    try:
        async def go():
            async def session():
                async with websockets.connect(f"ws://127.0.0.1:{g.plain_port}/scope") as ws:
                    pid = json.loads(await ws.recv())["pid"]
                    await asyncio.sleep(0.5)  # all open at once
                    return pid
            return await asyncio.gather(*(session() for _ in range(20)))
        pids = wsrun(go())
        counts = sorted(pids.count(p) for p in set(pids))
        assert set(pids) == set(w.worker_pids()) and counts[0] >= 8, counts
    finally:
        g.stop()
        w.stop()


def test_worker_keeps_every_message_in_a_burst(worker):
    """More messages in one read than the bridge's inbox holds, while the app
    waits in receive(): all come back, once each, in order."""
    r = RawWebSocket(worker.port, "/echo")
    assert r.status == 101
    r.send(b"".join(client_frame(1, f"b{i}".encode()) for i in range(300)))
    got = []
    deadline = time.monotonic() + 15
    while len(got) < 300 and time.monotonic() < deadline:
        frames, r.buf = parse_frames(r.buf)
        got += [p for _, p in frames]
        if len(got) < 300:
            r.buf += r.sock.recv(65536)
    assert got == [f"b{i}".encode() for i in range(300)]


def test_worker_keeps_every_message_when_the_app_is_slow(worker):
    """Messages pile up while the app sleeps (more than the bridge's inbox
    holds): all come back, once each, in order, over HTTP/1.1 and HTTP/2."""
    async def go():
        async with websockets.connect(f"ws://127.0.0.1:{worker.port}/slow-echo") as ws:
            for i in range(200):
                await ws.send(f"m{i}")
            return [await ws.recv() for _ in range(200)]
    assert wsrun(go()) == [f"m{i}" for i in range(200)]
    c = H2WebSocket(worker.port, "/slow-echo")
    assert c.status == 200
    c.send(b"".join(client_frame(1, f"m{i}".encode()) for i in range(200)))
    frames = []
    deadline = time.monotonic() + 15
    while len(frames) < 200 and time.monotonic() < deadline:
        frames += c.messages(1)
    assert [p for _, p in frames] == [f"m{i}".encode() for i in range(200)]


def test_worker_close_codes_both_ways(worker):
    async def go():
        url = f"ws://127.0.0.1:{worker.port}/echo"
        async with websockets.connect(url) as ws:
            await ws.send("close:4001:server says bye")
            with pytest.raises(websockets.ConnectionClosed) as e:
                await ws.recv()
            assert (e.value.code, e.value.reason) == (4001, "server says bye")
        ws = await websockets.connect(url)
        await ws.close(code=4003, reason="client says bye")
        assert ws.close_code == 4003  # the app echoed our code
    wsrun(go())
    assert 4003 in eventually(lambda: 4003 in disconnects(worker) and disconnects(worker))


def test_worker_denials_and_app_errors(worker):
    r = RawWebSocket(worker.port, "/deny")
    assert r.status == 401 and b"x-denied: yes" in r.head.lower()
    assert b"no entry" in r.body()
    assert RawWebSocket(worker.port, "/reject").status == 403
    assert RawWebSocket(worker.port, "/raise-before").status == 500
    r = RawWebSocket(worker.port, "/raise-after")
    assert r.status == 101
    frames = r.frames_until_close()
    assert close_code(frames[-1][1]) == 1011
    # not a WebSocket handshake we speak: version 13 is required (426, RFC 6455 4.4)
    s = socket.create_connection(("127.0.0.1", worker.port), timeout=10)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 426")


# /misuse?how=: the answer (an HTTP status before accepting, a close code
# after) and the error the worker logs for it.
WS_MISUSES = {
    "subprotocol-bytes": (500, "TypeError: websocket.accept: subprotocol must be a str"),
    "header-crlf": (500, "ValueError: header value contains CR, LF or NUL"),
    "send-before-accept": (500, "RuntimeError: websocket.send before websocket.accept"),
    "http-type": (500, "RuntimeError: unexpected ASGI message type 'http.response.start' for a websocket scope"),
    "body-without-start": (500, "RuntimeError: websocket.http.response.body without websocket.http.response.start"),
    "accept-twice": (1011, "RuntimeError: websocket.accept after the handshake was answered"),
    "send-nothing": (1011, "TypeError: websocket.send needs \"bytes\" or a str \"text\""),
    "close-1005": (1011, "ValueError: websocket.close: 1005 is not a close code one may send"),
    "close-4294968296": (1011, "ValueError: websocket.close: 4294968296 is not a close code one may send"),
    "deny-after-accept": (1011, "RuntimeError: websocket.http.response.start after the handshake"),
}


@pytest.mark.parametrize("how", WS_MISUSES)
def test_worker_app_breaking_the_websocket_contract_gets_a_clear_error(worker, how):
    """send() in a websocket scope refuses what ASGI does not allow, with
    an error naming it in the log: before accepting, the handshake gets a
    500 (and no injected header); after, the WebSocket closes with 1011.
    2**32 + 1000 used to pass as 1000 (cut to 32 bits)."""
    answer, error = WS_MISUSES[how]
    before = worker.log().count(error)
    r = RawWebSocket(worker.port, f"/misuse?how={how}")
    if answer >= 1000:
        assert r.status == 101, (how, r.head)
        frames = r.frames_until_close()
        assert close_code(frames[-1][1]) == answer, (how, frames)
    else:
        assert r.status == answer and b"x-injected" not in r.head.lower(), (how, r.head)
    assert eventually(lambda: worker.log().count(error) == before + 1), (how, worker.log()[-3000:])


@pytest.mark.parametrize("frame,code", [
    (client_frame(1, b"unmasked", mask=False), 1002),
    (client_frame(1, b"bad \xff utf-8"), 1007),
    (client_frame(2, b"x" * 2048), 1009),
    (client_frame(0, b"continuation of nothing"), 1002),
    (bytes([0xC1, 0x80]) + b"\0\0\0\0", 1002),  # RSV1 without an extension
])
def test_worker_protocol_errors_close_with_the_right_code(frame, code):
    w = Worker("ws_app:app", args=["--ws-max-size", "1k"])
    try:
        r = RawWebSocket(w.port, "/echo")
        assert r.status == 101
        r.send(client_frame(9, b"ping!"))  # answered with a pong, before the error
        r.send(frame)
        frames = r.frames_until_close()
        assert frames[0] == (10, b"ping!")
        assert frames[-1][0] == 8 and close_code(frames[-1][1]) == code
        assert code in eventually(lambda: disconnects(w))
    finally:
        assert w.stop() == 0


def test_worker_keepalive_pings():
    """A quiet client is pinged; one that answers stays, one that doesn't is
    closed with 1011 (uvicorn's --ws-ping-interval/--ws-ping-timeout)."""
    w = Worker("ws_app:app", args=["--ws-ping-interval", "1", "--ws-ping-timeout", "1"])
    try:
        silent = RawWebSocket(w.port, "/echo")  # never answers
        assert silent.status == 101

        async def answering():
            async with websockets.connect(f"ws://127.0.0.1:{w.port}/echo", ping_interval=None) as ws:
                await asyncio.sleep(4)  # the library answers the worker's pings by itself
                await ws.send("alive")
                return await ws.recv()
        assert wsrun(answering(), timeout=30) == "alive"
        frames = silent.frames_until_close(limit_s=10)
        assert frames[0][0] == 9, frames  # a ping first
        assert frames[-1][0] == 8 and close_code(frames[-1][1]) == 1011, frames
    finally:
        assert w.stop() == 0


def test_worker_rfc8441(worker):
    c = H2WebSocket(worker.port, "/scope")
    assert c.enable_connect == 1 and c.status == 200
    (op, payload), = c.messages(1)
    scope = json.loads(payload)
    assert scope["http_version"] == "2" and scope["type"] == "websocket" and scope["scheme"] == "ws"
    c.send(client_frame(1, b"over h2"))
    assert c.messages(1) == [(1, b"over h2")]
    c.send(client_frame(8, struct.pack("!H", 1000) + b"done"))
    frames = c.messages(1)
    assert frames[0][0] == 8 and close_code(frames[0][1]) == 1000
    c.end()
    # a plain CONNECT tunnel is not served
    assert H2WebSocket(worker.port, "/", protocol="not-websocket").status in (400, 501)


@pytest.mark.parametrize("version,status", [(None, 400), ("8", 426), (["13", "13"], 426), ("13", 200)],
                         ids=["none", "8", "13-twice", "13"])
def test_rfc8441_handshakes_check_the_version(gateway, worker, version, status):
    """RFC 8441 5 keeps RFC 6455's version: an extended CONNECT without
    Sec-WebSocket-Version is a 400, another version (or more than one) a
    426 naming 13 (the worker decides; through the gateway too). Any
    version used to open the WebSocket."""
    for port in (worker.port, gateway.plain_port):
        c = H2WebSocket(port, "/echo", version=version)
        assert c.status == status, (port, c.status, c.headers)
        assert (c.headers.get("sec-websocket-version") == "13") == (status == 426), (port, c.headers)


def close_after_sigterm(server, url, **connect_args):
    """Opens a WebSocket, sends the server SIGTERM and waits for the close:
    (close code, seconds it took)."""
    async def go():
        async with websockets.connect(url, **connect_args) as ws:
            server.signal(signal.SIGTERM)
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as e:
                await ws.recv()
            return e.value.code, time.monotonic() - started
    return wsrun(go(), timeout=30)


def test_worker_graceful_stop_closes_with_1001():
    w = Worker("ws_app:app", args=["--graceful-timeout", "1"])
    code, took = close_after_sigterm(w, f"ws://127.0.0.1:{w.port}/hold")
    assert code == 1001 and took < 10
    assert w.stop() == 0
    assert "closing 1 WebSockets with 1001" in w.log()


# ---------------------------------------------------------------------------
# Through the gateway: HTTP/1.1 (TLS), HTTP/2 (RFC 8441), HTTP/3 (RFC 9220).

def test_gateway_http1_over_tls(gateway, worker):
    async def go():
        url = f"wss://127.0.0.1:{gateway.tls_port}"
        async with websockets.connect(url + "/scope", ssl=tls_ctx()) as ws:
            scope = json.loads(await ws.recv())
        assert scope["http_version"] == "1.1" and scope["scheme"] == "wss"
        assert scope["client"][0] == "127.0.0.1"
        headers = dict(scope["headers"])
        assert headers["via"] == "1.1 h3gate" and "sec-websocket-key" not in headers
        async with websockets.connect(url + "/echo?sub=1", subprotocols=["chat"], ssl=tls_ctx(),
                                      max_size=None) as ws:
            assert ws.subprotocol == "chat" and ws.response_headers["x-app"] == "echo"
            # a 101 ends HTTP on this connection: nothing to advertise
            assert "alt-svc" not in ws.response_headers
            await ws.send("through the gateway")
            assert await ws.recv() == "through the gateway"
            await ws.send([b"a" * 70000, b"b" * 70000])
            assert await ws.recv() == b"a" * 70000 + b"b" * 70000
            big = os.urandom(BIG)
            await ws.send(big)
            assert await ws.recv() == big
            await ws.send("close:4005:from the app")
            with pytest.raises(websockets.ConnectionClosed) as e:
                await ws.recv()
            assert (e.value.code, e.value.reason) == (4005, "from the app")
        ws = await websockets.connect(url + "/echo", ssl=tls_ctx())
        await ws.close(code=4006, reason="from the client")
        assert ws.close_code == 4006
    wsrun(go())
    assert 4006 in eventually(lambda: 4006 in disconnects(worker) and disconnects(worker))
    r = RawWebSocket(gateway.tls_port, "/deny", tls=True)
    assert r.status == 401 and b"x-denied: yes" in r.head.lower()
    assert b"no entry" in r.body()
    assert RawWebSocket(gateway.tls_port, "/reject", tls=True).status == 403


def test_gateway_rfc8441_over_tls(gateway):
    c = H2WebSocket(gateway.tls_port, "/scope", tls=True)
    assert c.enable_connect == 1 and c.status == 200
    (op, payload), = c.messages(1)
    scope = json.loads(payload)
    assert scope["http_version"] == "2" and scope["scheme"] == "wss"
    big = os.urandom(300000)
    c.send(client_frame(2, big))
    assert c.messages(1) == [(2, big)]
    c.send(client_frame(8, struct.pack("!H", 4007)))
    frames = c.messages(1)
    assert close_code(frames[0][1]) == 4007
    c.end()
    assert H2WebSocket(gateway.tls_port, "/", tls=True, protocol="bogus").status == 501


def test_wsload_the_bench_client(worker):
    """bench/websocket.sh's client: it checks every echoed byte, so it must
    succeed on an echo (small messages, and 3 MB ones that fill the socket)
    and fail, with a non-zero exit, on a refused handshake or a dead port."""
    url = f"ws://127.0.0.1:{worker.port}"
    r = run([BIN / "wsload", "-c", "5", "-n", "50", url + "/echo"], timeout=60)
    assert r.returncode == 0 and "250 messages" in r.stdout, r.stdout + r.stderr
    r = run([BIN / "wsload", "-c", "2", "-n", "3", "-s", "3000000", url + "/echo"], timeout=60)
    assert r.returncode == 0 and "6 messages" in r.stdout, r.stdout + r.stderr
    r = run([BIN / "wsload", "-c", "2", "-n", "3", url + "/reject"], timeout=30)
    assert r.returncode != 0 and "failed 2" in r.stdout and "403" in r.stderr
    r = run([BIN / "wsload", "-c", "1", "-n", "1", "-t", "5", "ws://127.0.0.1:1/echo"], timeout=30)
    assert r.returncode != 0 and "failed 1" in r.stdout
    with socket.socket() as silent:  # accepts, never answers: the time limit ends it
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        r = run([BIN / "wsload", "-c", "2", "-n", "1", "-t", "1",
                 f"ws://127.0.0.1:{silent.getsockname()[1]}/echo"], timeout=30)
    assert r.returncode != 0 and "unfinished 2" in r.stdout, r.stdout + r.stderr


def test_gateway_rfc9220_with_h3load(gateway, worker):
    url = f"https://127.0.0.1:{gateway.tls_port}/echo"
    r = run([BIN / "h3load", "-n", "60", "-c", "3", "-m", "20", "--websocket", "20",
             "--ws-size", "1000", url], timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "60 succeeded" in r.stdout and "1200 messages" in r.stdout
    # the echoes and their frame headers, each counted once
    received = int(re.search(r"traffic: (\d+) bytes", r.stdout).group(1))
    assert 1200 * 1000 < received < 1200 * 1100, r.stdout
    r = run([BIN / "h3load", "-n", "1", "--websocket", "2", "--ws-size", str(BIG), url], timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ["3", "wss", "127.0.0.1"] in sessions(worker)
    # a refusal reaches the HTTP/3 client as the app's status
    r = run([BIN / "h3load", "-n", "1", "--websocket", "1", gateway.tls_url("/deny")[:-5] + "/deny"],
            timeout=30)
    assert "1 4xx" in r.stdout


def test_starlette_and_fastapi_endpoints_through_the_gateway():
    results = {}
    for name in ("starlette_app", "fastapi_app"):
        w = Worker(f"ws_frameworks:{name}")
        g = gateway_for(w)
        url = f"wss://127.0.0.1:{g.tls_port}"

        async def go():
            async with websockets.connect(url + "/echo", ssl=tls_ctx(), subprotocols=["p1"]) as ws:
                await ws.send("x")
                echoed = await ws.recv()
            members = [await websockets.connect(url + "/broadcast", ssl=tls_ctx()) for _ in range(3)]
            for i, m in enumerate(members):
                assert json.loads(await m.recv())["members"] == i + 1
            await members[0].send("to everyone")
            heard = [await m.recv() for m in members]
            for m in members:
                await m.close()
            return echoed, heard

        try:
            results[name] = wsrun(go())
            if name == "fastapi_app":
                assert RawWebSocket(g.tls_port, "/private", tls=True).status == 403

                async def private():
                    async with websockets.connect(url + "/private?token=secret", ssl=tls_ctx()) as ws:
                        assert await ws.recv() == "welcome"
                        with pytest.raises(websockets.ConnectionClosed) as e:
                            await ws.recv()
                        return e.value.code, e.value.reason
                assert wsrun(private()) == (4000, "bye")
        finally:
            g.stop()
            w.stop()
    assert results["starlette_app"] == ("x", ["to everyone"] * 3)
    assert results["fastapi_app"] == ("fastapi:x", ["to everyone"] * 3)


def test_backend_dying_mid_session_closes_the_client():
    w = Worker("ws_app:app")
    g = gateway_for(w)
    try:
        h2c = H2WebSocket(g.tls_port, "/echo", tls=True)
        assert h2c.status == 200

        async def go():
            async with websockets.connect(f"wss://127.0.0.1:{g.tls_port}/hold", ssl=tls_ctx()) as ws:
                for pid in w.worker_pids():
                    os.kill(pid, signal.SIGKILL)
                started = time.monotonic()
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                return time.monotonic() - started
        assert wsrun(go(), timeout=30) < 10
        # the HTTP/2 client's stream is reset rather than left hanging
        deadline = time.monotonic() + 10
        while not (h2c.reset or h2c.ended) and time.monotonic() < deadline:
            h2c._pump()
        assert h2c.reset is not None or h2c.ended
    finally:
        g.stop()
        w.stop()


def test_a_thousand_concurrent_websockets_in_bounded_memory():
    w = Worker("ws_app:app")
    g = gateway_for(w)
    n = 1000
    try:
        base_rss = rss_kb(g.pid)

        async def go():
            url = f"ws://127.0.0.1:{g.plain_port}/echo"
            socks = []
            for i in range(0, n, 100):  # connect in batches: bounded accept bursts
                socks += await asyncio.gather(*(websockets.connect(url, open_timeout=30)
                                                for _ in range(100)))
            await asyncio.gather(*(ws.send(f"hi {i}") for i, ws in enumerate(socks)))
            replies = await asyncio.gather(*(ws.recv() for ws in socks))
            peak = rss_kb(g.pid)
            await asyncio.gather(*(ws.close() for ws in socks))
            return replies, peak

        replies, peak = wsrun(go(), timeout=120)
        assert replies == [f"hi {i}" for i in range(n)]
        growth_mb = (peak - base_rss) / 1024
        print(f"gateway RSS: {base_rss} kB idle, {peak} kB with {n} WebSockets open")
        assert growth_mb < 64, f"{growth_mb:.1f} MB for {n} WebSockets"
    finally:
        g.stop()
        w.stop()


def upstream_streams_in_flight(admin):
    """Sum of h3gate_upstream_in_flight and h3gate_requests_in_flight."""
    r = run(["curl", "-sS", f"http://127.0.0.1:{admin}/metrics"], timeout=10)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines()
             if l.startswith(("h3gate_upstream_in_flight", "h3gate_requests_in_flight"))]
    assert len(lines) >= 2, r.stdout
    return sum(float(l.rsplit(" ", 1)[1]) for l in lines)


def test_ended_sessions_give_back_their_upstream_streams(worker):
    """Each session is a stream on a pooled upstream connection; when it
    ends, however it ends, the stream must be gone. A leaked one holds a
    slot for good, and once the slots run out every request waits for a
    504 (it happened: a client that closes its TCP connection after the
    close handshake left its stream half-open)."""
    admin = free_port()
    g = Gateway(BASIC_CONFIG + f"admin: {{{{address: 127.0.0.1:{admin}}}}}\n",
                servers=f"127.0.0.1:{worker.port}", response_timeout="10s")
    try:
        async def go():
            url = f"ws://127.0.0.1:{g.plain_port}/echo"
            for i in range(20):  # close handshake from the client, then TCP close
                async with websockets.connect(url) as ws:
                    await ws.send(f"hi {i}")
                    assert await ws.recv() == f"hi {i}"
            ws = await websockets.connect(url)  # the app closes first
            await ws.send("close:4001:bye")
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            for _ in range(5):  # the TCP connection dropped mid-session
                ws = await websockets.connect(url)
                await ws.send("x")
                await ws.recv()
                ws.transport.abort()
        wsrun(go())
        for _ in range(5):  # RFC 8441: close frames both ways, then END_STREAM
            c = H2WebSocket(g.plain_port, "/echo")
            c.send(client_frame(8, struct.pack("!H", 1000)))
            assert close_code(c.messages(1)[0][1]) == 1000
            c.end()
        r = run([BIN / "h3load", "-n", "10", "-c", "2", "--websocket", "3",
                 g.tls_url("/echo")], timeout=60)
        assert r.returncode == 0 and "10 succeeded" in r.stdout, r.stdout + r.stderr
        left = eventually(lambda: upstream_streams_in_flight(admin) == 0 or None)
        assert left, f"{upstream_streams_in_flight(admin)} streams still open after every session ended"
    finally:
        g.stop()


def gateway_connections_to(g, port):
    r = run(["ss", "-Htnp", "state", "established", f"dport = :{port}"], timeout=10)
    return sum(f"pid={g.pid}," in line for line in r.stdout.splitlines())


def test_more_sessions_than_upstream_streams_open_more_connections():
    """A backend allows 4 streams per connection and the pool keeps one
    connection: 30 concurrent sessions must not wait for a slot (they would
    get a 504); the pool opens connections as needed and closes the extra
    ones when the sessions are gone."""
    w = Worker("ws_app:app", args=["--h2-max-concurrent-streams", "4"])
    config = BASIC_CONFIG.replace("    resolve_interval: 1s",
                                  "    resolve_interval: 1s\n    connections_per_server: 1")
    g = Gateway(config, servers=f"127.0.0.1:{w.port}", response_timeout="3s")
    n = 30
    try:
        async def go():
            url = f"ws://127.0.0.1:{g.plain_port}/echo"
            socks = await asyncio.gather(*(websockets.connect(url, open_timeout=20)
                                           for _ in range(n)))
            await asyncio.gather(*(ws.send(f"hi {i}") for i, ws in enumerate(socks)))
            replies = await asyncio.gather(*(ws.recv() for ws in socks))
            during = gateway_connections_to(g, w.port)
            await asyncio.gather(*(ws.close() for ws in socks))
            return replies, during

        replies, during = wsrun(go(), timeout=60)
        assert replies == [f"hi {i}" for i in range(n)]
        assert during >= n // 4, f"{during} upstream connections for {n} sessions"
        assert eventually(lambda: gateway_connections_to(g, w.port) <= 1 or None), \
            f"{gateway_connections_to(g, w.port)} upstream connections left after the sessions ended"
        r = curl(g.plain_url("/sessions"))  # the one left still serves
        assert r.returncode == 0 and r.stdout.startswith("["), r.stdout + r.stderr
    finally:
        g.stop()
        w.stop()


def test_websocket_idle_timeout_is_its_own():
    """A WebSocket outlives the ordinary idle timeout while it is quiet, and
    is closed after timeouts.websocket_idle without a frame either way."""
    w = Worker("ws_app:app")
    g = gateway_for(w, "idle: 300ms", "websocket_idle: 2s")
    try:
        async def go():
            async with websockets.connect(f"ws://127.0.0.1:{g.plain_port}/echo",
                                          ping_interval=None) as ws:
                await asyncio.sleep(1.0)  # over `idle`, under `websocket_idle`
                await ws.send("still here")
                assert await ws.recv() == "still here"
                started = time.monotonic()
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()  # nothing moves: the gateway closes it
                return time.monotonic() - started
        quiet = wsrun(go(), timeout=30)
        assert 1.5 < quiet < 6, quiet
    finally:
        g.stop()
        w.stop()


def test_gateway_stop_closes_websockets_with_1001():
    """SIGTERM to the gateway: when the graceful period runs out, open
    WebSockets get a close frame 1001 (going away) from the gateway, over
    HTTP/1.1 and HTTP/2 alike, instead of a cut connection; so does the app."""
    w = Worker("ws_app:app")
    g = gateway_for(w, "graceful_shutdown: 1s")
    try:
        h2ws = H2WebSocket(g.tls_port, "/hold", tls=True)
        assert h2ws.status == 200

        code, took = close_after_sigterm(g, f"wss://127.0.0.1:{g.tls_port}/hold", ssl=tls_ctx(),
                                         ping_interval=None)
        assert code == 1001 and took < 10
        frames = h2ws.messages(1)
        assert frames and frames[0][0] == 8 and close_code(frames[0][1]) == 1001
        assert g.proc.wait(timeout=15) == 0
        assert "closing 2 WebSockets with 1001" in g.log()
        # the app behind heard it too: a close 1001 from the gateway, not a cut
        assert eventually(lambda: disconnects(w).count(1001) >= 2), disconnects(w)
    finally:
        g.stop()
        w.stop()


def test_example_app_serves_its_websocket():
    """The app scripts/run-local.sh serves: /api/info and the /ws echo its page uses."""
    from h3env import ROOT
    w = Worker("app:app", app_dir=ROOT / "examples")
    try:
        assert curl_json(w.url("/api/info"))["http_version"] == "1.1"

        async def go():
            async with websockets.connect(f"ws://127.0.0.1:{w.port}/ws") as ws:
                await ws.send("hello")
                return await ws.recv()
        assert wsrun(go()) == "echo over HTTP/1.1: hello"
        assert RawWebSocket(w.port, "/elsewhere").status == 403
    finally:
        assert w.stop() == 0


def test_backend_without_extended_connect_gets_a_502():
    """A backend whose SETTINGS don't enable extended CONNECT (a plain h2
    server) can't take a WebSocket: the client gets a clear 502."""
    from h3env import APPS, PYTHON, Process, free_port
    port = free_port()
    backend = Process([PYTHON, APPS / "faulty_h2.py", str(port), "hang"], name="plain-h2")
    assert backend.wait_log("faulty backend ready")
    g = gateway_for(port)
    try:
        r = RawWebSocket(g.plain_port, "/echo")
        assert r.status == 502
        assert b"does not accept WebSockets over HTTP/2" in r.body()
    finally:
        g.stop()
        backend.stop()
