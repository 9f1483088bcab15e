"""OpenAI-compatible text generation for the model server:

POST /v1/completions        {"prompt": str, ...}
POST /v1/chat/completions   {"messages": [{"role", "content"}], ...}

Fields: model, max_tokens (completions default 16, chat 256), temperature
(0..2, default 1; 0 is greedy), top_p, seed, stream, stream_options
{"include_usage"}. Answers as OpenAI's (SSE `data:` chunks and one
`data: [DONE]` when streamed), and each choice also carries `token_ids`,
the ids of the tokens it emits (the chunk's text is those tokens' text), so
a router can continue a cut stream exactly.

Continuation (a router's, vigil.router.resume): `vigil_continue` {token_ids,
id, created} starts generation after those already-delivered token ids (the
prompt's ids plus these, never re-tokenised text), at step len(token_ids) of
the seeded sampler, with the same `id` and `created`; the chat role chunk is
not sent again (from no token it is: only the router knows whether the
first went out, and it drops a second), and usage counts the whole
generation. The sampler's seed, given or drawn, is in `X-Vigil-Seed`, so an
unseeded sampled stream can be continued too. Only a router's continuation
is honoured (vigil.router.continue_sign): with a continue key, its MAC must
verify; always, its `id` must be one a Vigil server makes (so it never names
other work, such as a batch job's shard). Two generations under one id are
both listed in the load report.

Errors are 4xx with an OpenAI-style body naming the field. Work is counted in
the server's load report per token, so a long generation is progress, not a
hang (vigil.core.engine). A stream that must wait for a decoding slot gets
its head and an SSE comment (`: queued: ...`) at once and every 5 s while it
waits: SSE clients ignore comments, and a router's first-byte deadline stays
a test of a dead or hung server, not of a queue.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from vigil.openai_fields import constrained_by
from vigil.router import continue_sign
from vigil.serve.errors import BadRequest, check_unicode, error, json_body
from vigil.serve.generate import LanguageModel, Sampling, TextStream

MAX_PROMPT_CHARS = 65_536
PREFILL_CHUNK = 64  # prompt or delivered ids prefilled per turn of the engine's thread (one batch)
QUEUED_NOTE = 5.0  # s between the comments a stream waiting for a decoding slot hears
MAX_MESSAGES = 256


@dataclass
class Generation:
    chat: bool
    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    stream: bool
    include_usage: bool
    done_ids: list[int] = field(default_factory=list)  # delivered before (a continuation)
    continued: bool = False  # a router's continuation (vigil_continue), from done_ids
    id: str = ""
    created: int = 0
    entry: dict[str, Any] = field(default_factory=dict)  # its load-report entry (payloads)


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise BadRequest(f"'{name}' must be a number from {lo:g} to {hi:g}", name)
    return float(v)


def _prompt(model: LanguageModel, body: dict[str, Any], chat: bool) -> list[int]:
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or len(msgs) > MAX_MESSAGES or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in msgs):
            raise BadRequest(f"'messages' must be 1..{MAX_MESSAGES} objects with a role (system, user, "
                             "assistant) and string content", "messages")
        if sum(len(m["content"]) for m in msgs) > MAX_PROMPT_CHARS:
            raise BadRequest(f"the messages are longer than {MAX_PROMPT_CHARS} characters", "messages")
        check_unicode([m["content"] for m in msgs], "messages")
        return model.chat([{"role": m["role"], "content": m["content"]} for m in msgs])
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string", "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"'prompt' is longer than {MAX_PROMPT_CHARS} characters", "prompt")
    check_unicode([prompt], "prompt")
    return model.encode(prompt)


def parse_generation(model: LanguageModel, body: Any, chat: bool, continue_key: bytes | None = None) -> Generation:
    """Validate a (chat) completion request; with `continue_key`, a continuation
    must carry a router's MAC. Raises BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if body.get("model", model.model_id) != model.model_id:
        raise BadRequest(f"model '{body.get('model')}' is not served here; use '{model.model_id}'", "model")
    name = constrained_by(body)
    if name:
        raise BadRequest(f"'{name}': constrained generation is not supported by this engine", name)
    if body.get("n", 1) != 1:
        raise BadRequest("'n' must be 1", "n")
    for name in ("stop", "logprobs", "echo", "suffix", "best_of"):
        if body.get(name) not in (None, False, 1 if name == "best_of" else None):
            raise BadRequest(f"'{name}' is not supported by this server", name)
    ids = _prompt(model, body, chat)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or abs(seed) >= 2 ** 63):
        raise BadRequest("'seed' must be an integer", "seed")
    sampling = Sampling(_number(body, "temperature", 1.0, 0.0, 2.0), _number(body, "top_p", 1.0, 0.0, 1.0),
                        secrets.randbits(31) if seed is None else seed)
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    g = Generation(chat, ids, 0, sampling, bool(body.get("stream")), bool(opts.get("include_usage")))
    room = model.context - len(ids)
    if room < 1:
        raise BadRequest(f"the prompt is {len(ids)} tokens; this model's context is {model.context}",
                         "messages" if chat else "prompt")
    if body.get("vigil_continue") is not None and continue_key is not None:
        why = continue_sign.verify(continue_key, body)
        if why:
            raise BadRequest(why, "vigil_continue")
    _continuation(model, body.get("vigil_continue"), g)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    default = max(0, (256 if chat else 16) - len(g.done_ids))  # a continuation's share of the default
    g.max_tokens = int(_number(body, name, default, 1 if not g.done_ids else 0, max(0, room - len(g.done_ids))))
    return g


