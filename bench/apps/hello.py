"""Benchmark app: hello world, a 1 MiB response, a 10 ms sleep."""
import asyncio

MIB = b"x" * (1 << 20)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/1m":
        body = MIB
    elif path == "/sleep":
        await asyncio.sleep(0.01)
        body = b"slept"
    else:
        body = b"Hello, world!"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
