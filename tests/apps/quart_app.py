"""A Quart app."""
from quart import Quart, jsonify, request

app = Quart(__name__)


@app.route("/")
async def home():
    return jsonify({"framework": "quart", "http_version": request.http_version})


@app.route("/echo", methods=["POST"])
async def echo():
    data = await request.get_data()
    return jsonify({"size": len(data)})
