"""WebSocket endpoints written with Starlette and with FastAPI: echo and a
broadcast room (every message goes to every member)."""
from fastapi import FastAPI, WebSocket as FastAPIWebSocket, WebSocketDisconnect
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

ROOM = set()


async def starlette_echo(ws: WebSocket):
    await ws.accept()
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("text") is not None:
                await ws.send_text(msg["text"])
            else:
                await ws.send_bytes(msg["bytes"])
    except WebSocketDisconnect:
        return


async def starlette_broadcast(ws: WebSocket):
    await ws.accept()
    ROOM.add(ws)
    try:
        await ws.send_json({"members": len(ROOM)})
        while True:
            text = await ws.receive_text()
            for member in list(ROOM):
                try:
                    await member.send_text(text)
                except Exception:  # a member that left meanwhile
                    ROOM.discard(member)
    except WebSocketDisconnect:
        pass
    finally:
        ROOM.discard(ws)


starlette_app = Starlette(routes=[WebSocketRoute("/echo", starlette_echo),
                                  WebSocketRoute("/broadcast", starlette_broadcast)])

fastapi_app = FastAPI()
FASTAPI_ROOM = set()


@fastapi_app.websocket("/echo")
async def fastapi_echo(ws: FastAPIWebSocket):
    await ws.accept(subprotocol=ws.scope["subprotocols"][0] if ws.scope["subprotocols"] else None)
    try:
        while True:
            await ws.send_text("fastapi:" + await ws.receive_text())
    except WebSocketDisconnect:
        pass


@fastapi_app.websocket("/broadcast")
async def fastapi_broadcast(ws: FastAPIWebSocket):
    await ws.accept()
    FASTAPI_ROOM.add(ws)
    try:
        await ws.send_json({"members": len(FASTAPI_ROOM)})
        while True:
            text = await ws.receive_text()
            for member in list(FASTAPI_ROOM):
                try:
                    await member.send_text(text)
                except Exception:
                    FASTAPI_ROOM.discard(member)
    except WebSocketDisconnect:
        pass
    finally:
        FASTAPI_ROOM.discard(ws)


@fastapi_app.websocket("/private")
async def fastapi_private(ws: FastAPIWebSocket):
    if ws.query_params.get("token") != "secret":
        await ws.close(code=1008)  # before accepting: the server answers 403
        return
    await ws.accept()
    await ws.send_text("welcome")
    await ws.close(code=4000, reason="bye")
