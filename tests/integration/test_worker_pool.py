"""The process pool: start-up errors, crashes, signals, reloads, recycling."""

import http.client
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from h3env import APPS, BIN, Worker, curl, curl_json, eventually, free_port, run


def start_fails(app, *args):
    port = free_port()
    r = run([BIN / "h3gate-worker", "--bind", f"127.0.0.1:{port}", "--app-dir", APPS, *args, app],
            timeout=60)
    with socket.socket() as s:  # the port was never bound
        s.bind(("127.0.0.1", port))
    return r


def test_import_failure_is_one_clear_line_and_exit_1():
    r = start_fails("no_such_module:app")
    assert r.returncode == 1
    lines = [l for l in r.stderr.splitlines() if "[error]" in l]
    assert len(lines) == 1, r.stderr
    assert 'cannot load app "no_such_module:app"' in lines[0]
    assert "No module named 'no_such_module'" in lines[0]
    r = start_fails("raises_on_import:app")
    assert r.returncode == 1 and "ValueError: configuration missing: SECRET_KEY" in r.stderr
    r = start_fails("probe:no_such_attr")
    assert r.returncode == 1 and 'has no attribute "no_such_attr"' in r.stderr


def test_lifespan_on_failure_stops_startup():
    port = free_port()
    r = run([BIN / "h3gate-worker", "--bind", f"127.0.0.1:{port}", "--app-dir", APPS,
             "--lifespan", "on", "broken_lifespan:app"], timeout=60)
    assert r.returncode == 3, r.stderr
    assert "lifespan startup failed: database unreachable" in r.stderr


def test_usage_errors():
    r = run([BIN / "h3gate-worker", "--workers", "zero", "probe:app"])
    assert r.returncode == 2 and "--workers must be a number" in r.stderr
    r = run([BIN / "h3gate-worker", "--version"])
    assert r.returncode == 0 and r.stdout.startswith("h3gate-worker ")
    r = run([BIN / "h3gate-worker", "--help"])
    assert "--forwarded-allow-ips" in r.stdout


def pids_seen(w, n=200):
    seen = set()
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=10)
        conn.request("GET", "/pid", headers={"Connection": "close"})
        seen.add(int(__import__("json").loads(conn.getresponse().read())["pid"]))
        conn.close()
    return seen


def test_requests_spread_over_all_workers():
    w = Worker("probe:app", workers=3)
    try:
        assert pids_seen(w) == set(w.worker_pids())
    finally:
        assert w.stop() == 0


def test_killed_worker_is_replaced_and_pool_keeps_serving():
    w = Worker("probe:app", workers=2)
    try:
        victim = w.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        ok = 0
        for _ in range(100):  # connections queued on the dead slot wait for its successor
            r = curl("-w", "%{http_code}", "-o", "/dev/null", w.url("/pid"), timeout=20)
            ok += r.stdout == "200"
        assert ok == 100
        assert w.wait_log("was killed by signal 9")
        assert eventually(lambda: len(w.worker_pids()) == 2 and victim not in w.worker_pids(), timeout=20), w.log()
    finally:
        assert w.stop() == 0


