"""ModelServer: the OpenAI-compatible HTTP face of the embedding engine.

POST /v1/embeddings    {"input": str | [str], "model"?, "encoding_format"?: float|base64}
GET  /v1/models
GET  /health, /v2/health/live   200 while the process serves HTTP
GET  /v2/health/ready           200 only after the model loaded AND a warm-up inference succeeded
Bad requests get 4xx with an OpenAI-style body: {"error": {message, type, param, code}}.
Until ready, /v1/* answers 503 (a restarting engine), never a hang.

With `fault_injection`, POST /_vigil/faults {"slowdown": F, "fail_status": S}
makes every inference F times slower or answer S: used by the lab and benches.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from vigil.serve.model import DIMENSIONS, MODEL_ID, MiniLM

log = logging.getLogger(__name__)

MAX_INPUTS = 256
MAX_CHARS = 32_768
MAX_BODY = 4 * 1024 * 1024


def error(status: int, message: str, param: str | None = None, code: str | None = None,
          kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": param,
                                        "code": code}}, status=status)


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def parse_embedding_request(body: Any) -> tuple[list[str], str]:
    """Validate an embeddings request; returns (texts, encoding_format). Raises BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if "input" not in body:
        raise BadRequest("'input' is required: a string or a list of strings", "input")
    raw = body["input"]
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise BadRequest("'input' must be a string or a list of strings", "input")
    if not texts or any(t == "" for t in texts):
        raise BadRequest("'input' must not be empty, and no string in it may be empty", "input")
    if len(texts) > MAX_INPUTS:
        raise BadRequest(f"'input' has {len(texts)} items; at most {MAX_INPUTS} per request", "input")
    if any(len(t) > MAX_CHARS for t in texts):
        raise BadRequest(f"an input is longer than {MAX_CHARS} characters", "input")
    model = body.get("model", MODEL_ID)
    if model not in (MODEL_ID, f"sentence-transformers/{MODEL_ID}"):
        raise BadRequest(f"model '{model}' is not served here; use '{MODEL_ID}'", "model")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    if body.get("dimensions") not in (None, DIMENSIONS):
        raise BadRequest(f"this model has {DIMENSIONS} dimensions; 'dimensions' cannot change that",
                         "dimensions")
    return texts, fmt


class ModelServer:
    def __init__(self, engine: Any = None, node: str = "", fault_injection: bool = False):
        self.engine = engine or MiniLM()
        self.node = node
        self.ready = False
        self.not_ready_reason = "loading the model"
        self.slowdown = 1.0
        self.fail_status = 0
        self.served = 0
        self.canaries = 0  # readiness probes, counted apart from client traffic
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes([
            web.post("/v1/embeddings", self.embeddings), web.get("/v1/models", self.models),
            web.get("/health", self.live), web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.readiness)])
        if fault_injection:
            self.app.add_routes([web.post("/_vigil/faults", self.faults)])

    async def load(self) -> None:
        """Load the engine and run a warm-up inference; only then become ready."""
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        await loop.run_in_executor(self._pool, self.engine.load)
        await loop.run_in_executor(self._pool, self.engine.embed, ["warm-up inference"])
        self.ready, self.not_ready_reason = True, ""
        log.info("model %s ready after %.1f s", MODEL_ID, time.monotonic() - t0)

    async def live(self, _: web.Request) -> web.Response:
        return web.json_response({"live": True, "node": self.node, "ready": self.ready,
                                  "served": self.served, "canaries": self.canaries})

    async def readiness(self, _: web.Request) -> web.Response:
        body = {"ready": self.ready, "node": self.node, "reason": self.not_ready_reason or None}
        return web.json_response(body, status=200 if self.ready else 503)

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "vigil"}]})

    async def embeddings(self, request: web.Request) -> web.Response:
        if not self.ready:
            return error(503, f"not ready: {self.not_ready_reason}", kind="server_error",
                         code="not_ready")
        try:
            texts, fmt = parse_embedding_request(await request.json())
        except ValueError:
            return error(400, "the request body is not valid JSON")
        except BadRequest as e:
            return error(400, str(e), e.param)
        if self.fail_status:
            return error(self.fail_status, "injected failure", kind="server_error")
        result, busy = await asyncio.get_running_loop().run_in_executor(self._pool, self._embed, texts)
        if self.slowdown > 1:
            # N times slower than the engine's own work, not than the queue in front of it.
            await asyncio.sleep(busy * (self.slowdown - 1))
        if request.headers.get("X-Vigil-Canary"):
            self.canaries += 1
        else:
            self.served += 1
        data = [{"object": "embedding", "index": i,
                 "embedding": _b64(v) if fmt == "base64" else v} for i, v in enumerate(result.vectors)]
        return web.json_response({"object": "list", "data": data, "model": MODEL_ID,
                                  "usage": {"prompt_tokens": result.tokens,
                                            "total_tokens": result.tokens}},
                                 headers={"X-Vigil-Served-By": self.node})

    def _embed(self, texts: list[str]) -> tuple[Any, float]:
        t0 = time.monotonic()
        result = self.engine.embed(texts)
        return result, time.monotonic() - t0

    async def faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            self.slowdown = float(body.get("slowdown", 1.0))
            self.fail_status = int(body.get("fail_status", 0))
        except (ValueError, TypeError, AttributeError):
            return error(400, "faults take {\"slowdown\": number, \"fail_status\": int}")
        return web.json_response({"slowdown": self.slowdown, "fail_status": self.fail_status})


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def serve(host: str, port: int, node: str, fault_injection: bool, stop: asyncio.Event,
                engine: Any = None) -> None:
    server = ModelServer(engine, node, fault_injection)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    loader = asyncio.get_running_loop().create_task(server.load())
    try:
        await stop.wait()
    finally:
        loader.cancel()
        await runner.cleanup()
        server._pool.shutdown(wait=False, cancel_futures=True)
