"""A raw ASGI WebSocket app for the tests: every part of the websocket
scope, by path.

  /echo[?sub=1]      accept (the first offered subprotocol when sub=1) and
                     echo text and bytes; the text "close:CODE:REASON" makes
                     the app close with that code
  /scope             accept, send the scope (and the process id) as JSON, then echo
  /deny              refuse with a custom HTTP response (websocket.http.response)
  /reject            close before accepting (the server answers 403)
  /raise-before      raise before accepting (500)
  /raise-after       accept, then raise (close 1011)
  /misuse?how=H      break the ASGI contract in way H (WS_MISUSES)
  /hold              accept and wait for the disconnect; its code is recorded
  /slow-echo         accept, sleep a second while the client sends, then echo
                     everything in order (messages pile up in the server)
  /disconnects       plain HTTP: the disconnect codes recorded so far
  /sessions          plain HTTP: [http_version, scheme, client host] of each /echo
  /page              plain HTTP: a page whose script echoes over a WebSocket
  /wait-echo         plain HTTP: answers once an /echo session has ended (the
                     page's image: its load event waits for the WebSocket)
"""
import asyncio
import json
import os

_ACCEPT = {"type": "websocket.accept"}
WS_MISUSES = {  # what /misuse sends, by ?how=: each breaks the ASGI contract
    "subprotocol-bytes": [{**_ACCEPT, "subprotocol": b"chat"}],
    "header-crlf": [{**_ACCEPT, "headers": [(b"x-a", b"1\r\nx-injected: yes")]}],
    "send-before-accept": [{"type": "websocket.send", "text": "early"}],
    "http-type": [{"type": "http.response.start", "status": 200}],
    "body-without-start": [{"type": "websocket.http.response.body", "body": b""}],
    "accept-twice": [_ACCEPT, _ACCEPT],
    "send-nothing": [_ACCEPT, {"type": "websocket.send"}],
    "close-1005": [_ACCEPT, {"type": "websocket.close", "code": 1005}],
    "close-4294968296": [_ACCEPT, {"type": "websocket.close", "code": 2**32 + 1000}],
    "deny-after-accept": [_ACCEPT, {"type": "websocket.http.response.start", "status": 403}],
}
DISCONNECTS = []
SESSIONS = []
ECHO_ENDED = None  # an asyncio.Event, made on the loop that uses it

PAGE = b"""<!doctype html><title>pending</title><body><script>
const ws = new WebSocket(`wss://${location.host}/echo`);
ws.onopen = () => ws.send("browser says hi");
ws.onmessage = (e) => { document.title = "echo:" + e.data; document.body.textContent = "echo:" + e.data; ws.close(1000); };
ws.onerror = () => { document.title = "error"; document.body.textContent = "error"; };
</script><img src="/wait-echo" alt=""></body>"""


def echo_ended():
    global ECHO_ENDED
    if ECHO_ENDED is None:
        ECHO_ENDED = asyncio.Event()
    return ECHO_ENDED


async def echo(scope, receive, send):
    try:
        await echo_session(scope, receive, send)
    finally:
        echo_ended().set()


async def echo_session(scope, receive, send):
    await receive()  # websocket.connect
    SESSIONS.append([scope["http_version"], scope["scheme"], scope["client"][0] if scope["client"] else None])
    sub = scope["subprotocols"][0] if scope["subprotocols"] and b"sub=1" in scope["query_string"] else None
    await send({"type": "websocket.accept", "subprotocol": sub,
                "headers": [(b"x-app", b"echo")]})
    while True:
        m = await receive()
        if m["type"] == "websocket.disconnect":
            DISCONNECTS.append(m["code"])
            return
        text = m.get("text")
        if text is not None and text.startswith("close:"):
            _, code, reason = text.split(":", 2)
            await send({"type": "websocket.close", "code": int(code), "reason": reason})
            m = await receive()
            DISCONNECTS.append(m["code"])
            return
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": m["bytes"]})


def scope_json(scope):
    return json.dumps({
        "type": scope["type"], "http_version": scope["http_version"], "scheme": scope["scheme"],
        "path": scope["path"], "query_string": scope["query_string"].decode(),
        "client": list(scope["client"]) if scope["client"] else None,
        "subprotocols": scope["subprotocols"], "extensions": sorted(scope["extensions"]),
        "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
        "asgi": scope["asgi"], "has_method": "method" in scope, "pid": os.getpid(),
    })


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif m["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if scope["type"] == "http":
        body, ctype = json.dumps(SESSIONS if path == "/sessions" else DISCONNECTS).encode(), b"application/json"
        if path == "/page":
            body, ctype = PAGE, b"text/html"
        elif path == "/wait-echo":
            try:
                await asyncio.wait_for(echo_ended().wait(), 20)
            except asyncio.TimeoutError:
                pass
            body, ctype = b"GIF89a", b"image/gif"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", ctype)]})
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/echo":
        return await echo(scope, receive, send)
    if path == "/scope":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": scope_json(scope)})
        return await echo_rest(receive, send)
    if path == "/deny":
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"x-denied", b"yes")]})
        await send({"type": "websocket.http.response.body", "body": b"no entry", "more_body": False})
        return
    if path == "/reject":
        await receive()
        await send({"type": "websocket.close", "code": 1000})
        return
    if path == "/raise-before":
        raise RuntimeError("refusing by raising")
    if path == "/raise-after":
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(0)
        raise RuntimeError("failing after accept")
    if path == "/slow-echo":
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(1)
        return await echo_rest(receive, send)
    if path == "/misuse":
        await receive()
        for message in WS_MISUSES[scope["query_string"].decode().removeprefix("how=")]:
            await send(message)
        return
    if path == "/hold":
        await receive()
        await send({"type": "websocket.accept"})
        m = await receive()
        DISCONNECTS.append(m.get("code"))
        return
    await send({"type": "websocket.close", "code": 1008})


async def echo_rest(receive, send):
    while True:
        m = await receive()
        if m["type"] == "websocket.disconnect":
            DISCONNECTS.append(m["code"])
            return
        await send({"type": "websocket.send", **({"text": m["text"]} if m.get("text") is not None else {"bytes": m["bytes"]})})
