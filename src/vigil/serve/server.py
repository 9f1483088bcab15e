"""ModelServer: the OpenAI-compatible HTTP face of the embedding engine and,
when given one, of a generative model (vigil.serve.completions).

POST /v1/embeddings    {"input": str | [str], "model"?, "encoding_format"?: float|base64}
POST /v1/completions, /v1/chat/completions   (with a generative model; streamed or not)
GET  /v1/models
GET  /health, /v2/health/live   200 while the process serves HTTP
GET  /v2/health/ready           200 only after the model loaded AND a warm-up inference succeeded
GET  /v2/load                   {"pending", "running", "completed", "shed", "max_pending",
                                "payloads"}: the progress an agent judges busy from hung by
                                (answered by the event loop, never queued behind inference;
                                completed counts requests and prefilled and generated
                                tokens) and the
                                generations under way (vigil.core.payloads)
Every embeddings answer carries X-Vigil-Queue-Depth (pending after it), X-Vigil-Queue-Ms (time
it waited for the engine) and X-Vigil-Service-Ms (time the engine worked on it): the load
signal routers share. Past `max_pending` requests waiting or running, the server sheds with
429 and Retry-After (its own bound, whatever fronts it).
Bad requests get 4xx with an OpenAI-style body: {"error": {message, type, param, code}}.
Until ready, /v1/* answers 503 (a restarting engine), never a hang.

With `fault_injection`, POST /_vigil/faults {"slowdown": F, "fail_status": S,
"cut_streams_after": N} makes every inference F times slower or answer S, or
resets the connection of every new generation stream (not a continuation)
after N tokens (as a crash looks to a router): used by the lab, tests and
benches.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from vigil.openai_fields import MAX_EMBEDDING_INPUTS, MAX_INPUT_CHARS
from vigil.serve.errors import BadRequest, check_unicode, error, json_body
from vigil.serve.model import DIMENSIONS, MODEL_ID, MiniLM
from vigil.web import finish, route

log = logging.getLogger(__name__)

MAX_INPUTS = MAX_EMBEDDING_INPUTS
MAX_CHARS = MAX_INPUT_CHARS
MAX_BODY = 4 * 1024 * 1024
LOAD_NICE = 10  # how much nicer the loading thread runs than the server (ModelServer.load)




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
    check_unicode(texts, "input")
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
    def __init__(self, engine: Any = None, node: str = "", fault_injection: bool = False,
                 max_pending: int = 64, generator: Any = None, slots: int = 1, continue_key: bytes | None = None):
        """`engine` embeds; `generator` (a vigil.serve.generate.LanguageModel), if
        given, also serves /v1/completions and /v1/chat/completions (`slots` at once),
        honouring only continuations signed with `continue_key` when it is given
        (vigil.router.continue_sign)."""
        self.engine = engine or MiniLM()
        self.generator = generator
        self.embeds = getattr(self.engine, "serves", True)
        self.node = node
        self.ready = False
        self.not_ready_reason = "loading the model"
        self.slowdown = 1.0
        self.fail_status = 0
        self.cut_streams_after: int | None = None  # fault: reset every new stream after N tokens
        self.cut_mid_event = 0  # fault: ... with this many bytes of the next event sent (a cut mid-event)
        self.payloads: dict[str, dict[str, Any]] = {}  # generations under way (vigil.core.payloads)
        self.served = 0
        self.canaries = 0  # readiness probes, counted apart from client traffic
        self.max_pending = max_pending
        self.pending = 0  # accepted, not yet answered
        self.running = 0
        self.completed = 0
        self.shed = 0
        self._service_ewma = 0.0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes([
            route("POST", "/v1/embeddings", self.embeddings), route("GET", "/v1/models", self.models),
            route("GET", "/health", self.live), route("GET", "/v2/health/live", self.live),
            route("GET", "/v2/health/ready", self.readiness), route("GET", "/v2/load", self.load_report)])
        if generator is not None:
            from vigil.serve.completions import Completions
            self.completions = Completions(generator, node, self, slots, continue_key)
            self.app.add_routes(self.completions.routes(route))
        if fault_injection:
            self.app.add_routes([route("POST", "/_vigil/faults", self.faults)])
        finish(self.app)

    async def load(self) -> None:
        """Load the models and run a warm-up inference; only then become ready. The
        loading (seconds of CPU: imports, weights, contexts) runs on its own thread at
        LOAD_NICE, so a server restarting beside work on its machine (the node's router
        and agent; in a lab, other nodes' generations) takes the CPU left over; the
        warm-ups and all inference run on the inference thread at the server's priority."""
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load", initializer=_lower_priority) as loader:
            await loop.run_in_executor(loader, self.engine.load)
            if self.generator is not None:
                await loop.run_in_executor(loader, self.generator.load)
        if self.embeds:
            await loop.run_in_executor(self.pool, self.engine.embed, ["warm-up inference"])
        if self.generator is not None:
            await loop.run_in_executor(self.pool, warm_up, self.generator)
        self.ready, self.not_ready_reason = True, ""
        log.info("models ready after %.1f s", time.monotonic() - t0)

    async def live(self, _: web.Request) -> web.Response:
        return web.json_response({"live": True, "node": self.node, "ready": self.ready,
                                  "served": self.served, "canaries": self.canaries})

    async def readiness(self, _: web.Request) -> web.Response:
        body = {"ready": self.ready, "node": self.node, "reason": self.not_ready_reason or None}
        return web.json_response(body, status=200 if self.ready else 503)

    async def load_report(self, _: web.Request) -> web.Response:
        return web.json_response({"pending": self.pending, "running": self.running,
                                  "completed": self.completed, "shed": self.shed,
                                  "max_pending": self.max_pending, "ready": self.ready,
                                  "payloads": list(self.payloads.values())})

    async def models(self, _: web.Request) -> web.Response:
        ids = ([MODEL_ID] if self.embeds else []) + ([self.generator.model_id] if self.generator is not None else [])
        return web.json_response({"object": "list", "data": [
            {"id": i, "object": "model", "created": 0, "owned_by": "vigil"} for i in ids]})

    def refusal(self) -> web.Response | None:
        """Why this server takes no inference now (not ready, an injected fault,
        full), or None."""
        if not self.ready:
            return error(503, f"not ready: {self.not_ready_reason}", kind="server_error",
                         code="not_ready")
        if self.fail_status:
            return error(self.fail_status, "injected failure", kind="server_error")
        if self.pending >= self.max_pending:
            self.shed += 1
            retry = max(0.05, self._service_ewma * self.pending)
            return web.json_response(
                {"error": {"message": f"engine full: {self.pending} requests pending (max "
                                      f"{self.max_pending}); retry after {retry:.2f} s",
                           "type": "rate_limit_error", "param": None, "code": "engine_full"}},
                status=429, headers={"Retry-After": str(max(1, round(retry))),
                                     "retry-after-ms": str(int(retry * 1000)),
                                     "X-Vigil-Queue-Depth": str(self.pending)})
        return None

    async def embeddings(self, request: web.Request) -> web.Response:
        if not self.embeds:
            return error(404, "this server loads no embedding model (started with --no-embed)", "model",
                         code="model_not_found")
        # Refused before the body is parsed, as /v1/completions is: a client that retries
        # a 429 at once (a retry storm) then costs this node no JSON parse of its body.
        refusal = self.refusal()
        if refusal is not None:
            return refusal
        try:
            texts, fmt = parse_embedding_request(await json_body(request))
        except BadRequest as e:
            return error(400, str(e), e.param)
        refusal = self.refusal()  # again: others were admitted while this body was read
        if refusal is not None:
            return refusal
        self.pending += 1
        t_in = time.monotonic()
        try:
            result, busy, started = await asyncio.get_running_loop().run_in_executor(
                self.pool, self._embed, texts)
            if self.slowdown > 1:
                # N times slower than the engine's own work, not than the queue in front of it.
                await asyncio.sleep(busy * (self.slowdown - 1))
                busy *= self.slowdown
        finally:
            self.pending -= 1
        self.completed += 1
        self._service_ewma = busy if not self._service_ewma else 0.8 * self._service_ewma + 0.2 * busy
        if request.headers.get("X-Vigil-Canary"):
            self.canaries += 1
        else:
            self.served += 1
        data = [{"object": "embedding", "index": i,
                 "embedding": _b64(v) if fmt == "base64" else v} for i, v in enumerate(result.vectors)]
        return web.json_response({"object": "list", "data": data, "model": MODEL_ID,
                                  "usage": {"prompt_tokens": result.tokens,
                                            "total_tokens": result.tokens}},
                                 headers={"X-Vigil-Served-By": self.node, "X-Vigil-Node": self.node,
                                          "X-Vigil-Queue-Depth": str(self.pending),
                                          "X-Vigil-Queue-Ms": f"{(started - t_in) * 1000:.1f}",
                                          "X-Vigil-Service-Ms": f"{busy * 1000:.1f}"})

    def _embed(self, texts: list[str]) -> tuple[Any, float, float]:
        self.running += 1
        t0 = time.monotonic()
        try:
            result = self.engine.embed(texts)
        finally:
            self.running -= 1
        return result, time.monotonic() - t0, t0

    async def faults(self, request: web.Request) -> web.Response:
        try:
            body = await json_body(request)
            self.slowdown = float(body.get("slowdown", 1.0))
            self.fail_status = int(body.get("fail_status", 0))
            cut = body.get("cut_streams_after")
            self.cut_streams_after = None if cut is None else int(cut)
        except (BadRequest, ValueError, TypeError, AttributeError):
            return error(400, "faults take {\"slowdown\": number, \"fail_status\": int, "
                              "\"cut_streams_after\": int | null}")
        return web.json_response({"slowdown": self.slowdown, "fail_status": self.fail_status,
                                  "cut_streams_after": self.cut_streams_after})


def _lower_priority() -> None:
    """This thread (only: Linux keeps a niceness per thread) LOAD_NICE nicer than it was."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + LOAD_NICE))
    except OSError as e:  # loads at the server's priority: slower neighbours, nothing wrong
        log.warning("cannot lower the loading thread's priority: %s", e)


def warm_up(model: Any) -> None:
    """One token from the generative model: it loaded and decodes."""
    from vigil.serve.generate import Sampling
    decoder = model.start(model.encode("warm-up"))
    try:
        decoder.choose(Sampling(temperature=0.0), 0)
    finally:
        decoder.close()


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def serve(host: str, port: int, node: str, fault_injection: bool, stop: asyncio.Event,
                engine: Any = None, max_pending: int = 64, generator: Any = None, slots: int = 1,
                continue_key: bytes | None = None) -> None:
    server = ModelServer(engine, node, fault_injection, max_pending, generator, slots, continue_key)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    loader = asyncio.get_running_loop().create_task(server.load())
    try:
        await stop.wait()
    finally:
        loader.cancel()
        await runner.cleanup()
        server.pool.shutdown(wait=False, cancel_futures=True)
