"""Clients that misbehave, all at once, while a canary's well-formed
requests must all succeed: bad input loses nothing and never harms other
connections or streams.

For a bounded time, threads abort uploads and downloads half-way (a FIN or
a reset), send half a head, pipeline and leave, send garbage, reset HTTP/2
streams mid-body and drop HTTP/2 connections with streams open, leave
WebSockets without a close frame, and kill HTTP/3 clients mid-download
(under packet loss). The mix is random but seeded (H3G_CHAOS_SEED, default
1), so a failing run can be replayed. The canary, on persistent HTTP/1.1 and
HTTP/2 connections and on new HTTP/3 ones, checks every answer. Afterwards
the gateway holds nothing for the clients that left (no exchange, upstream
stream or connection), both servers still serve every protocol, and their
logs carry no sanitizer report."""

import hashlib
import json
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from h3env import BASIC_CONFIG, Gateway, Worker, curl_json, eventually, free_port, metrics, run

SEED = int(os.environ.get("H3G_CHAOS_SEED", "1"))
DURATION = 12.0          # seconds of chaos
MAX_ROUNDS = 400         # per chaos thread, whatever the time
MAX_CANARY_ROUNDS = 2000
BIG = 4_000_000          # bytes of the downloads and uploads that are cut short


def connect(g, rng, tls=None):
    tls = rng.random() < 0.5 if tls is None else tls
    s = socket.create_connection(("127.0.0.1", g.tls_port if tls else g.plain_port), timeout=5)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        s = ctx.wrap_socket(s)
    return s


def hang_up(s, rng):
    """Closes with a FIN, or with a reset (SO_LINGER 0) half the time."""
    try:
        if rng.random() < 0.5:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass


# --- HTTP/1.1 ---------------------------------------------------------------
def h1_abort_upload(g, rng):
    s = connect(g, rng)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BIG)
    s.sendall(os.urandom(rng.randrange(1, 300_000)))
    hang_up(s, rng)


def h1_abort_download(g, rng):
    s = connect(g, rng)
    s.sendall(b"GET /download?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % BIG)
    s.recv(rng.randrange(1, 65536))
    hang_up(s, rng)


def h1_partial_head(g, rng):
    head = b"GET /pid HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"f" * rng.randrange(0, 3000) + b"\r\n\r\n"
    s = connect(g, rng)
    s.sendall(head[:rng.randrange(1, len(head))])
    hang_up(s, rng)


def h1_pipeline_and_leave(g, rng):
    s = connect(g, rng)
    s.sendall(b"GET /download?size=300000 HTTP/1.1\r\nHost: x\r\n\r\n" * rng.randrange(2, 6))
    hang_up(s, rng)


def h1_garbage(g, rng):
    s = connect(g, rng)
    s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))))
    try:
        s.recv(4096)  # a 400, or the close
    except OSError:
        pass
    hang_up(s, rng)