def test_sigterm_during_load_loses_no_in_flight_request():
    w = Worker("probe:app", workers=2, args=["--graceful-timeout", "20"])
    # h2load holds 40 streams in flight on 2 connections (python-h2 4.1 can't
    # take responses after a GOAWAY, so it is not used here).
    h2 = subprocess.Popen(["h2load", "-n", "40", "-c", "2", "-m", "20", w.url("/sleep?s=1.5")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # HTTP/1.1 requests in flight too
    results = []

    def h1_request():
        conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=30)
        conn.request("GET", "/sleep?s=1.5")
        results.append(conn.getresponse().status)

    threads = [threading.Thread(target=h1_request) for _ in range(10)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # all requests are in the app now
    w.signal(signal.SIGTERM)
    out, _ = h2.communicate(timeout=60)
    for t in threads:
        t.join(30)
    assert "40 succeeded, 0 failed" in out, out
    assert results == [200] * 10
    assert w.proc.wait(timeout=30) == 0


def test_a_stopping_pool_refuses_new_connections_at_once():
    """SIGTERM: the requests in flight finish, and a new connection is
    refused at once. The supervisor kept its listening sockets (for a
    worker's successor, which a full stop never starts): the kernel took
    new connections into their backlog, nobody accepted them, and the exit
    reset them, the requests on them lost after waiting."""
    w = Worker("probe:app", workers=2, args=["--graceful-timeout", "20"])
    held = subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                             w.url("/sleep?s=4")], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # the request is in the app
        w.signal(signal.SIGTERM)
        assert w.wait_log("stopping (SIGTERM)")

        def refused():
            try:
                socket.create_connection(("127.0.0.1", w.port), timeout=2).close()
                return False
            except ConnectionRefusedError:
                return True
        assert eventually(refused, timeout=1)
        assert held.poll() is None  # while the pool still serves its request
        assert held.communicate(timeout=30)[0] == "200"  # which finishes
        assert w.proc.wait(timeout=30) == 0
    finally:
        held.kill()
        w.stop()


def test_sighup_reloads_code_with_no_refused_request():
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="h3reload-"))
    w = None
    try:
        shutil.copy(APPS / "versioned.py", tmp / "versioned.py")
        w = Worker("versioned:app", workers=2, app_dir=tmp)
        assert curl(w.url("/")).stdout.startswith("v1 ")
        old = set(w.worker_pids())
        src = (tmp / "versioned.py").read_text().replace('VERSION = "v1"', 'VERSION = "v2"')
        (tmp / "versioned.py").write_text(src)
        failures, answers, stop = [], [], threading.Event()

        def load():
            while not stop.is_set():
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", w.port, timeout=10)
                    conn.request("GET", "/", headers={"Connection": "close"})
                    r = conn.getresponse()
                    answers.append(r.read().decode())
                    if r.status != 200:
                        failures.append(r.status)
                except Exception as exc:  # a refused or reset request
                    failures.append(repr(exc))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        w.signal(signal.SIGHUP)
        assert eventually(lambda: set(w.worker_pids()).isdisjoint(old) and len(w.worker_pids()) == 2,
                          timeout=30), w.log()
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(20)
        assert failures == []
        assert answers[-1].startswith("v2 ")
        assert curl(w.url("/")).stdout.startswith("v2 ")
        assert w.stop() == 0
    finally:
        if w:
            w.stop()
        shutil.rmtree(tmp)


def test_reload_restarts_the_workers_when_a_python_file_changes():
    """--reload, as uvicorn's: a saved .py file under --app-dir brings fresh
    workers on the new code; other files (an editor's swap file, notes) do
    not. Code that no longer imports leaves the old workers serving, and
    the save that fixes it is served. A package folder made after the start
    is watched too."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="h3reload-"))
    w = None

    def version():
        return curl(w.url("/")).stdout.split(" ")[0]

    def save(path, text):
        tmp.joinpath(path).write_text(text)

    try:
        shutil.copy(APPS / "versioned.py", tmp / "versioned.py")
        source = (tmp / "versioned.py").read_text()
        w = Worker("versioned:app", workers=2, app_dir=tmp, args=["--reload"])
        assert w.wait_log("--reload: watching 1 folders")
        assert version() == "v1"
        pids = set(w.worker_pids())
        save("notes.txt", "not code")
        save(".versioned.py.swp", "an editor's")
        time.sleep(1)
        assert set(w.worker_pids()) == pids, w.log()[-2000:]
        save("versioned.py", source.replace('"v1"', '"v2"'))
        assert eventually(lambda: version() == "v2", timeout=30), w.log()[-2000:]
        assert eventually(lambda: len(w.worker_pids()) == 2 and set(w.worker_pids()).isdisjoint(pids))
        save("versioned.py", "this is not Python\n")
        assert w.wait_log("the old one keeps serving", timeout=30), w.log()[-2000:]
        assert version() == "v2"
        (tmp / "pkg").mkdir()
        save("pkg/__init__.py", 'VERSION = "v3"\n')
        save("versioned.py", source.replace('VERSION = "v1"', "from pkg import VERSION"))
        assert eventually(lambda: version() == "v3", timeout=30), w.log()[-2000:]
        save("pkg/__init__.py", 'VERSION = "v4"\n')
        assert eventually(lambda: version() == "v4", timeout=30), w.log()[-2000:]
        assert w.stop() == 0
    finally:
        if w:
            w.stop()
        shutil.rmtree(tmp)


def test_reload_waits_for_a_fix_when_no_worker_could_start():
    """--reload with code that does not import from the start: the worker
    says so and waits (uvicorn --reload does too) instead of stopping, and
    serves once a save fixes it."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="h3reload-"))
    w = None
    try:
        (tmp / "versioned.py").write_text("this is not Python\n")
        w = Worker("versioned:app", workers=1, app_dir=tmp, args=["--reload"], wait=False)
        assert w.wait_log("waiting for the code to change", timeout=30), w.log()[-2000:]
        assert w.proc.poll() is None  # still running
        shutil.copy(APPS / "versioned.py", tmp / "versioned.py")
        assert eventually(lambda: curl(w.url("/")).stdout.startswith("v1 "), timeout=30), w.log()[-2000:]
        assert w.stop() == 0
    finally:
        if w:
            w.stop()
        shutil.rmtree(tmp)


