"""An app whose answer names its code version: SIGHUP reload tests rewrite
this file in a temporary directory."""
import os

VERSION = "v1"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{VERSION} {os.getpid()}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
