"""The example ASGI app the local stack serves: a page, JSON that shows the
protocol the client really used, a streaming response, an upload echo and a
WebSocket echo (/ws)."""

import hashlib
import json

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>h3gate</title></head>
<body><h1>Hello from h3gate</h1>
<p>This page came to you over <b id="proto">?</b>.</p>
<p>WebSocket: <b id="ws">connecting...</b></p>
<script>
fetch('/api/info').then(r => r.json()).then(j => {
  document.getElementById('proto').textContent = 'HTTP/' + j.http_version;
});
const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
ws.onopen = () => ws.send('hello');
ws.onmessage = (e) => { document.getElementById('ws').textContent = e.data; };
ws.onerror = () => { document.getElementById('ws').textContent = 'failed'; };
</script></body></html>
"""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        return await websocket_echo(scope, receive, send)
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/api/info":
        body = json.dumps({
            "http_version": scope["http_version"],
            "scheme": scope["scheme"],
            "client": scope["client"],
            "method": scope["method"],
        }).encode()
        await respond(send, 200, b"application/json", body)
    elif path == "/api/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for i in range(10):
            await send({"type": "http.response.body", "body": f"line {i}\n".encode(),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/api/upload":
        digest, size = hashlib.sha256(), 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if not message.get("more_body"):
                break
        body = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
        await respond(send, 200, b"application/json", body)
    elif path == "/healthz":
        await respond(send, 200, b"text/plain", b"ok\n")
    elif path == "/":
        await respond(send, 200, b"text/html; charset=utf-8", PAGE)
    else:
        await respond(send, 404, b"text/plain", b"not found\n")


async def respond(send, status, content_type, body):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def websocket_echo(scope, receive, send):
    """Echoes text and bytes, saying which protocol carried the WebSocket."""
    if scope["path"] != "/ws":
        await send({"type": "websocket.close", "code": 1008})  # before accepting: a 403
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    carrier = f"HTTP/{scope['http_version']}"
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": f"echo over {carrier}: {message['text']}"})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