def h1_leave_slow_request(g, rng):
    s = connect(g, rng)
    s.sendall(b"GET /slow?delay=5 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(rng.uniform(0.01, 0.2))
    hang_up(s, rng)


# --- HTTP/2 -----------------------------------------------------------------
def h2_streams_then_drop(g, rng):
    """Opens streams of every kind on one connection, resets some mid-body,
    then drops the connection with the rest still open."""
    s = socket.create_connection(("127.0.0.1", g.plain_port), timeout=0.3)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    ids = []
    for _ in range(rng.randrange(1, 8)):
        sid = conn.get_next_available_stream_id()
        kind = rng.choice(["download", "upload", "pid"])
        path = {"download": f"/download?size={BIG}", "upload": "/upload", "pid": "/pid"}[kind]
        conn.send_headers(sid, [(":method", "POST" if kind == "upload" else "GET"), (":path", path),
                                (":scheme", "http"), (":authority", "x")], end_stream=kind != "upload")
        if kind == "upload":  # within the windows, which the server's SETTINGS have not set yet
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if room > 0:
                conn.send_data(sid, os.urandom(rng.randrange(1, 16000) % room + 1))
        ids.append(sid)
    s.sendall(conn.data_to_send())
    try:
        for _ in range(rng.randrange(0, 4)):
            data = s.recv(65536)
            if not data:
                break
            conn.receive_data(data)
        for sid in ids:
            if rng.random() < 0.5:
                conn.reset_stream(sid)
        s.sendall(conn.data_to_send())
    except (OSError, h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
        pass
    hang_up(s, rng)


# --- WebSockets -------------------------------------------------------------
def ws_leave_without_close(g, rng):
    s = connect(g, rng)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    for _ in range(rng.randrange(0, 3)):
        payload = os.urandom(rng.randrange(1, 100))
        mask = os.urandom(4)
        s.sendall(bytes([0x82, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    time.sleep(rng.uniform(0, 0.1))
    hang_up(s, rng)


# --- HTTP/3 -----------------------------------------------------------------
def h3_killed_mid_download(g, rng):
    loss = f"{rng.choice([0, 0.05, 0.2]):.2f}"
    p = subprocess.Popen(["gtlsclient", "--exit-on-all-streams-close", "--no-quic-dump", "--no-http-dump",
                          "--timeout=5s", f"--tx-loss={loss}", f"--rx-loss={loss}", "127.0.0.1", str(g.tls_port),
                          f"https://127.0.0.1:{g.tls_port}/download?size={BIG}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.02, 0.5))
    p.kill()
    p.wait()


H1_ACTIONS = [h1_abort_upload, h1_abort_download, h1_partial_head, h1_pipeline_and_leave, h1_garbage,
              h1_leave_slow_request, ws_leave_without_close]


def reloads(g, deadline, done):
    """SIGHUP every 2 s, as a deploy does: the canary must not notice."""
    for _ in range(int(DURATION / 2)):
        time.sleep(2)
        if time.monotonic() >= deadline:
            break
        g.signal(signal.SIGHUP)
        done["reload"] = done.get("reload", 0) + 1


def chaos(g, rng, actions, deadline, done):
    rounds = 0
    while time.monotonic() < deadline and rounds < MAX_ROUNDS:
        action = rng.choice(actions)
        try:
            action(g, rng)
        except OSError:
            pass  # the server may close first: that is its right
        done[action.__name__] = done.get(action.__name__, 0) + 1
        rounds += 1


# --- the canary -------------------------------------------------------------
class H2Canary:
    """GET after GET on one HTTP/2 connection, as a browser does: after a
    GOAWAY (a reload's) the next request goes on a new connection. A stream
    the GOAWAY refused is sent again there and counted. So is one cut by
    python-h2 itself, which takes no frame after any GOAWAY, even the first
    of a graceful two (it refuses nothing)."""

    def __init__(self, port):
        self.port, self.sock, self.refused = port, None, 0

    def connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.goaway = None

    def close(self):
        if self.sock:
            self.sock.close()

    def get(self, path):
        if self.sock is None or self.goaway is not None or self.conn.state_machine.state.name == "CLOSED":
            self.close()  # a GOAWAY came (its event may have followed our stream's end)
            self.connect()
        answer = self.exchange(path)
        if answer is None:  # refused by a GOAWAY: not processed, so safe to send again
            self.refused += 1
            self.close()
            self.connect()
            answer = self.exchange(path)
        if answer is None:
            raise ConnectionError("refused twice")
        return answer

    def exchange(self, path):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
                               end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        status, body = None, b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                if self.goaway is not None and sid > self.goaway:
                    return None
                raise ConnectionError("the canary's HTTP/2 connection closed mid-stream")
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                # python-h2 after a GOAWAY (in this read, or before): see the class
                if self.conn.state_machine.state.name != "CLOSED":
                    raise
                self.goaway = 0
                return None
            for ev in events:
                if isinstance(ev, h2.events.ConnectionTerminated):
                    if ev.error_code != 0:
                        raise ConnectionError(f"GOAWAY with error {ev.error_code}")
                    self.goaway = ev.last_stream_id
                    if sid > ev.last_stream_id:
                        return None
                elif isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    status = dict(ev.headers)[b":status"]
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    body += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    raise ConnectionError(f"the canary's stream was reset ({ev.error_code})")
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    self.sock.sendall(self.conn.data_to_send())
                    return status, body
            self.sock.sendall(self.conn.data_to_send())


class H1Canary:
    """GET after GET on a keep-alive HTTP/1.1 connection, as curl does: a
    new connection after "connection: close", and one retry when the server
    closed an idle connection just as the request went out (RFC 9112
    9.3.1: no byte of an answer came, and GET is idempotent)."""

    def __init__(self, port):
        self.port, self.sock, self.buf, self.retried = port, None, b"", 0

    def close(self):
        if self.sock:
            self.sock.close()
        self.sock = None

    def get(self, path):
        for attempt in range(2):
            if self.sock is None:
                self.sock, self.buf = socket.create_connection(("127.0.0.1", self.port), timeout=10), b""
            try:
                self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
                return self.answer()
            except ConnectionAbortedError:
                if attempt:
                    raise
                self.retried += 1
                self.close()
            except BrokenPipeError:
                if attempt:
                    raise
                self.retried += 1
                self.close()

    def answer(self):
        while b"\r\n\r\n" not in self.buf:
            self.read(first=not self.buf)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        fields = {line.split(b":")[0].strip().lower(): line.split(b":", 1)[1].strip()
                  for line in head.split(b"\r\n")[1:]}
        length = int(fields[b"content-length"])
        while len(self.buf) < length:
            self.read()
        body, self.buf = self.buf[:length], self.buf[length:]
        if fields.get(b"connection", b"").lower() == b"close":
            self.close()
        return head.split(b" ")[1], body

    def read(self, first=False):
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            if first:  # closed before any byte of the answer: may be retried
                raise ConnectionAbortedError("closed before answering")
            raise ConnectionError("the canary's HTTP/1.1 connection closed mid-answer")
        self.buf += data


def canary(g, deadline, results, retries):
    h1, h2c = H1Canary(g.plain_port), H2Canary(g.plain_port)
    try:
        check_until(g, deadline, results, h1, h2c)
    finally:
        h1.close()
        h2c.close()
        retries.update(h1=h1.retried, h2=h2c.refused)


def check_until(g, deadline, results, h1, h2c):
    size = 100_000
    want = hashlib.sha256(bytes(range(256)) * (size // 256) + bytes(range(size % 256))).hexdigest()
    last_h3 = 0.0
    for _ in range(MAX_CANARY_ROUNDS):
        if time.monotonic() >= deadline:
            break
        for name, client in (("h1", h1), ("h2", h2c)):
            try:
                status, body = client.get("/pid")
                ok = status == b"200" and json.loads(body)["pid"] > 0
                status, body = client.get(f"/download?size={size}")
                ok = ok and status == b"200" and hashlib.sha256(body).hexdigest() == want
                results.append((name, ok or (status, body[:100])))
            except (OSError, ValueError, ConnectionError) as e:
                results.append((name, repr(e)))
                return
        if time.monotonic() - last_h3 > 1.0:
            last_h3 = time.monotonic()
            r = run(["gtlsclient", "--exit-on-all-streams-close", "--no-quic-dump", "--timeout=10s",
                     "127.0.0.1", str(g.tls_port), f"https://127.0.0.1:{g.tls_port}/pid"], timeout=30)
            ok = r.returncode == 0 and "[:status: 200]" in r.stdout + r.stderr
            results.append(("h3", ok or r.stderr[-500:]))
        time.sleep(0.02)


# Killed HTTP/3 clients leave their connections to the idle timeout.
CHAOS_CONFIG = BASIC_CONFIG + """
admin: {{address: 127.0.0.1:{admin_port}}}
quic:
  idle_timeout: 2s
"""


def held(admin_port):
    """What the gateway still holds: exchanges, upstream streams and client
    connections that are not zero."""
    names = ("h3gate_requests_in_flight", "h3gate_upstream_in_flight", "h3gate_client_connections")
    return {key: v for key, v in metrics(admin_port).items() if key[0] in names and v}


def caught(fn, errors):
    """fn, with whatever it raises kept in errors (a thread's exception
    would otherwise only be printed)."""
    def run_it(*args):
        try:
            fn(*args)
        except BaseException as e:  # noqa: B902 - reported by the test
            errors.append(f"{fn.__name__}: {e!r}")
    return run_it


def test_misbehaving_clients_never_harm_the_others():
    worker = Worker("probe:app", workers=2)
    admin = free_port()
    g = Gateway(CHAOS_CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="10s", admin_port=admin)
    try:
        deadline = time.monotonic() + DURATION
        done, results, retries, errors = {}, [], {}, []
        threads = [threading.Thread(target=caught(chaos, errors),
                                    args=(g, random.Random(SEED * 100 + i), actions, deadline, done))
                   for i, actions in enumerate([H1_ACTIONS, H1_ACTIONS, [h2_streams_then_drop],
                                                [h3_killed_mid_download]])]
        threads.append(threading.Thread(target=caught(canary, errors), args=(g, deadline, results, retries)))
        threads.append(threading.Thread(target=caught(reloads, errors), args=(g, deadline, done)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=DURATION + 120)
            assert not t.is_alive(), "a chaos thread did not finish"
        print(f"seed {SEED}: {done}; canary answers: {len(results)}, retried: {retries}")
        assert not errors, errors
        failed = [r for r in results if r[1] is not True]
        assert not failed, (SEED, failed[:5], done)
        for proto in ("h1", "h2", "h3"):
            assert sum(1 for name, _ in results if name == proto) >= 3, (proto, len(results))
        assert len(done) == len(H1_ACTIONS) + 3, done  # every kind of misbehaviour ran, and reloads
        # Every client has gone: nothing may stay held for them (lingering
        # closes end within 2 s, QUIC connections at the idle timeout).
        assert eventually(lambda: not held(admin), timeout=20), held(admin)
        # Both still serve, on every protocol.
        for flags in (["--http1.1"], ["--http2"]):
            assert curl_json("-k", *flags, g.tls_url("/pid"))["pid"] > 0
        assert curl_json(worker.url("/pid"))["pid"] > 0
    finally:
        g.stop()  # each stop fails the test on a sanitizer report in the log
        worker.stop()
