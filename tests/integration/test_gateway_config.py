"""Config errors name file, line and column; -t checks a config like nginx -t;
the minimal config from the issue works exactly as written."""

import pathlib
import re
import tempfile

import pytest

from h3env import BIN, Gateway, Worker, curl_json, make_cert, run

GOOD = """\
listen:
  - address: 127.0.0.1:18443
    tls: {certificate: cert.pem, key: key.pem}
upstreams:
  - name: app
    servers: [127.0.0.1:8000]
routes:
  - path_prefix: /
    upstream: app
"""


def check(text, with_cert=True):
    d = pathlib.Path(tempfile.mkdtemp(prefix="h3conf-"))
    if with_cert:
        make_cert(d)
    f = d / "gateway.yaml"
    f.write_text(text)
    return run([BIN / "h3gate", "-t", "-c", f]), str(f)


def test_good_config_passes():
    r, path = check(GOOD)
    assert r.returncode == 0, r.stderr
    assert f"configuration file {path} test is successful" in r.stdout


@pytest.mark.parametrize("text,line,col,message", [
    (GOOD.replace("routes:", "routs:"), 7, 1, 'unknown key "routs" in top level'),
    (GOOD.replace("    servers: [127.0.0.1:8000]", "    servers: [127.0.0.1:8000]\n    resolve_interval: soon"),
     7, 23, '"resolve_interval" must be a duration'),
    (GOOD.replace("    servers: [127.0.0.1:8000]", "    servers: [127.0.0.1:8000]\n    connections_per_server: 0"),
     7, 29, '"connections_per_server" must be auto or from 1 to 256, got "0"'),
    (GOOD.replace("upstream: app", "upstream: nope"), 8, 5, 'route names upstream "nope", which is not defined'),
    (GOOD.replace("  - name: app\n", "  - servers: [x:1]\n    name: app\n").replace("    servers: [127.0.0.1:8000]\n", ""),
     5, 5, None),
    (GOOD.replace("    servers: [127.0.0.1:8000]", "    servers: 127.0.0.1:8000"), 6, 14, '"servers" must be a list'),
    (GOOD.replace("127.0.0.1:18443", "127.0.0.1:99999"), 2, 14, "port must be a number"),
    (GOOD.replace("    upstream: app", "    upstream: app\n  - path_prefix: api\n    upstream: app"), 10, 5,
     'path_prefix must start with "/"'),
    (GOOD + "listen: []\n", 10, 1, 'key "listen" given twice'),
    (GOOD.replace("tls: {", "tls: {{"), 4, None, "YAML syntax error"),
    ("", 1, 1, "the file is empty"),
    (GOOD.replace("    servers: [127.0.0.1:8000]", "    servers: [127.0.0.1:8000]\n    balance: random"),
     7, 14, '"balance" must be one of least_outstanding, round_robin, got "random"'),
    (GOOD.replace("    servers: [127.0.0.1:8000]\n", ""), 5, 5, 'upstream needs the key "servers"'),
    (GOOD + "quic:\n  qlog_dir: no-such-folder\n", 11, 13, 'no-such-folder: No such file or directory'),
    (GOOD + "quic:\n  qlog_dir: gateway.yaml\n", 11, 13, "gateway.yaml is not a folder"),
    (GOOD + "quic:\n  qlog_dir: .\n", None, None, None),
    (GOOD.replace("key: key.pem}", "key: key.pem, certificates: [{certificate: cert.pem}]}"), 3, 63,
     'certificates entry needs the key "key"'),
    (GOOD.replace("key: key.pem}", "key: key.pem, certificates: [{certificate: cert.pem, key: key.pem}]}"),
     None, None, None),
    (GOOD.replace("    upstream: app", "    upstream: app\n    limits: {max_body_size: 1g, max_connections: 3}"),
     10, 33, 'unknown key "max_connections" in route limits (expected one of: max_body_size)'),
    (GOOD.replace("    upstream: app", "    upstream: app\n    timeouts: {response_header: soon}"),
     10, 33, '"response_header" must be a duration'),
    (GOOD.replace("    upstream: app", "    upstream: app\n    limits: {max_body_size: 1g}\n"
                                    "    timeouts: {response_header: 5m, idle: 5m, websocket_idle: 2h}"), None, None, None),
    (GOOD.replace("key: key.pem}", "key: key.pem}\n    redirect_https: 443"), 2, 5,
     "redirect_https is for a cleartext listener (this one has tls)"),
    (GOOD.replace("    servers: [127.0.0.1:8000]", "    servers: [127.0.0.1:8000]\n    tcp_keepalive: 1500ms"), 5, 5,
     "tcp_keepalive is whole seconds"),
    (GOOD.replace("    upstream: app", "    upstream: app\n    strip_prefix: true"), 8, 5,
     'strip_prefix needs a path_prefix that ends with "/"'),
    (GOOD.replace("    upstream: app", "    upstream: app\n  - path_prefix: /\n    upstream: app"), 10, 5,
     'a route for any host and path_prefix "/" is given twice'),
    (GOOD.replace("    upstream: app", "    upstream: app\n    host: A.example\n"
                                    "  - {host: a.EXAMPLE, upstream: app}"), 11, 5,
     'a route for host "a.EXAMPLE" and path_prefix "/" is given twice'),
    (GOOD.replace("    upstream: app", "    upstream: app\n  - {host: a.example, upstream: app}\n"
                                    "  - {host: a.example, path_prefix: /api/, upstream: app}"), None, None, None),
    (GOOD.replace("    upstream: app", "    upstream: app\n    host: api.example.com:8443"), 8, 5,
     'route host "api.example.com:8443" must be a name such as api.example.com or *.example.com, without a port'),
    (GOOD.replace("    upstream: app", "    upstream: app\n    host: a b"), 8, 5, 'route host "a b" must be'),
    (GOOD.replace("    upstream: app", "    upstream: app\n  - {host: '*.example.com', upstream: app}\n"
                                    "  - {host: '[::1]', upstream: app}"), None, None, None),
], ids=["unknown-key", "bad-duration", "out-of-range", "undefined-upstream", "key-order-ok",
        "not-a-list", "bad-port", "bad-prefix", "duplicate-key", "yaml-syntax", "empty",
        "bad-enum", "missing-key", "qlog-dir-missing", "qlog-dir-a-file", "qlog-dir-ok",
        "sni-cert-without-key", "sni-cert-ok", "route-limit-unknown", "route-timeout-bad", "route-limits-ok",
        "redirect-on-tls", "keepalive-not-whole-seconds", "strip-needs-a-folder", "route-twice",
        "route-twice-host-case", "routes-differ-ok", "route-host-with-port", "route-host-with-space",
        "route-hosts-ok"])
