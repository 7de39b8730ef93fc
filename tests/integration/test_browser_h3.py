"""Headless Chromium (Debian's) loads a page from h3gate over HTTP/3, and
the ASGI app records http_version "3"."""

import base64
import hashlib
import shutil
import subprocess
import tempfile

import pytest

from h3env import Gateway, Worker, curl_json, run
from test_http3 import H3_CONFIG, SECRET

CHROMIUM = shutil.which("chromium")


def spki_hash(cert):
    """The base64 SHA-256 of the certificate's public key, as Chromium wants it."""
    pub = run(["openssl", "x509", "-in", cert, "-pubkey", "-noout"], check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub.encode(),
                         capture_output=True, check=True).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def chromium_dump_dom(g, url, *flags):
    """Headless Chromium's DOM of url, trusting the gateway's test certificate."""
    profile = tempfile.mkdtemp(prefix="h3chromium-")
    try:
        return run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", f"--user-data-dir={profile}",
                    f"--ignore-certificate-errors-spki-list={spki_hash(g.dir / 'cert.pem')}",
                    "--host-resolver-rules=MAP localhost 127.0.0.1", *flags, "--dump-dom", url],
                   timeout=90)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_chromium_loads_a_page_over_http3():
    w = Worker("probe:app")
    g = Gateway(H3_CONFIG, servers=f"127.0.0.1:{w.port}", response_timeout="10s", secret=SECRET,
                retry="never")
    try:
        origin = f"localhost:{g.tls_port}"
        r = chromium_dump_dom(g, f"https://{origin}/page", "--enable-quic",
                              f"--origin-to-force-quic-on={origin}")
        assert "http_version=3" in r.stdout, r.stdout + r.stderr[-3000:]
        assert "scheme=https" in r.stdout
    finally:
        g.stop()
        w.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_chromium_websocket_through_the_gateway():
    """The page comes over HTTPS (HTTP/2); its script opens a WebSocket to
    the same origin, which Chromium sends as RFC 8441 extended CONNECT on
    that HTTP/2 connection because the gateway advertises it."""
    w = Worker("ws_app:app")
    g = Gateway(H3_CONFIG, servers=f"127.0.0.1:{w.port}", response_timeout="10s", secret=SECRET,
                retry="never")
    try:
        origin = f"localhost:{g.tls_port}"
        r = chromium_dump_dom(g, f"https://{origin}/page", "--disable-quic",
                              "--virtual-time-budget=10000")
        assert "echo:browser says hi" in r.stdout, r.stdout + r.stderr[-3000:]
        sessions = curl_json(w.url("/sessions"))
        assert sessions and sessions[-1][1] == "wss", sessions
        print("Chromium's WebSocket reached the app as HTTP", sessions[-1][0])
        assert sessions[-1][0] == "2", f"expected RFC 8441 over HTTP/2, got {sessions}"
    finally:
        g.stop()
        w.stop()
