"""A raw ASGI app whose paths exercise the worker: scope echo, streaming,
uploads, trailers, errors, disconnects. Tests read its JSON answers."""

import asyncio
import hashlib
import json
import os
import resource

STATE_STARTED = "probe-started"


def _rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _peak_rss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def _json(send, obj, status=200, extra=()):
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive):
    h = hashlib.sha256()
    size = chunks = 0
    while True:
        m = await receive()
        if m["type"] == "http.disconnect":
            return None
        body = m.get("body", b"")
        h.update(body)
        size += len(body)
        chunks += 1
        if not m.get("more_body"):
            return {"size": size, "sha256": h.hexdigest(), "chunks": chunks}


def _query(scope):
    out = {}
    for part in scope["query_string"].decode().split("&"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


_START = {"type": "http.response.start", "status": 200, "headers": []}
_BODY = {"type": "http.response.body", "body": b"done"}
MISUSES = {  # what /misuse sends, by ?how=
    "crlf": [{**_START, "headers": [(b"x-a", b"ok\r\nset-cookie: injected=1")]}, _BODY],
    "nul": [{**_START, "headers": [(b"x-a", b"a\x00b")]}, _BODY],
    "name": [{**_START, "headers": [(b"x a", b"v")]}, _BODY],
    "name-empty": [{**_START, "headers": [(b"", b"v")]}, _BODY],
    "head-too-large": [{**_START, "headers": [(b"x-big-%d" % i, b"v" * 1000) for i in range(100)]}, _BODY],
    "str": [{**_START, "headers": [("x-a", "v")]}, _BODY],
    "triple": [{**_START, "headers": [(b"x-a", b"v", b"w")]}, _BODY],
    "status": [{**_START, "status": 1000}, _BODY],
    "status-103": [{**_START, "status": 103}, _BODY],
    "no-status": [{"type": "http.response.start"}, _BODY],
    "body-first": [_BODY],
    "start-twice": [_START, _START, _BODY],
    "not-a-dict": ["http.response.start"],
    "no-type": [{"status": 200}],
    "websocket-type": [{"type": "websocket.accept"}],
    "after-end": [_START, _BODY, _BODY],
    "trailers-unannounced": [_START, _BODY, {"type": "http.response.trailers", "headers": []}],
    "trailers-twice": [{**_START, "trailers": True}, _BODY, {"type": "http.response.trailers"},
                       {"type": "http.response.trailers"}],
    "receive-twice": [],
    "length-longer": [{**_START, "headers": [(b"content-length", b"3")]}, _BODY],
    "length-shorter": [{**_START, "headers": [(b"content-length", b"10")]}, _BODY],
    "length-shorter-late": [{**_START, "headers": [(b"content-length", b"10")]},
                            {"type": "http.response.body", "body": b"do", "more_body": True}, _BODY],
    "length-twice": [{**_START, "headers": [(b"content-length", b"4"), (b"Content-Length", b"4")]}, _BODY],
    "length-bogus": [{**_START, "headers": [(b"content-length", b"4x")]}, _BODY],
}
DISCONNECTS = []
INFLIGHT = [0, 0]  # now, max
HEALTH = [200]  # what /health answers; /health/set?status=N changes it


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                scope["state"]["started"] = STATE_STARTED
                scope["state"]["pid"] = os.getpid()
                await send({"type": "lifespan.startup.complete"})
            elif m["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    q = _query(scope)

    if path.startswith("/scope") or path == "*":  # "OPTIONS *" too
        body = await _read_body(receive)
        s = {k: v for k, v in scope.items() if k not in ("headers", "raw_path", "query_string", "state")}
        s["headers"] = [[k.decode("latin1"), v.decode("latin1")] for k, v in scope["headers"]]
        s["raw_path"] = scope["raw_path"].decode("latin1")
        s["query_string"] = scope["query_string"].decode("latin1")
        s["state"] = dict(scope.get("state", {}))
        s["body"] = body
        s["pid"] = os.getpid()
        s["types"] = {k: type(v).__name__ for k, v in scope.items()}
        s["header_types"] = sorted({type(x).__name__ for pair in scope["headers"] for x in pair})
        await _json(send, s)
    elif path == "/pid":
        await _json(send, {"pid": os.getpid()})
    elif path == "/health":
        await _json(send, {"pid": os.getpid()}, status=HEALTH[0])
    elif path == "/health/set":
        HEALTH[0] = int(q.get("status", "200"))
        await _json(send, {"status": HEALTH[0]})
    elif path == "/upload":
        info = await _read_body(receive)
        info["rss_kb"] = _rss_kb()
        info["peak_rss_kb"] = _peak_rss_kb()
        await _json(send, info)
    elif path == "/download":
        size = int(q.get("size", "1048576"))
        chunk = int(q.get("chunk", "65536"))
        block = bytes(range(256)) * (chunk // 256 + 1)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(size).encode())]})
        sent = 0
        while sent < size:
            n = min(chunk, size - sent)
            await send({"type": "http.response.body", "body": block[:n], "more_body": True})
            sent += n
        await send({"type": "http.response.body", "body": b""})
    elif path == "/rss":
        await _json(send, {"rss_kb": _rss_kb(), "peak_rss_kb": _peak_rss_kb(), "pid": os.getpid()})
    elif path == "/stream":
        n = int(q.get("n", "5"))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for i in range(n):
            await send({"type": "http.response.body", "body": f"chunk {i}\n".encode(), "more_body": True})
            await asyncio.sleep(float(q.get("delay", "0")))
        await send({"type": "http.response.body", "body": b""})
    elif path == "/trailers":
        await _read_body(receive)
        wants = "http.response.trailers" in scope.get("extensions", {})
        await send({"type": "http.response.start", "status": 200, "trailers": wants,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"body with trailers\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if wants:
            await send({"type": "http.response.trailers",
                        "headers": [(b"x-checksum", b"abc123"), (b"x-count", b"1")]})
    elif path == "/error-before":
        raise RuntimeError("probe: failing before the response")
    elif path == "/error-after":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await asyncio.sleep(0.1)  # the head goes out: a 500 is no longer possible
        raise RuntimeError("probe: failing after the response started")
    elif path == "/no-response":
        return
    elif path == "/misuse":
        # An app breaking the ASGI contract in one way (?how=); the worker
        # must refuse the message with a clear error.
        if q["how"] == "receive-twice":
            await receive()  # the request; the next two wait for the disconnect
            await asyncio.gather(receive(), receive())
        for message in MISUSES[q["how"]]:
            await send(message)
            if message.get("more_body"):
                await asyncio.sleep(0.1)  # the head goes out with the first part
    elif path == "/slow":
        # Waits for the client to go away, and records that it noticed.
        delay = float(q.get("delay", "30"))
        try:
            m = await asyncio.wait_for(receive(), timeout=delay)
            while m["type"] == "http.request" and m.get("more_body"):
                m = await asyncio.wait_for(receive(), timeout=delay)
            if m["type"] == "http.request":
                m = await asyncio.wait_for(receive(), timeout=delay)
            DISCONNECTS.append(m["type"])
        except asyncio.TimeoutError:
            DISCONNECTS.append("timeout")
        if DISCONNECTS[-1] != "http.disconnect":
            await _json(send, {"slept": delay})
    elif path == "/disconnects":
        await _json(send, {"disconnects": DISCONNECTS})
    elif path == "/sleep":
        INFLIGHT[0] += 1
        INFLIGHT[1] = max(INFLIGHT[1], INFLIGHT[0])
        try:
            await asyncio.sleep(float(q.get("s", "0.01")))
        finally:
            INFLIGHT[0] -= 1
        await _json(send, {"slept": True, "pid": os.getpid(), "max_inflight": INFLIGHT[1]})
    elif path == "/hold":
        # Reads nothing for a while: the client's window must run dry.
        await asyncio.sleep(float(q.get("s", "1")))
        info = await _read_body(receive)
        await _json(send, info or {})
    elif path == "/alt-svc":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"alt-svc", b'h3=":9999"; ma=60')]})
        await send({"type": "http.response.body", "body": b"own alt-svc"})
    elif path == "/page":
        html = (f"<!doctype html><html><body><p id=v>http_version={scope['http_version']}</p>"
                f"<p>scheme={scope['scheme']}</p></body></html>").encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                (b"content-length", str(len(html)).encode())]})
        await send({"type": "http.response.body", "body": html})
    elif path == "/dated":
        # the app's own Date: servers and proxies must pass it on, not add one
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT")]})
        await send({"type": "http.response.body", "body": b"dated"})
    elif path == "/status":
        # ?code=N[&length=L]: status N with the body "body", and a
        # Content-Length of L when given, whatever N allows
        q = _query(scope)
        extra = [(b"content-length", q["length"].encode())] if "length" in q else []
        await send({"type": "http.response.start", "status": int(q["code"]), "headers": extra})
        await send({"type": "http.response.body", "body": b"body"})
    elif path == "/headers":
        # Django-style capitalised names and a repeated header
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"Content-Type", b"text/plain"), (b"X-Multi", b"a"),
                                (b"X-Multi", b"b"), (b"Connection", b"keep-alive")]})
        await send({"type": "http.response.body", "body": b"created"})
    else:
        await _json(send, {"error": "not found", "path": path, "query": scope["query_string"].decode("latin1")}, status=404)
