"""Test environment: starts our binaries and real third-party peers on
loopback, and tears them down. Every wait is bounded."""

import atexit
import datetime
import json
import os
import pathlib
import re
import signal as sig_mod
import socket
import ssl
import subprocess
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("H3GATE_BIN_DIR", ROOT / "build" / "bin"))
APPS = ROOT / "tests" / "apps"
PYTHON = "/usr/bin/python3"  # Debian's, with Debian's packages
SANITIZED = os.environ.get("H3GATE_SANITIZED") == "1"


_HANDED_OUT = set()


def free_port():
    """A port free for both TCP and UDP on 127.0.0.1, and not one handed out
    before: the kernel may give the same port to two binds in a row, and a
    gateway given it for both its listeners refused to start."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            if port in _HANDED_OUT:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port")


def wait_port(port, timeout=20.0, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def log_time(line):
    """The UTC time our log lines start with (2026-11-27T03:23:17.131Z)."""
    return datetime.datetime.strptime(line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%S.%fZ")


def eventually(fn, timeout=10):
    """fn's first true value within timeout (polled every 50 ms), else its last."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    return fn()


def run(cmd, timeout=60, check=False, input=None, env=None):
    """Runs a client to completion; returns CompletedProcess (text)."""
    p = subprocess.run(cmd, capture_output=True, timeout=timeout, input=input, env=env)
    out = subprocess.CompletedProcess(p.args, p.returncode,
                                      p.stdout.decode("utf-8", "replace"),
                                      p.stderr.decode("utf-8", "replace"))
    out.raw_stdout = p.stdout
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}): {out.stderr[-2000:]}")
    return out


def children_of(pid):
    try:
        out = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(x) for x in out]


def tcp_connections(pid, remote_port):
    """How many established TCP connections process pid holds to remote_port
    (the sockets among its descriptors, looked up in its namespace's tables)."""
    inodes = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    n = 0
    for table in ("tcp", "tcp6"):
        for line in pathlib.Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()  # sl local remote st ... inode (10th)
            established = f[3] == "01"
            if established and int(f[2].rsplit(":", 1)[1], 16) == remote_port and f[9] in inodes:
                n += 1
    return n


def rss_kb(pid):
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def sanitizer_env():
    env = dict(os.environ)
    # CPython and its extension modules keep memory until exit on purpose.
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0:quarantine_size_mb=4:thread_local_quarantine_size_kb=64")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    return env


_STARTED = []


@atexit.register
def _kill_leftovers():
    """Nothing a test started may outlive the test run, even after a failure."""
    for proc in _STARTED:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig_mod.SIGKILL)
            except ProcessLookupError:
                pass


class Process:
    """A server we started; its output goes to a log file we can read."""

    def __init__(self, cmd, cwd=None, env=None, name="proc"):
        self.cmd = [str(c) for c in cmd]
        self.logfile = tempfile.NamedTemporaryFile(prefix=f"h3test-{name}-", suffix=".log",
                                                   delete=False)
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env or sanitizer_env(),
                                     stdout=self.logfile, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        _STARTED.append(self.proc)

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        return pathlib.Path(self.logfile.name).read_text(errors="replace")

    def log_count(self, text):
        """How often text (a string, or a compiled pattern) is in the log."""
        log = self.log()
        return len(text.findall(log)) if isinstance(text, re.Pattern) else log.count(text)

    def wait_log(self, text, timeout=20.0, count=1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_count(text) >= count:
                return True
            if self.proc.poll() is not None:
                return self.log_count(text) >= count
            time.sleep(0.05)
        return False

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=sig_mod.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, sig_mod.SIGKILL)
                self.proc.wait(timeout=10)
        try:  # nothing of ours may outlive a test
            os.killpg(self.proc.pid, sig_mod.SIGKILL)
        except ProcessLookupError:
            pass
        self.assert_clean()  # a sanitizer report anywhere fails the test
        return self.proc.returncode

    def assert_clean(self):
        text = self.log()
        for marker in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
            assert marker not in text, f"sanitizer report in {self.logfile.name}:\n{text[-4000:]}"


class Worker(Process):
    """h3gate-worker serving an app from tests/apps."""

    def __init__(self, app="probe:app", workers=1, args=(), app_dir=APPS, port=None,
                 wait=True, env=None):
        self.port = port or free_port()
        self.workers = workers
        cmd = [BIN / "h3gate-worker", "--bind", f"127.0.0.1:{self.port}",
               "--workers", str(workers), "--app-dir", app_dir, *args, app]
        super().__init__(cmd, cwd=app_dir, env=env, name="worker")
        if wait:
            assert self.wait_log("worker processes ready", timeout=60), self.log()[-3000:]

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def worker_pids(self):
        return children_of(self.pid)