def _continuation(model: LanguageModel, cont: Any, g: Generation) -> None:
    if cont is None:
        return
    g.continued = True
    if not isinstance(cont, dict) or not isinstance(cont.get("token_ids"), list):
        raise BadRequest("'vigil_continue' must be {token_ids: [int], id: str, created: int}", "vigil_continue")
    ids = cont["token_ids"]
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < model.vocab_size for t in ids):
        raise BadRequest(f"'vigil_continue.token_ids' must be token ids below {model.vocab_size}",
                         "vigil_continue")
    g.done_ids, g.id, g.created = list(ids), cont.get("id", ""), cont.get("created", 0)
    if not isinstance(g.created, int):
        raise BadRequest("'vigil_continue.created' must be an integer", "vigil_continue")
    if not (g.id == "" or isinstance(g.id, str) and continue_sign.STREAM_ID.fullmatch(g.id)):
        raise BadRequest("'vigil_continue.id' must be the id of a stream a Vigil model server started "
                         "(cmpl-/chatcmpl- and 24 hex digits)", "vigil_continue")


class Completions:
    """The generation endpoints of one model server over `model`; `slots`
    generations decode at once (a real engine's context holds one)."""

    def __init__(self, model: LanguageModel, node: str, progress: Any, slots: int = 1,
                 continue_key: bytes | None = None):
        """`continue_key`: honour only continuations a router signed with it (None: any router's)."""
        self.model, self.node, self.progress = model, node, progress
        self.slots = asyncio.Semaphore(slots)
        self.continue_key = continue_key

    def routes(self, route: Any) -> list[web.RouteDef]:
        return [route("POST", "/v1/completions", self.completions),
                route("POST", "/v1/chat/completions", self.chat_completions)]

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        refusal = self.progress.refusal()
        if refusal is not None:
            return refusal
        try:
            g = parse_generation(self.model, await json_body(request), chat, self.continue_key)
        except BadRequest as e:
            return error(400, str(e), e.param)
        g.id = g.id or f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}"
        g.created = g.created or int(time.time())
        headers = {"X-Vigil-Node": self.node, "X-Vigil-Served-By": self.node, "X-Vigil-Seed": str(g.sampling.seed)}
        self.progress.pending += 1
        g.entry = {"id": g.id, "model": self.model.model_id, "started": time.time(),
                   "kind": "stream" if g.stream else "completion", "tokens": len(g.done_ids)}
        slot = f"{g.id}#{secrets.token_hex(6)}"  # a continuation may share its id with a generation still here
        self.progress.payloads[slot] = g.entry
        try:
            if g.stream:
                return await self._stream(request, g, headers)
            async with self.slots:
                return await self._whole(g, headers)
        finally:
            self.progress.pending -= 1
            self.progress.completed += 1
            self.progress.payloads.pop(slot, None)

    async def _tokens(self, g: Generation):
        """(token id, its text, None) per generated token, then (None, the text
        of a character left incomplete, finish_reason)."""
        loop, pool = asyncio.get_running_loop(), self.progress.pool
        # The prompt and a continuation's delivered ids are prefilled in batches, one per
        # turn of the engine's thread: other streams go on meanwhile, and each batch counts
        # as progress in the load report (a long prefill or replay is busy, not hung).
        work = g.prompt_ids + g.done_ids
        batches = [work[i:i + PREFILL_CHUNK] for i in range(0, len(work), PREFILL_CHUNK)] or [[]]
        decoder = await loop.run_in_executor(pool, self.model.start, batches[0])
        try:
            self.progress.completed += len(batches[0])
            for part in batches[1:]:
                await loop.run_in_executor(pool, decoder.feed, part)
                self.progress.completed += len(part)
            text = TextStream(self.model)
            text.skip(g.done_ids)
            first = len(g.done_ids)
            for step in range(first, first + g.max_tokens):
                token = await loop.run_in_executor(pool, _next, decoder, g.sampling, step, self.model.eos)
                self.progress.completed += 1
                g.entry["tokens"] = step + 1
                if token is None:
                    yield None, text.flush(), "stop"
                    return
                yield token, text.text(token), None
            yield None, text.flush(), "length"
        finally:
            decoder.close()

    def _chunk(self, g: Generation, text: str, ids: list[int], finish: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish, "token_ids": ids}
        if g.chat:
            choice["delta"] = {"content": text} if text or finish is None else {}
        else:
            choice["text"] = text
        return {"id": g.id, "object": "chat.completion.chunk" if g.chat else "text_completion",
                "created": g.created, "model": self.model.model_id, "choices": [choice]}

    def _usage(self, g: Generation, made: int) -> dict[str, int]:
        done = len(g.done_ids) + made
        return {"prompt_tokens": len(g.prompt_ids), "completion_tokens": done,
                "total_tokens": len(g.prompt_ids) + done}

    async def _stream(self, request: web.Request, g: Generation, headers: dict[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await self._slot(resp)
        try:
            return await self._generate(request, g, resp)
        finally:
            self.slots.release()

    async def _slot(self, resp: web.StreamResponse) -> None:
        """A decoding slot for this stream. While every slot is busy the client hears an
        SSE comment at once and every QUEUED_NOTE seconds: a stream waiting its turn is
        queued, not hung, and a router's first-byte deadline is for dead servers."""
        if not self.slots.locked():
            await self.slots.acquire()
            return
        while True:
            await resp.write(b": queued: every decoding slot is busy\n\n")
            try:
                async with asyncio.timeout(QUEUED_NOTE):
                    await self.slots.acquire()
                return
            except TimeoutError:
                pass

    async def _generate(self, request: web.Request, g: Generation, resp: web.StreamResponse) -> web.StreamResponse:
        async def send(obj: Any) -> None:
            await resp.write(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")
        if g.chat and not g.done_ids:
            first = self._chunk(g, "", [], None)
            first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            await send(first)
        made = 0
        async with aclosing(self._tokens(g)) as tokens:  # a hang-up frees the engine's context at once
            async for token, text, finish in tokens:
                chunk = self._chunk(g, text, [] if token is None else [token], finish)
                if self._cut_now(g, made, mid=True):
                    event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
                    await resp.write(event[:min(self.progress.cut_mid_event or 0, len(event) - 1)])
                    assert request.transport is not None
                    request.transport.abort()  # injected: the connection resets mid-stream
                    return resp
                await send(chunk)
                if token is None:
                    break
                made += 1
                if self._cut_now(g, made, mid=False):
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
        if g.include_usage:
            await send({"id": g.id, "object": "chat.completion.chunk" if g.chat else "text_completion",
                        "created": g.created, "model": self.model.model_id, "choices": [],
                        "usage": self._usage(g, made)})
        await send(b"[DONE]")
        await resp.write_eof()
        return resp

    def _cut_now(self, g: Generation, made: int, mid: bool) -> bool:
        """Fault injection: reset a new stream (never a continuation) after
        `cut_streams_after` tokens (at least one), or, with `cut_mid_event`, after
        that many bytes of the event that follows them (a node dying mid-write)."""
        after = self.progress.cut_streams_after
        return (after is not None and not g.continued and made >= after
                and mid == bool(self.progress.cut_mid_event))

    async def _whole(self, g: Generation, headers: dict[str, str]) -> web.Response:
        ids, parts, finish = [], [], "length"
        async with aclosing(self._tokens(g)) as tokens:
            async for token, text, end in tokens:
                parts.append(text)
                if token is None:
                    finish = end
                    break
                ids.append(token)
        content = "".join(parts)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None, "token_ids": ids}
        if g.chat:
            choice["message"] = {"role": "assistant", "content": content}
        else:
            choice["text"] = content
        return web.json_response({"id": g.id, "object": "chat.completion" if g.chat else "text_completion",
                                  "created": g.created, "model": self.model.model_id, "choices": [choice],
                                  "usage": self._usage(g, len(ids))}, headers=headers)


def _next(decoder: Any, sampling: Sampling, step: int, eos: frozenset[int]) -> int | None:
    """One token (in the engine's worker thread): chosen and taken, or None at end of sequence."""
    token = decoder.choose(sampling, step)
    if token in eos:
        return None
    decoder.push(token)
    return token
