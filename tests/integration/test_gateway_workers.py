"""The gateway with worker processes (workers: 3): the kernel spreads TCP
connections over them; HTTP/3 datagrams reach the process that holds their
connection even when the client changes address; TLS and QUIC resumption
work whichever process a client reaches; /metrics is the sum over all of
them; a killed process is replaced; SIGHUP and SIGTERM reach them all."""

import hashlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from h3env import (BASIC_CONFIG, BIN, GATEWAY_READY, Gateway, children_of, curl, curl_json,
                   eventually, free_port, metric, metrics, run, sanitizer_env)
from test_http3 import body, expected_sha, h3

WORKERS = 3
# No quic.secret on purpose: the one the master makes must serve all.
CONFIG = BASIC_CONFIG + "workers: {workers}\nadmin: {{address: 127.0.0.1:{admin}}}\n"


@pytest.fixture(scope="module")
def gateway(worker):
    admin = free_port()
    g = Gateway(CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="5s",
                workers=WORKERS, admin=admin)
    g.admin = admin
    yield g
    assert g.stop() == 0


def worker_pids(g, count=WORKERS, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = children_of(g.pid)
        if len(pids) == count:
            return set(pids)
        time.sleep(0.05)
    raise AssertionError(f"expected {count} worker processes, found {children_of(g.pid)}")


def open_keepalive_connections(port, n):
    """n HTTP/1.1 connections, each with one answered request, left open."""
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(4096)
        assert got.startswith(b"HTTP/1.1 200"), got[:100]
        conns.append(s)
    return conns


def owners_of_connections(port):
    """pids of the processes holding accepted connections on port."""
    out = run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"]).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


def test_connections_spread_over_the_processes_and_metrics_see_them_all(gateway):
    pids = worker_pids(gateway)
    conns = open_keepalive_connections(gateway.plain_port, 30)
    try:
        # 30 connections hashed over 3 sockets: all land on one or two with
        # a chance of about 1 in 70,000.
        assert owners_of_connections(gateway.plain_port) == pids
        m = metrics(gateway.admin)
        assert metric(m, "h3gate_workers", state="answered") == WORKERS
        assert metric(m, "h3gate_client_connections", transport="tcp") == 30
    finally:
        for s in conns:
            s.close()


def test_metrics_are_the_sum_over_the_processes(gateway):
    before = metrics(gateway.admin)
    r = run(["h2load", "-n", "300", "-c", "30", "-m", "2", gateway.plain_url("/pid")], timeout=60)
    assert "300 succeeded" in r.stdout, r.stdout[-1500:]
    after = metrics(gateway.admin)
    key = dict(protocol="2", code="200")
    assert metric(after, "h3gate_requests_total", **key) - metric(before, "h3gate_requests_total", **key) == 300
    count = "h3gate_request_duration_seconds_count"
    assert metric(after, count, protocol="2") - metric(before, count, protocol="2") == 300
    assert sum(v for (name, _), v in after.items() if name == "h3gate_upstream_in_flight") == 0


@pytest.mark.parametrize("attempt", range(3))
def test_http3_client_that_changes_address_keeps_its_process(gateway, attempt):
    # Without steering by connection ID, the new address hashes to another
    # process 2 times in 3, and the download stalls there.
    size = 4 * 1024 * 1024
    r, d, st = h3(gateway, f"/download?size={size}", args=["--change-local-addr=50ms"], timeout=30)
    assert st == ["200"], r.stderr[-2000:]
    assert "Changing local address" in r.stdout + r.stderr
    assert hashlib.sha256(body(d, f"download?size={size}")).hexdigest() == expected_sha(size)


def test_quic_0rtt_resumes_on_any_process(gateway, tmp_path):
    session, tp = tmp_path / "session.pem", tmp_path / "tp.pem"
    args = [f"--session-file={session}", f"--tp-file={tp}"]
    r, d, st = h3(gateway, "/scope", args=args)
    assert st == ["200"] and session.exists(), r.stderr[-2000:]
    # Each new connection reaches a random process: all must accept the
    # ticket (one QUIC secret, made by the master before forking).
    for _ in range(4):
        r, d, st = h3(gateway, "/scope", args=args)
        assert st == ["200"], r.stderr[-2000:]
        s = json.loads(body(d, "scope"))
        assert ["early-data", "1"] in s["headers"], s["headers"]


def test_tls_sessions_resume_on_any_process(gateway, tmp_path):
    session = tmp_path / "tls-session.pem"
    request = b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"

    def connect(*args):
        r = run(["openssl", "s_client", "-connect", f"127.0.0.1:{gateway.tls_port}", "-tls1_3",
                 "-ign_eof", *args], input=request, timeout=30)
        assert "HTTP/1.1 200" in r.stdout, r.stdout[-2000:]
        return r.stdout

    assert "New, TLSv1.3" in connect("-sess_out", str(session))
    # Five more connections, each to a process the kernel picks: all resume.
    outs = [connect("-sess_in", str(session)) for _ in range(5)]
    assert all("Reused, TLSv1.3" in out for out in outs), [o[-800:] for o in outs]


def test_a_killed_process_is_replaced(gateway):
    pids = worker_pids(gateway)
    victim = sorted(pids)[0]
    subprocess.run(["kill", "-9", str(victim)], check=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = set(children_of(gateway.pid))
        if len(now) == WORKERS and victim not in now:
            break
        time.sleep(0.05)
    now = worker_pids(gateway)
    assert victim not in now and len(now & pids) == WORKERS - 1
    assert gateway.wait_log("restarting in", timeout=5)
    assert gateway.wait_log("serving again", timeout=10)
    # Every process answers again, the new one included.
    r = run(["h2load", "-n", "120", "-c", "30", gateway.plain_url("/pid")], timeout=60)
    assert "120 succeeded" in r.stdout, r.stdout[-1500:]
    conns = open_keepalive_connections(gateway.plain_port, 30)
    try:
        assert owners_of_connections(gateway.plain_port) == now
    finally:
        for s in conns:
            s.close()


def served_connections(port, n):
    """Opens n HTTP/1.1 connections one after another; those answered stay
    open and are returned, those closed at once (refused) are not."""
    served = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            s.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
            got = s.recv(4096)
        except ConnectionResetError:
            got = b""
        if got.startswith(b"HTTP/1.1 200"):
            served.append(s)
        else:
            assert got == b"", got[:100]
            s.close()
    return served


def test_max_connections_per_ip_holds_across_the_processes(worker):
    """limits.max_connections_per_ip counts an address over every process,
    as nginx's limit_conn does in shared memory: of 12 connections from one
    address, spread over 3 processes, 4 are served (it was 4 per process).
    Processes killed while they held them give them back: their
    replacements start with none."""
    admin = free_port()
    g = Gateway(CONFIG + "limits: {{max_connections_per_ip: 4}}\n", servers=f"127.0.0.1:{worker.port}",
                response_timeout="5s", workers=WORKERS, admin=admin)
    held = []
    try:
        pids = worker_pids(g)
        held = served_connections(g.plain_port, 12)
        assert len(held) == 4, len(held)
        assert metric(metrics(admin), "h3gate_connections_refused_total", reason="per_ip") == 8
        owners = owners_of_connections(g.plain_port)
        for pid in owners:
            os.kill(pid, signal.SIGKILL)
        assert eventually(lambda: len(set(worker_pids(g)) - pids) == len(owners), timeout=20), g.log()[-2000:]
        assert g.wait_log("serving again", count=len(owners), timeout=20), g.log()[-2000:]
        for s in held:
            s.close()
        held = served_connections(g.plain_port, 6)
        assert len(held) == 4, (len(held), g.log()[-2000:])
    finally:
        for s in held:
            s.close()
        g.stop()


def test_metrics_answer_without_a_worker_that_does_not_reply(gateway):
    pids = sorted(worker_pids(gateway))
    stuck = pids[0]
    os.kill(stuck, signal.SIGSTOP)  # alive, but answers nothing
    try:
        m = metrics(gateway.admin)  # answered after the master's wait, from the others
        assert metric(m, "h3gate_workers", state="configured") == WORKERS
        assert metric(m, "h3gate_workers", state="answered") == WORKERS - 1
        assert gateway.wait_log(f"/metrics: {WORKERS - 1} of {WORKERS} workers answered", timeout=5)
    finally:
        os.kill(stuck, signal.SIGCONT)
    # Its late answer to the old round is dropped; the next round has everyone.
    assert metric(metrics(gateway.admin), "h3gate_workers", state="answered") == WORKERS


def forwarded_headers_seen(g, n=24):
    """For n fresh connections: whether the app saw a Forwarded header."""
    seen = []
    for _ in range(n):
        s = curl_json(g.plain_url("/scope"))
        seen.append(any(h[0] == "forwarded" for h in s["headers"]))
    return seen


def test_sighup_reaches_every_process_and_refuses_new_listen_entries(gateway):
    original = gateway.config.read_text()
    assert all(forwarded_headers_seen(gateway))
    try:
        gateway.config.write_text(original + "forwarding: {forwarded_header: false}\n")
        reloads = gateway.log().count("configuration reloaded")
        gateway.signal(signal.SIGHUP)
        assert gateway.wait_log("configuration reloaded", count=reloads + WORKERS, timeout=10)
        assert not any(forwarded_headers_seen(gateway))
        # New listen entries need a restart: refused, clearly, and nothing changes.
        other = free_port()
        gateway.config.write_text(original.replace(f"127.0.0.1:{gateway.plain_port}", f"127.0.0.1:{other}"))
        gateway.signal(signal.SIGHUP)
        assert gateway.wait_log("reload refused", timeout=10)
        assert curl_json(gateway.plain_url("/pid"))
        assert curl("-o", "/dev/null", f"http://127.0.0.1:{other}/pid", timeout=2).returncode != 0
    finally:
        gateway.config.write_text(original)
        reloads = gateway.log().count("configuration reloaded")
        gateway.signal(signal.SIGHUP)
        assert gateway.wait_log("configuration reloaded", count=reloads + WORKERS, timeout=10)


def test_sigterm_lets_every_process_finish_its_requests(worker):
    admin = free_port()
    g = Gateway(CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="10s", workers=WORKERS,
                admin=admin)
    g.admin = admin
    pids = worker_pids(g)
    # Slow requests on many connections, so every process has one in flight,
    # over TCP and over HTTP/3 (each QUIC connection reaches a random process).
    clients = [subprocess.Popen(["curl", "-sS", "--max-time", "20", g.plain_url("/sleep?s=3")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(12)]
    h3_dirs = [tempfile.mkdtemp(prefix="h3dl-") for _ in range(6)]
    h3_clients = [subprocess.Popen(["gtlsclient", "--exit-on-all-streams-close", "--no-quic-dump",
                                    "--timeout=20s", f"--download={d}", "127.0.0.1", str(g.tls_port),
                                    f"https://127.0.0.1:{g.tls_port}/sleep?s=3"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for d in h3_dirs]
    in_flight = lambda: metric(metrics(g.admin), "h3gate_requests_in_flight")  # noqa: E731
    assert eventually(lambda: in_flight() >= 18)
    assert in_flight() == 18  # all in flight when the stop begins
    g.signal(signal.SIGTERM)
    outs = [c.communicate(timeout=30) for c in clients]
    assert all(c.returncode == 0 and b'"slept": true' in out for c, (out, _) in zip(clients, outs)), outs
    for c in h3_clients:
        c.wait(timeout=30)
    answers = [(pathlib.Path(d) / "sleep?s=3").read_bytes() if (pathlib.Path(d) / "sleep?s=3").exists()
               else b"" for d in h3_dirs]
    assert all(b'"slept": true' in a for a in answers), answers
    assert g.proc.wait(timeout=30) == 0
    for pid in pids:  # none left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert g.stop() == 0


@pytest.mark.parametrize("text,message", [
    ("workers: 0", '"workers" must be auto or from 1 to 64, got "0"'),
    ("workers: 65", '"workers" must be auto or from 1 to 64, got "65"'),
    ("workers: many", '"workers" must be auto or from 1 to 64, got "many"'),
])
def test_bad_worker_counts_are_config_errors(tmp_path, text, message):
    f = tmp_path / "gateway.yaml"
    f.write_text(text + "\nlisten: [{address: 127.0.0.1:1}]\n"
                 "upstreams: [{name: app, servers: [127.0.0.1:2]}]\n"
                 "routes: [{path_prefix: /, upstream: app}]\n")
    r = run([BIN / "h3gate", "-t", "-c", f])
    assert r.returncode != 0
    assert f"{f}:1:10: {message}" in r.stderr, r.stderr


def test_workers_auto_is_the_cpus_this_process_may_use(worker):
    g = Gateway(BASIC_CONFIG + "workers: auto\n", servers=f"127.0.0.1:{worker.port}",
                response_timeout="5s")
    try:
        cpus = len(os.sched_getaffinity(g.pid))
        if cpus == 1:
            assert "worker processes" not in g.log()  # one process: no master
        else:
            assert f"h3gate ready: {cpus} worker processes" in g.log()
            assert len(children_of(g.pid)) == cpus
        assert curl_json(g.plain_url("/pid"))
    finally:
        assert g.stop() == 0


def test_http3_off_when_udp_port_taken_tcp_keeps_serving(worker):
    tls_port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker:
        blocker.bind(("127.0.0.1", tls_port))
        g = Gateway(CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="5s",
                    tls_port=tls_port, workers=WORKERS, admin=free_port())
        try:
            assert g.log().count("HTTP/3 is off on") == 1  # said once, by the master
            assert "Address already in use" in g.log()
            pids = worker_pids(g)
            for _ in range(6):  # connections reach every process: none advertises HTTP/3
                r = curl("-k", "-D", "-", g.tls_url("/pid"))
                assert r.returncode == 0 and "alt-svc" not in r.stdout.lower()
            assert len(pids) == WORKERS
        finally:
            assert g.stop() == 0


def test_a_worker_that_cannot_start_stops_the_gateway(worker, tmp_path):
    # The access log is opened by each worker: a folder that isn't there
    # fails them all at start, and the master says so and exits non-zero.
    text = CONFIG + f'log: {{{{level: info, access_log: "{tmp_path}/missing/access.log"}}}}\n'
    g = Gateway(text.replace("log:\n  level: info\n", ""), servers=f"127.0.0.1:{worker.port}",
                response_timeout="5s", workers=WORKERS, admin=free_port(), wait=False)
    try:
        assert g.proc.wait(timeout=30) == 1
        assert "cannot open access log" in g.log()
        assert "could not start" in g.log() and "stopping" in g.log()
    finally:
        g.stop()


def test_a_worker_that_does_not_stop_is_killed(worker):
    text = CONFIG + "timeouts: {{graceful_shutdown: 0s}}\n"
    g = Gateway(text.replace("timeouts:\n  connect: 2s\n  response_header: {response_timeout}\n", ""),
                servers=f"127.0.0.1:{worker.port}", workers=WORKERS, admin=free_port())
    pids = sorted(worker_pids(g))
    os.kill(pids[0], signal.SIGSTOP)  # it will never see the SIGTERM
    g.signal(signal.SIGTERM)
    assert g.proc.wait(timeout=30) == 0  # the master gives it the grace period, then SIGKILL
    assert f"(pid {pids[0]}) did not stop in time: SIGKILL" in g.log()
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    assert g.stop() == 0


def faulty_env(**failures):
    """The gateway's environment with tests/support/fault_inject.c preloaded:
    faulty_env(fork="2,3") refuses the 2nd and 3rd fork()."""
    env = sanitizer_env()
    env["LD_PRELOAD"] = str(BIN / "libh3g_fault_inject.so")
    # ASan wants its runtime first in the list; the preloaded library only
    # passes calls on.
    env["ASAN_OPTIONS"] += ":verify_asan_link_order=0"
    env.update({f"H3G_FAIL_{name.upper()}": calls for name, calls in failures.items()})
    return env


def test_a_refused_fork_or_socketpair_is_tried_again(worker):
    # Forks 2 and 3 (workers 1 and 2) are refused, and then the socketpair
    # of the first retry (whichever of the two timers libevent runs first):
    # every slot still ends up with a process.
    admin = free_port()
    g = Gateway(CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="5s", workers=WORKERS,
                admin=admin, env=faulty_env(fork="2,3", socketpair="4"))
    try:
        g.wait_log("h3gate ready: 3 worker processes")
        log = g.log()
        for slot in (1, 2):
            assert f"worker {slot}: fork: Resource temporarily unavailable; trying again in 0.1s" in log
        assert re.search(r"worker [12]: socketpair: Too many open files; trying again in 0\.2s", log), log
        pids = worker_pids(g)
        conns = open_keepalive_connections(g.plain_port, 30)
        try:
            assert owners_of_connections(g.plain_port) == pids
            assert metric(metrics(admin), "h3gate_workers", state="answered") == WORKERS
        finally:
            for s in conns:
                s.close()
    finally:
        assert g.stop() == 0


def master_bind_number(slot, which):
    """Which bind() of the master's (from 1) makes the given socket, with
    CONFIG's two listen entries (TLS with HTTP/3, then cleartext): the admin
    listener, then the probes without SO_REUSEPORT (TLS's TCP and UDP, the
    cleartext TCP), then the same three for each process slot in turn."""
    return 1 + 3 + 3 * slot + {"tls": 1, "udp": 2, "plain": 3}[which]


@pytest.mark.parametrize("workers,fault,why", [
    # With several processes the master maps the 0-RTT anti-replay store
    # before forking. Were it to go on without, each process would map its
    # own, and a ClientHello replayed to another process would be accepted a
    # second time.
    (1, {"mmap_shared": "1"}, ["no memory for the", "0-RTT anti-replay store"]),
    (WORKERS, {"mmap_shared": "1"}, ["no memory for the", "0-RTT anti-replay store"]),
    # Without the master's BPF program a connection's datagrams go wherever
    # the kernel hashes their addresses: a migrated client would reach a
    # process that does not know it.
    (WORKERS, {"reuseport_bpf": "1"}, ["cannot steer datagrams to worker processes by connection ID"]),
    # The second process's UDP socket cannot be bound after the first's was
    # (and steered): the steering counts on all of them.
    (WORKERS, {"bind": str(master_bind_number(slot=1, which="udp"))}, ["UDP port", "Address already in use"]),
], ids=["replay-store-1", f"replay-store-{WORKERS}", f"steering-{WORKERS}", f"udp-bind-{WORKERS}"])
def test_http3_that_cannot_run_safely_is_off_and_tcp_serves(worker, workers, fault, why):
    # Lone or not, the gateway turns HTTP/3 off, says so once, and TCP serves.
    g = Gateway(CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="5s", workers=workers,
                admin=free_port(), env=faulty_env(**fault))
    try:
        assert g.wait_log(GATEWAY_READY), g.log()[-2000:]
        assert g.log().count("HTTP/3 is off on") == 1, g.log()[-2000:]
        assert all(part in g.log() for part in why), g.log()[-2000:]
        for _ in range(6):  # with 3 processes, connections reach more than one
            r = curl("-k", "-D", "-", g.tls_url("/pid"))
            assert r.returncode == 0 and "alt-svc" not in r.stdout.lower(), r.stdout
        r, d, st = h3(g, "/pid", timeout=3)
        assert st == [], r.stdout[-1000:]  # nothing answers on UDP
        # and nothing holds the UDP port, swallowing datagrams unread
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", g.tls_port))
    finally:
        assert g.stop() == 0


def test_a_listening_socket_that_cannot_be_bound_stops_the_master(worker):
    # The third process's TCP socket for the TLS port: the ports were free a
    # moment before (the probes), so something raced the gateway for them.
    # TCP is what it is for: it says which address and exits non-zero, with
    # no process left behind and nothing bound.
    g = Gateway(CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="5s", workers=WORKERS,
                admin=free_port(), wait=False,
                env=faulty_env(bind=str(master_bind_number(slot=2, which="tls"))))
    try:
        assert g.proc.wait(timeout=30) == 1
        assert f"cannot listen on 127.0.0.1:{g.tls_port}: Address already in use" in g.log(), g.log()
        assert g.log_count(GATEWAY_READY) == 0
        assert run(["pgrep", "-f", str(g.config)]).returncode == 1  # no worker was forked
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", g.tls_port))
    finally:
        g.stop()


def test_a_per_address_table_that_cannot_be_mapped_stops_the_master(worker):
    # The master's second shared mapping (after the 0-RTT store) is the table
    # of connections per address: without it each process would count alone
    # and let an address hold the limit times the processes. It says so and
    # exits before forking.
    g = Gateway(CONFIG, servers=f"127.0.0.1:{worker.port}", response_timeout="5s", workers=WORKERS,
                admin=free_port(), wait=False, env=faulty_env(mmap_shared="2"))
    try:
        assert g.proc.wait(timeout=30) == 1
        assert "cannot map the table of connections per address: Cannot allocate memory" in g.log(), g.log()
        assert run(["pgrep", "-f", str(g.config)]).returncode == 1  # no worker was forked
    finally:
        g.stop()


def test_logs_reopen_on_sighup_for_logrotate(worker, tmp_path):
    """log.error_log and access_log in files, rotated the way logrotate
    does it (rename, then SIGHUP): the master and every process write to
    the new files from then on, and the old ones keep what came before."""
    error_log, access_log = tmp_path / "error.log", tmp_path / "access.log"
    text = CONFIG.replace("log:\n  level: info\n",
                          f'log: {{{{level: info, error_log: "{error_log}", access_log: "{access_log}"}}}}\n')
    g = Gateway(text, servers=f"127.0.0.1:{worker.port}", response_timeout="5s", workers=WORKERS,
                admin=free_port(), wait=False)

    def wait_file(path, text, count=1):
        return eventually(lambda: path.exists() and path.read_text().count(text) >= count, timeout=20)

    try:
        assert wait_file(error_log, "h3gate ready"), g.log()[-2000:]
        for _ in range(6):
            assert curl_json(g.plain_url("/pid?before"))
        error_log.rename(tmp_path / "error.log.1")
        access_log.rename(tmp_path / "access.log.1")
        g.signal(signal.SIGHUP)
        assert wait_file(error_log, "configuration reloaded", count=WORKERS), \
            error_log.read_text() if error_log.exists() else "no new error log"
        assert "SIGHUP: configuration checked" in error_log.read_text()  # the master's too
        for _ in range(6):
            assert curl_json(g.plain_url("/pid?after"))
        assert wait_file(access_log, "/pid?after", count=6)
        old = (tmp_path / "access.log.1").read_text()
        assert old.count("/pid?before") == 6 and "/pid?after" not in old
        assert "/pid?before" not in access_log.read_text()
        assert "ready" in (tmp_path / "error.log.1").read_text()
    finally:
        assert g.stop() == 0