def test_limit_concurrency_and_uvicorns_option_names():
    """--limit-concurrency N (uvicorn's): a worker process running N apps
    answers the next request 503 at once, over HTTP/1.1 and HTTP/2, and
    serves again when one ends. uvicorn's --host/--port (here a second
    address), --limit-max-requests and --timeout-graceful-shutdown are
    taken as they are."""
    second = free_port()
    w = Worker("probe:app", workers=1, args=["--limit-concurrency", "2", "--host", "127.0.0.1", "--port",
                                             str(second), "--limit-max-requests", "1000",
                                             "--timeout-graceful-shutdown", "5"])
    try:
        slow = [subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", w.url("/sleep?s=3")],
                                 stdout=subprocess.PIPE, text=True) for _ in range(2)]
        busy = f"http://127.0.0.1:{second}/pid"
        assert eventually(lambda: curl("-w", "%{http_code}", "-o", "/dev/null", busy).stdout == "503")
        r = curl("-sS", busy)
        assert r.stdout == "Service Unavailable: the worker is at its --limit-concurrency\n", r.stdout
        assert curl("--http2-prior-knowledge", "-w", "%{http_code}", "-o", "/dev/null", busy).stdout == "503"
        assert [p.communicate(timeout=30)[0] for p in slow] == ["200", "200"]
        assert curl_json(busy)["pid"] in w.worker_pids()
    finally:
        assert w.stop() == 0


def test_max_requests_recycles_the_worker():
    w = Worker("probe:app", workers=1, args=["--max-requests", "20"])
    try:
        first = curl_json(w.url("/pid"))["pid"]
        pids = {first}
        for _ in range(60):
            r = curl("-w", "%{http_code}", "-o", "/dev/null", w.url("/pid"), timeout=20)
            assert r.stdout == "200"
        pids.add(curl_json(w.url("/pid"))["pid"])
        assert len(pids) == 2 and w.wait_log("recycling this worker")
    finally:
        assert w.stop() == 0


def test_ttin_ttou_change_the_worker_count():
    w = Worker("probe:app", workers=2)
    try:
        w.signal(signal.SIGTTIN)
        deadline = time.monotonic() + 30
        while len(w.worker_pids()) != 3:
            assert time.monotonic() < deadline, w.log()
            time.sleep(0.1)
        for expected in (2, 1):  # one at a time: pending signals of a kind coalesce
            w.signal(signal.SIGTTOU)
            deadline = time.monotonic() + 30
            while len(w.worker_pids()) != expected:
                assert time.monotonic() < deadline, w.log()
                time.sleep(0.1)
        assert curl_json(w.url("/pid"))["pid"] in w.worker_pids()
    finally:
        assert w.stop() == 0