def raw_http(port, request, timeout=10, tls=False):
    """Sends request bytes as they are on a new TCP connection (over TLS,
    HTTP/1.1 by ALPN, when tls) and returns all the server sent until it
    closed (ask with Connection: close). Over TLS the close must come with
    a close_notify: a bare TCP close raises ssl.SSLEOFError."""
    answer = b""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        s = ctx.wrap_socket(s, suppress_ragged_eofs=False)
    with s:
        s.sendall(request)
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def h2_raw_request(port, headers, timeout=10):
    """One raw HTTP/2 request over h2c with exactly these fields (no checks
    by python-h2, so malformed ones go out as they are): (:status, body),
    or ("reset CODE", b"") when the server resets the stream."""
    import h2.config
    import h2.connection
    import h2.events
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                                                normalize_outbound_headers=False))
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=True)
    s.sendall(conn.data_to_send())
    status, body = None, b""
    try:
        while data := s.recv(65536):
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers)[b":status"].decode()
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    return status, body
                elif isinstance(ev, h2.events.StreamReset):
                    return f"reset {ev.error_code}", b""
            s.sendall(conn.data_to_send())
    finally:
        s.close()
    return status, body


def curl(*args, timeout=60):
    return run(["curl", "-sS", "--max-time", str(timeout), *args], timeout=timeout + 5)


def curl_json(*args, timeout=60):
    r = curl(*args, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def metrics(admin_port):
    """The gateway's /metrics as {(name, sorted labels): value}; raises on
    text that is not valid Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families
    r = curl(f"http://127.0.0.1:{admin_port}/metrics")
    assert r.returncode == 0, r.stderr
    samples = {}
    for family in text_string_to_metric_families(r.stdout):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def metric(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def make_cert(directory):
    """A self-signed certificate for localhost and 127.0.0.1."""
    cert, key = pathlib.Path(directory) / "cert.pem", pathlib.Path(directory) / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True)
    return cert, key


# "h3gate 0.1.0 ready" (one process) or "h3gate ready: 3 worker processes"
# (the master); "ready" alone is also in "Address already in use".
GATEWAY_READY = re.compile(r"h3gate (\S+ )?ready")


class Gateway(Process):
    """h3gate with a config written from a template; {tls_port}, {plain_port}
    and names given in fmt are filled in."""

    def __init__(self, config_text, directory=None, wait=True, env=None, **fmt):
        self.dir = pathlib.Path(directory or tempfile.mkdtemp(prefix="h3gw-"))
        if not (self.dir / "cert.pem").exists():
            make_cert(self.dir)
        self.tls_port = fmt.pop("tls_port", None) or free_port()
        self.plain_port = fmt.pop("plain_port", None) or free_port()
        self.config = self.dir / "gateway.yaml"
        self.write_config(config_text, **fmt)
        super().__init__([BIN / "h3gate", "-c", self.config], cwd=self.dir, env=env, name="gateway")
        if wait:
            assert self.wait_log(GATEWAY_READY), self.log()[-3000:]

    def write_config(self, text, **fmt):
        self.config_text = text
        if "{tls_port}" in text or "{plain_port}" in text or fmt:
            text = text.format(tls_port=self.tls_port, plain_port=self.plain_port, **fmt)
        self.config.write_text(text)

    def tls_url(self, path="/"):
        return f"https://127.0.0.1:{self.tls_port}{path}"

    def plain_url(self, path="/"):
        return f"http://127.0.0.1:{self.plain_port}{path}"

    def peak_rss_kb(self):
        for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0


# A TLS listener (HTTP/3 too) and a cleartext one, the cleartext one last,
# so that a config may add keys to it.
LISTEN_TLS_AND_CLEARTEXT = """
listen:
  - address: 127.0.0.1:{tls_port}
    tls: {{certificate: cert.pem, key: key.pem}}
  - address: 127.0.0.1:{plain_port}
"""

BASIC_CONFIG = LISTEN_TLS_AND_CLEARTEXT + """log:
  level: info
timeouts:
  connect: 2s
  response_header: {response_timeout}
upstreams:
  - name: app
    servers: [{servers}]
    resolve_interval: 1s
routes:
  - path_prefix: /
    upstream: app
"""
