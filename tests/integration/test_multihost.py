"""Backends that scale independently, proved with network namespaces
standing in for containers: a gateway host and backend hosts joined by veth
pairs on a bridge, dnsmasq answering the backend service name with the
hosts' addresses, two h3gate-worker processes per host. Under a bounded
HTTP/2 and HTTP/3 load a fourth host joins the name and one leaves (its
worker gets SIGTERM and drains): no request fails, every live host and
process serves, and the removed host gets nothing after it left."""

import collections
import datetime
import os
import re
import signal
import subprocess
import time

import pytest

from h3env import APPS, BIN, GATEWAY_READY, PYTHON, Process, log_time, make_cert

TAG = f"h3t{os.getpid() % 100000}"
NET = "10.77.0"
BRIDGE = f"{TAG}br"
HOSTS = {"gw": 10, "b1": 11, "b2": 12, "b3": 13, "b4": 14}
NAME = "backend.internal"


def sh(*cmd, check=True):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: {r.stderr.strip()}")
    return r


def ns(host):
    return f"{TAG}{host}"


def in_ns(host, *cmd):
    return ["ip", "netns", "exec", ns(host), *map(str, cmd)]


def teardown():
    for host in HOSTS:
        sh("ip", "netns", "del", ns(host), check=False)
        sh("ip", "link", "del", f"{TAG}{host}v", check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


def setup_network():
    try:
        sh("ip", "netns", "add", ns("gw"))
    except RuntimeError as exc:
        pytest.skip(f"the kernel refuses network namespaces here: {exc}")
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{NET}.1/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    for host, last in HOSTS.items():
        if host != "gw":
            sh("ip", "netns", "add", ns(host))
        outside, inside = f"{TAG}{host}v", f"{TAG}{host}i"
        sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        sh("ip", "link", "set", inside, "netns", ns(host))
        sh("ip", "link", "set", outside, "master", BRIDGE)
        sh("ip", "link", "set", outside, "up")
        sh(*in_ns(host, "ip", "addr", "add", f"{NET}.{last}/24", "dev", inside))
        sh(*in_ns(host, "ip", "link", "set", inside, "up"))
        sh(*in_ns(host, "ip", "link", "set", "lo", "up"))


def access_counts(worker):
    """(pid, timestamp) for each request a worker process logged."""
    out = []
    for line in worker.log().splitlines():
        m = re.match(r"(\S+Z) \[info\] h3gate-worker\[(\d+)\]: \S+ - \"", line)
        if m:
            out.append((int(m.group(2)), log_time(line)))
    return out


def set_dns(hosts_file, dnsmasq, hosts):
    hosts_file.write_text("".join(f"{NET}.{HOSTS[h]} {NAME}\n" for h in hosts))
    dnsmasq.signal(signal.SIGHUP)  # dnsmasq re-reads its addn-hosts file


@pytest.fixture
def network():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    teardown()
    try:
        setup_network()
        yield
    finally:
        teardown()


def test_backends_join_and_leave_under_load(network, tmp_path):
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("")
    dnsmasq = Process(["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
                       f"--listen-address={NET}.1", "--port=5353", f"--addn-hosts={hosts_file}",
                       "--local-ttl=1", "--log-facility=-"], name="dnsmasq")
    workers = {}
    for host in ("b1", "b2", "b3", "b4"):
        workers[host] = Process(in_ns(host, BIN / "h3gate-worker", "--bind", f"{NET}.{HOSTS[host]}:8000",
                                      "--workers", "2", "--access-log", "--app-dir", APPS,
                                      "--forwarded-allow-ips", f"{NET}.0/24", "probe:app"),
                                cwd=APPS, name=f"worker-{host}")
    for w in workers.values():
        assert w.wait_log("2 worker processes ready", timeout=60), w.log()
    set_dns(hosts_file, dnsmasq, ["b1", "b2", "b3"])
    make_cert(tmp_path)
    gw_ip = f"{NET}.{HOSTS['gw']}"
    config = f"""
resolver: {NET}.1:5353
log: {{level: info, access_log: "off"}}
quic: {{retry: never, secret: "{'ab' * 32}"}}
listen:
  - address: {gw_ip}:8443
    tls: {{certificate: cert.pem, key: key.pem}}
  - address: {gw_ip}:8080
upstreams:
  - name: app
    servers: [{NAME}:8000]
    resolve_interval: 500ms
routes:
  - path_prefix: /
    upstream: app
"""
    (tmp_path / "gateway.yaml").write_text(config)
    gateway = Process(in_ns("gw", BIN / "h3gate", "-c", tmp_path / "gateway.yaml"), cwd=tmp_path,
                      name="gateway")
    try:
        assert gateway.wait_log(GATEWAY_READY), gateway.log()
        assert gateway.wait_log(f"server {NAME}:8000 ({NET}.13:8000) added", timeout=10), gateway.log()
        # Bounded load: counts and a time limit on both clients.
        h2 = subprocess.Popen(in_ns("gw", "h2load", "-n", "12000", "-c", "4", "-m", "8",
                                    f"http://{gw_ip}:8080/sleep?s=0.01"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        h3 = subprocess.Popen(in_ns("gw", BIN / "h3load", "--timeout", "120", "-n", "12000", "-c", "4",
                                    "-m", "8", f"https://{gw_ip}:8443/sleep?s=0.01"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.5)
        set_dns(hosts_file, dnsmasq, ["b1", "b2", "b3", "b4"])  # a fourth host joins
        assert gateway.wait_log(f"({NET}.14:8000) added", timeout=10), gateway.log()
        time.sleep(1.5)
        set_dns(hosts_file, dnsmasq, ["b2", "b3", "b4"])  # b1 leaves the name...
        assert gateway.wait_log(f"({NET}.11:8000) left DNS: draining", timeout=10), gateway.log()
        left = datetime.datetime.utcnow()
        workers["b1"].signal(signal.SIGTERM)  # ...and its worker drains
        out2, _ = h2.communicate(timeout=180)
        out3, _ = h3.communicate(timeout=180)
        assert "12000 succeeded, 0 failed" in out2, out2
        assert re.search(r"requests: 12000 total, 12000 done, 12000 succeeded, 0 failed, 0 errored", out3), out3
        assert workers["b1"].proc.wait(timeout=60) == 0
        # Every live host, and both processes on each, served requests.
        for host in ("b2", "b3", "b4"):
            per_pid = collections.Counter(pid for pid, _ in access_counts(workers[host]))
            assert len(per_pid) == 2 and min(per_pid.values()) > 0, (host, per_pid)
        # The host that left served before, and nothing once it had left
        # (requests already on it when it left may finish within a moment).
        print("served per host and process:", {h: dict(collections.Counter(p for p, _ in access_counts(workers[h]))) for h in workers})
        b1 = access_counts(workers["b1"])
        assert b1, "b1 never served"
        late = [ts for _, ts in b1 if ts > left + datetime.timedelta(seconds=0.5)]
        assert not late, late[:5]
    finally:
        gateway.stop()
        for w in workers.values():
            w.stop()
        dnsmasq.stop()


def one_worker_behind_a_gateway(tmp_path, listen, upstream_extra=""):
    """An h3gate-worker on host b1 (graceful timeout 1 s) and a gateway on
    host gw listening on `listen` in front of it, both ready."""
    worker = Process(in_ns("b1", BIN / "h3gate-worker", "--bind", f"{NET}.11:8000", "--workers", "1",
                           "--graceful-timeout", "1", "--app-dir", APPS, "probe:app"), cwd=APPS, name="worker-b1")
    (tmp_path / "gateway.yaml").write_text(f"""
log: {{level: info, access_log: "off"}}
listen:
  - address: {listen}
upstreams:
  - name: app
    servers: [{NET}.11:8000]
{upstream_extra}routes:
  - path_prefix: /
    upstream: app
""")
    gateway = Process(in_ns("gw", BIN / "h3gate", "-c", tmp_path / "gateway.yaml"), cwd=tmp_path, name="gateway")
    try:
        assert worker.wait_log("1 worker processes ready", timeout=60), worker.log()
        assert gateway.wait_log(GATEWAY_READY), gateway.log()
    except AssertionError:
        gateway.stop()
        worker.stop()
        raise
    return worker, gateway


def test_a_backend_host_that_vanishes_is_found_by_keepalive(network, tmp_path):
    """upstreams.tcp_keepalive: a backend host that vanishes without a word
    (its link goes down: no reset, no FIN, as when a machine loses power)
    leaves connections that look alive. Keepalive probes find it: a request
    waiting on that host gets its 502 seconds later, where it used to wait
    out the response timeout (60 s) for a 504. (A GET is sent again to the
    host, the upstream's only server, which is never ejected: that attempt
    meets connect_timeout, and the answer may be its 504.)"""
    gw_ip = f"{NET}.{HOSTS['gw']}"
    worker, gateway = one_worker_behind_a_gateway(tmp_path, f"{gw_ip}:8080", "    tcp_keepalive: 1s\n")
    try:
        url = f"http://{gw_ip}:8080"
        assert sh(*in_ns("gw", "curl", "-sS", f"{url}/pid")).stdout.startswith('{"pid"')
        waiting = subprocess.Popen(in_ns("gw", "curl", "-sS", "--max-time", "40", "-o", "/dev/null", "-w",
                                         "%{http_code}", f"{url}/sleep?s=30"), stdout=subprocess.PIPE, text=True)
        time.sleep(1)  # the request is in the app
        sh(*in_ns("b1", "ip", "link", "set", f"{TAG}b1i", "down"))  # the host vanishes
        status = waiting.communicate(timeout=60)[0]
        assert status in ("502", "504"), (status, gateway.log()[-2000:])
        assert "Connection timed out" in gateway.log(), gateway.log()[-2000:]  # keepalive found it
    finally:
        gateway.stop()
        worker.stop()


HOSTLESS_CLIENT = """
import json, socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
for request in (b"GET /scope HTTP/1.0\\r\\n\\r\\n", b"GET /scope HTTP/1.1\\r\\nHost:\\r\\nConnection: close\\r\\n\\r\\n"):
    with socket.create_connection((ip, port), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\\r\\n\\r\\n")
    hosts = [v for k, v in json.loads(body)["headers"] if k == "host"] if b" 200 " in head[:13] else []
    print(head.split(b"\\r\\n")[0].decode(), *hosts)
"""


def test_a_wildcard_listener_names_the_address_a_hostless_request_reached(network, tmp_path):
    """A request that names no host (HTTP/1.0 without Host, or an empty
    Host) gets the address it reached as its authority. The gateway used the
    listener's configured address, which for a wildcard listener (":8080",
    all addresses, as in containers) is no authority: ":8080" went to the
    app as its host. In a namespace of its own, so that the wildcard binds
    nothing outside the test."""
    gw_ip = f"{NET}.{HOSTS['gw']}"
    worker, gateway = one_worker_behind_a_gateway(tmp_path, '":8080"')
    try:
        for ip in (gw_ip, "127.0.0.1"):
            r = sh(*in_ns("gw", PYTHON, "-c", HOSTLESS_CLIENT, ip, 8080))
            assert r.stdout.splitlines() == [f"HTTP/1.1 200 OK {ip}:8080"] * 2, (r.stdout, gateway.log()[-2000:])
    finally:
        gateway.stop()
        worker.stop()