def test_errors_name_file_line_column(text, line, col, message):
    r, path = check(text)
    if message is None:  # keys in any order are fine
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode == 1
    m = re.match(r"h3gate: (.+):(\d+):(\d+): (.*)", r.stderr.strip())
    assert m, r.stderr
    assert m.group(1) == path
    assert int(m.group(2)) == line, r.stderr
    if col is not None:
        assert int(m.group(3)) == col, r.stderr
    assert message in m.group(4), r.stderr


def test_bad_certificate_is_reported():
    r, path = check(GOOD, with_cert=False)
    assert r.returncode == 1
    assert "cannot load certificate" in r.stderr and "cert.pem" in r.stderr


def test_a_bad_sni_certificate_is_reported():
    r, path = check(GOOD.replace("key: key.pem}", "key: key.pem, certificates: [{certificate: nope.pem, key: key.pem}]}"))
    assert r.returncode == 1
    assert "cannot load certificate" in r.stderr and "nope.pem" in r.stderr, r.stderr


def test_missing_config_file():
    r = run([BIN / "h3gate", "-c", "/nonexistent/gateway.yaml"])
    assert r.returncode == 1 and "/nonexistent/gateway.yaml:1:1: cannot open" in r.stderr


ISSUE_MINIMAL = """\
resolver: 127.0.0.1:5353          # optional, like nginx's resolver; default: /etc/resolv.conf
listen:
  - address: 127.0.0.1:8443       # TLS: HTTP/1.1 + HTTP/2 on TCP (and HTTP/3 on UDP, next issue)
    tls: {certificate: certs/cert.pem, key: certs/key.pem}
  - address: 127.0.0.1:8080       # cleartext: HTTP/1.1 + h2c
upstreams:
  - name: app
    servers: [127.0.0.1:8000, backend.internal:8000, unix:/run/h3gate/app.sock]
    resolve_interval: 5s          # names are re-resolved this often
routes:
  - path_prefix: /
    upstream: app
"""


def test_the_minimal_config_works_exactly_as_written():
    d = pathlib.Path(tempfile.mkdtemp(prefix="h3min-"))
    (d / "certs").mkdir()
    make_cert(d / "certs")
    (d / "gateway.yaml").write_text(ISSUE_MINIMAL)
    r = run([BIN / "h3gate", "-t", "-c", d / "gateway.yaml"])
    assert r.returncode == 0, r.stderr
    # And it serves: 127.0.0.1:8000 answers; the name and the unix socket don't.
    w = Worker("probe:app", port=8000)
    g = Gateway(ISSUE_MINIMAL, directory=d)
    try:
        for _ in range(5):
            assert curl_json("-k", "https://127.0.0.1:8443/pid")["pid"] in w.worker_pids()
            assert curl_json("--http2-prior-knowledge", "http://127.0.0.1:8080/pid")["pid"] > 0
    finally:
        g.stop()
        w.stop()
