"""Real frameworks from Debian behind h3gate-worker: Starlette, FastAPI,
Django's ASGI handler, Quart."""


import json
import pathlib
import tempfile

import httpx
import pytest

from h3env import BASIC_CONFIG, BIN, Gateway, Worker, curl, curl_json, eventually, h2_raw_request, run

PROTOCOLS = [("--http1.1", "1.1"), ("--http2-prior-knowledge", "2")]


@pytest.fixture(scope="module")
def starlette():
    w = Worker("starlette_app:app", workers=1)
    yield w
    assert w.stop() == 0
    w.assert_clean()


@pytest.mark.parametrize("flag,version", PROTOCOLS)
def test_starlette(starlette, flag, version):
    j = curl_json(flag, starlette.url("/?a=1"))
    assert j == {"framework": "starlette", "http_version": version, "client": "127.0.0.1",
                 "scheme": "http", "path": "/", "query": {"a": "1"}, "db": "connected"}
    assert curl(flag, starlette.url("/stream?n=3")).stdout == "line 0\nline 1\nline 2\n"
    assert curl_json(flag, "--data-binary", "x" * 100000, starlette.url("/upload")) == {"size": 100000}


def test_starlette_background_task_runs_after_response(starlette):
    assert curl(starlette.url("/background")).stdout == "queued"
    assert eventually(lambda: curl_json(starlette.url("/done"))["done"] == ["ran"], timeout=5)


def test_fastapi():
    w = Worker("fastapi_app:app")
    try:
        for flag, version in PROTOCOLS:
            assert curl_json(flag, w.url("/")) == {"framework": "fastapi", "http_version": version,
                                                   "ready": True}
            r = curl_json(flag, "-H", "Content-Type: application/json", "-d",
                          '{"name": "widget", "price": 10}', w.url("/items"))
            assert r == {"name": "widget", "price_with_tax": 12.0}
            assert curl_json(flag, w.url("/items/42?q=x")) == {"item_id": 42, "q": "x"}
            assert curl(flag, w.url("/stream")).stdout == "part 0\npart 1\npart 2\n"
        bad = curl("-w", "%{http_code}", "-o", "/dev/null", "-H", "Content-Type: application/json",
                   "-d", '{"name": 1}', w.url("/items"))
        assert bad.stdout == "422"
        with httpx.Client(http1=False, http2=True) as c:
            r = c.get(w.url("/items/7"))
            assert r.http_version == "HTTP/2" and r.json()["item_id"] == 7
    finally:
        assert w.stop() == 0


def test_django():
    w = Worker("django_app:app")
    try:
        for flag, _ in PROTOCOLS:
            j = curl_json(flag, w.url("/?q=hello"))
            assert j == {"framework": "django", "method": "GET", "path": "/", "scheme": "http",
                         "host": f"127.0.0.1:{w.port}", "query": "hello"}
            r = curl(flag, "--data-binary", "d" * 100000, w.url("/echo"))
            assert r.stdout == "d" * 100000
            assert curl(flag, w.url("/stream")).stdout == "row 0\nrow 1\nrow 2\nrow 3\n"
            assert curl_json(flag, w.url("/info"))["remote_addr"] == "127.0.0.1"
    finally:
        assert w.stop() == 0


def test_quart():
    w = Worker("quart_app:app")
    try:
        for flag, version in PROTOCOLS:
            assert curl_json(flag, w.url("/")) == {"framework": "quart", "http_version": version}
            assert curl_json(flag, "--data-binary", "q" * 5000, w.url("/echo")) == {"size": 5000}
    finally:
        assert w.stop() == 0


def test_cookie_crumbs_reach_the_app_as_one_cookie_field(starlette):
    """RFC 9113 8.2.3 and RFC 9114 4.2.1: HTTP/2 and HTTP/3 clients may
    split Cookie into one field per cookie (browsers do, for HPACK and
    QPACK), and the server MUST join them with "; " before an application
    sees them. Starlette read only the first field ({"a": "1"}), Django
    joined them with "," (a = "1,b=2"). Over h2c to the worker, and over
    HTTP/3 through the gateway."""
    crumbs = [("cookie", "a=1"), ("x-between", "1"), ("cookie", "b=2"), ("cookie", "c=3")]
    want = {"a": "1", "b": "2", "c": "3"}
    head = [(":method", "GET"), (":scheme", "http"), (":authority", "x")]
    status, body = h2_raw_request(starlette.port, head + [(":path", "/cookies")] + crumbs)
    assert (status, json.loads(body)) == ("200", want), body
    django = Worker("django_app:app", workers=1)
    try:
        status, body = h2_raw_request(django.port, head + [(":path", "/info")] + crumbs)
        assert (status, json.loads(body)["cookies"]) == ("200", want), body
        assert curl_json("--http1.1", "-H", "Cookie: a=1; b=2", django.url("/info"))["cookies"] == {"a": "1", "b": "2"}
    finally:
        assert django.stop() == 0
    g = Gateway(BASIC_CONFIG, servers=f"127.0.0.1:{starlette.port}", response_timeout="5s")
    try:
        out = pathlib.Path(tempfile.mkdtemp(prefix="h3cookies-")) / "body"
        r = run([BIN / "h3load", "-n", "1", "-H", "cookie: a=1", "-H", "cookie: b=2", "-H", "cookie: c=3",
                 "-o", str(out), f"https://127.0.0.1:{g.tls_port}/cookies"], timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(out.read_bytes()) == want
    finally:
        assert g.stop() == 0
