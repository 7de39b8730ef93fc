"""A Starlette app: JSON, streaming, uploads, lifespan state, background tasks."""
import contextlib

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

DONE = []


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"db": "connected"}


async def home(request):
    return JSONResponse({
        "framework": "starlette",
        "http_version": request.scope["http_version"],
        "client": request.client.host if request.client else None,
        "scheme": request.url.scheme,
        "path": request.url.path,
        "query": dict(request.query_params),
        "db": getattr(request.state, "db", None),
    })


async def stream(request):
    async def gen():
        for i in range(int(request.query_params.get("n", "5"))):
            yield f"line {i}\n"
    return StreamingResponse(gen(), media_type="text/plain")


async def upload(request):
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return JSONResponse({"size": size})


async def background(request):
    return PlainTextResponse("queued", background=BackgroundTask(DONE.append, "ran"))


async def done(request):
    return JSONResponse({"done": DONE})


async def cookies(request):
    return JSONResponse(request.cookies)


app = Starlette(lifespan=lifespan, routes=[
    Route("/", home), Route("/stream", stream), Route("/upload", upload, methods=["POST"]),
    Route("/background", background), Route("/done", done), Route("/cookies", cookies),
])
