"""A FastAPI app with a Pydantic model and a streaming response."""
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

app = FastAPI()
STATE = {}


@app.on_event("startup")
async def startup():
    STATE["ready"] = True


class Item(BaseModel):
    name: str
    price: float


@app.get("/")
async def home(request: Request):
    return {"framework": "fastapi", "http_version": request.scope["http_version"],
            "ready": STATE.get("ready", False)}


@app.post("/items")
async def create(item: Item):
    return {"name": item.name, "price_with_tax": round(item.price * 1.2, 2)}


@app.get("/items/{item_id}")
async def read(item_id: int, q: str = None):
    return {"item_id": item_id, "q": q}


@app.get("/stream")
async def stream():
    async def gen():
        for i in range(3):
            yield f"part {i}\n".encode()
    return StreamingResponse(gen())
