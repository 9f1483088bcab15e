"""Streamed generations that survive their node: when the node serving an
SSE completion dies (connection reset), hangs (silent past `idle_timeout`)
or is ejected (dead to the heartbeat detector, fenced), the router sends the
request again to another node with the token ids the client already has
(`vigil_continue`, vigil.serve.completions), `max_tokens` reduced by their
count and the same seed, and splices the continuation into the same client
stream: no text twice, none missing, one `data: [DONE]`.

Only whole SSE events are forwarded, so the ids delivered are exactly those
of the events the client received; the part of an event a failed node sent
is dropped, never glued onto the continuation (SseSplice.cut). A stream is resumed only when a resend
cannot change its output: never for constrained output (response_format,
tools, grammars: the engine's constraint state is not carried over), nor
once the backend sent text without `token_ids` (ids cannot be recovered from
text). Those streams end with an SSE error event naming why, as does one
whose `max_resumes` are spent, and then the connection closes without the
last chunk, so a client that reads no events still sees the answer cut. Each resume is an SSE comment line in the
stream (`: vigil resumed ...`, ignored by SSE clients), a metric and a log
line; the answer's head says `X-Vigil-Resumable: yes` or why not. For the
same reason a resumable stream whose node fails before its first byte is
retried on another node like a safe request (vigil.router.proxy).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from vigil.core.routing import Backend
from vigil.openai_fields import constrained_by
from vigil.router.attempt import Answer, AttemptFailed
from vigil.router.continue_sign import signed
from vigil.router.http1 import HOP_BY_HOP, Incoming, Reply
from vigil.router.upstream import UpstreamBroken

if TYPE_CHECKING:
    from vigil.clock import Clock
    from vigil.core.routing import RoutingTable
    from vigil.router.config import RouterConfig
    from vigil.router.inflight import InFlight
    from vigil.router.metrics import RouterMetrics
    from vigil.router.tracing import Tracing

log = logging.getLogger(__name__)

GENERATIVE_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


@dataclass
class StreamPlan:
    body: dict[str, Any]
    why_not: str | None  # None: resumable


def plan_stream(req: Incoming, enabled: bool) -> StreamPlan | None:
    """A plan for a streamed generation request, or None for any other request."""
    if req.method != "POST" or req.path not in GENERATIVE_PATHS:
        return None
    try:
        body = json.loads(req.body)
    except (ValueError, RecursionError):  # a client's body: anything (UnicodeDecodeError is a ValueError)
        return None
    if not isinstance(body, dict) or body.get("stream") is not True:
        return None
    why = None if enabled else "stream resume is off (retry.resume_streams)"
    name = constrained_by(body)
    if why is None and name:
        why = f"constrained output ({name}): a resend could change it"
    return StreamPlan(body, why)


MAX_EVENT = 1 << 20  # bytes of one SSE event: a token's event is a few hundred


@dataclass
class SseSplice:
    """The client's side of the stream: complete events only, and what they carried.

    `feed` returns the complete events received so far, to be written to the
    client as they are, at once, and counts their token ids in `delivered`:
    the ids of exactly the events the client got. Bytes after the last complete
    event wait for the rest of it; when the node fails, `cut` drops them, so
    a continuation never starts inside a broken event. Lines may end in CRLF,
    LF or CR (the SSE grammar), even split across reads; events go out with LF.
    """

    delivered: list[int] = field(default_factory=list)  # token ids the client has
    stream_id: str = ""
    created: int = 0
    finished: bool = False  # a finish_reason went out
    done: bool = False  # data: [DONE] went out
    inexact: str | None = None  # why the ids delivered may not be all the client has
    errored: bool = False  # the backend sent an error event
    role_sent: bool = False  # a chat role chunk went out
    oversized: bool = False  # the bytes after the last whole event exceed MAX_EVENT
    _buf: bytes = b""
    _after_cr: bool = False  # the last byte fed was a CR: a LF next belongs to it

    @property
    def exact(self) -> bool:
        return self.inexact is None

    def feed(self, data: bytes) -> list[bytes]:
        """The complete events in `data` (and what was buffered), to forward as they are.
        Past MAX_EVENT bytes without an event's end the node misbehaves: `oversized`
        says so (after the whole events, which the client must still get)."""
        if not data:
            return []
        if self._after_cr and data[:1] == b"\n":
            data = data[1:]
        self._after_cr = data[-1:] == b"\r"
        self._buf += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out = []
        while not self.done and b"\n\n" in self._buf:
            event, self._buf = self._buf.split(b"\n\n", 1)
            event = event.lstrip(b"\n")
            if event and self._note(event):
                out.append(event + b"\n\n")
        self.oversized = len(self._buf) > MAX_EVENT
        return out

    def cut(self) -> int:
        """The node failed: drop the part of an event it sent (the client never got
        it, and no continuation may be glued onto it). The bytes dropped."""
        dropped, self._buf, self._after_cr, self.oversized = len(self._buf), b"", False, False
        return dropped

    def _note(self, event: bytes) -> bool:
        """Count what `event` carries; False for one the client must not get again."""
        payload = b"\n".join(line[5:].removeprefix(b" ") for line in event.split(b"\n")
                             if line.startswith(b"data:"))
        if payload == b"[DONE]":
            self.done = True
            return True
        if not payload:
            return True  # a comment (": queued ...") or an event without data
        try:
            chunk = json.loads(payload)
        except (ValueError, RecursionError):
            chunk = None
        if not isinstance(chunk, dict):
            self.inexact = self.inexact or "the backend sent an event that is not a JSON object"
            return True
        self.stream_id = self.stream_id or str(chunk.get("id", ""))[:128]
        self.created = self.created or (chunk.get("created") if isinstance(chunk.get("created"), int) else 0)
        choices = chunk.get("choices")
        if isinstance(choices, list) and len(choices) == 1 and _role_only(choices[0]):
            # A continuation from no token sends the chat role chunk again: the node
            # cannot know whether its predecessor's went out; the client gets one.
            again, self.role_sent = self.role_sent, True
            return not again
        for choice in choices if isinstance(choices, list) else []:
            if isinstance(choice, dict):
                self._note_choice(choice)
        if "error" in chunk:
            self.errored = True  # the backend's own error: passed on, not resumed (it may recur)
        return True

    def _note_choice(self, choice: dict[str, Any]) -> None:
        ids = choice.get("token_ids")
        delta = choice.get("delta")
        text = choice.get("text") or (delta.get("content") if isinstance(delta, dict) else None)
        if isinstance(ids, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            self.delivered.extend(ids)
        elif text:
            self.inexact = self.inexact or "the backend sent text without token ids"
        self.finished = self.finished or choice.get("finish_reason") is not None


def _role_only(choice: Any) -> bool:
    """A chat stream's first chunk: the role, no text, no tokens."""
    delta = choice.get("delta") if isinstance(choice, dict) else None
    return (isinstance(delta, dict) and "role" in delta and not delta.get("content")
            and not choice.get("token_ids") and choice.get("finish_reason") is None)


def continuation(req: Incoming, plan: StreamPlan, splice: SseSplice, seed: str | None) -> Incoming:
    """The request that continues this stream after what the client received."""
    body = dict(plan.body)
    n = len(splice.delivered)
    for limit in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(limit), int):
            body[limit] = max(0, body[limit] - n)
    if body.get("seed") is None and seed and seed.lstrip("-").isdigit():
        body["seed"] = int(seed)
    body["vigil_continue"] = {"token_ids": splice.delivered, "id": splice.stream_id, "created": splice.created}
    return dataclasses.replace(req, body=json.dumps(body).encode())


def is_event_stream(answer: Answer) -> bool:
    ctype = next((v for k, v in answer.up.headers if k.lower() == "content-type"), "")
    return answer.up.status == 200 and ctype.startswith("text/event-stream") and not answer.whole


class Dispatcher(Protocol):
    """What a resumed stream uses of the router that serves it (vigil.router.proxy.Router):
    its table, attempts, what is in flight (vigil.router.inflight), metrics and tracing."""
    cfg: RouterConfig
    clock: Clock
    table: RoutingTable
    metrics: RouterMetrics
    tracing: Tracing
    flight: InFlight

    async def attempt(self, b: Backend, req: Incoming, first_byte: float | None = None) -> Answer:
        """One attempt up to the first byte; AttemptFailed on failure (the slot stays taken)."""

    def release(self, b: Backend) -> None:
        """The attempt's slot on `b` is free again."""



class ResumingStream:
    """Relays one SSE generation to `reply`, continuing it on other nodes when
    its node fails, through the `router` that serves it."""

    def __init__(self, router: Dispatcher, req: Incoming, plan: StreamPlan, reply: Reply, t0: float):
        self.router, self.req, self.plan, self.reply, self.t0 = router, req, plan, reply, t0
        self.splice = SseSplice()
        self.resumes = 0
        self.tried: set[str] = set()

    async def run(self, backend: Backend, answer: Answer, attempts: int) -> None:
        r = self.router
        seed = next((v for k, v in answer.up.headers if k.lower() == "x-vigil-seed"), None)
        headers = [(k, v) for k, v in answer.up.headers if k.lower() not in HOP_BY_HOP | {"x-vigil-node"}]
        headers += [("X-Vigil-Node", backend.name), ("X-Vigil-Attempts", str(attempts)),
                    ("X-Vigil-Router", r.cfg.name),
                    ("X-Vigil-Resumable", "yes" if self.plan.why_not is None else f"no: {self.plan.why_not}")]
        self.reply.head(200, headers, None)
        while True:
            self.tried.add(backend.name)
            broke = await self._relay(backend, answer)
            if broke is not None and self.splice.cut():  # never glue a continuation onto it
                broke += " inside an event, whose part was dropped"
            if broke is not None and self.splice.finished:  # cut after its last token: nothing to resume
                self.reply.write(b"data: [DONE]\n\n")
                broke = None
            if broke is None:
                self.reply.end()
                r.metrics.finished(200, r.clock.now() - self.t0)
                return
            if self.splice.errored:  # the client has the backend's error event; it did not finish
                self.reply.cut()
                r.metrics.finished(502, r.clock.now() - self.t0)
                return
            nxt = await self._resume(backend, broke, seed)
            if nxt is None:
                return
            backend, answer = nxt

    async def _resume(self, failed: Backend, broke: str, seed: str | None) -> tuple[Backend, Answer] | None:
        r = self.router
        why = self.plan.why_not or self.splice.inexact
        if why is None and self.resumes >= r.cfg.retry.max_resumes:
            why = f"it was resumed {self.resumes} times already, the limit (retry.max_resumes)"
        if why is None:
            with r.tracing.span("vigil.router.resume", failed=failed.name,
                                tokens=len(self.splice.delivered)) as span:
                nxt = await self._continue(seed)
                r.tracing.note(span, node=nxt[0].name if nxt else "none")
            if nxt is not None:
                self.resumes += 1
                r.metrics.stream_resumes.labels("resumed").inc()
                log.warning("stream %s resumed on %s after %d tokens: %s", self.splice.stream_id,
                            nxt[0].name, len(self.splice.delivered), broke)
                self.reply.write(f": vigil resumed {failed.name}->{nxt[0].name} at token "
                                 f"{len(self.splice.delivered)} ({broke})\n\n".encode())
                return nxt
            why = "no other node could continue it"
        r.metrics.stream_resumes.labels("broken").inc()
        log.warning("stream %s broken after %d tokens: %s; not resumed: %s", self.splice.stream_id,
                    len(self.splice.delivered), broke, why)
        error = {"error": {"message": f"the stream broke ({broke}) and was not resumed: {why}",
                           "type": "server_error", "param": None, "code": "stream_broken"}}
        self.reply.write(b"data: " + json.dumps(error).encode() + b"\n\n")
        self.reply.cut()  # after the event that says why: a client that reads no events sees it cut short
        r.metrics.finished(502, r.clock.now() - self.t0)
        return None

    async def _continue(self, seed: str | None) -> tuple[Backend, Answer] | None:
        """Another eligible node's continuation answer, once its head arrived."""
        r = self.router
        req = signed(continuation(self.req, self.plan, self.splice, seed), self.router.cfg.retry.continue_key)
        while True:
            now = r.clock.now()
            pool = r.table.eligible(now, frozenset(self.tried))
            backend = r.table.choose(now, pool=pool, need_room=False) if pool else None
            if backend is None:
                return None
            self.tried.add(backend.name)
            try:
                # a stream's contract is its silence bound, idle_timeout: the continuation's
                # first token (a prefill and a replay of the delivered ids) may take that long
                answer = await r.attempt(backend, req, first_byte=max(r.cfg.retry.idle_timeout,
                                                                        r.cfg.retry.per_try_timeout))
            except AttemptFailed as e:
                log.info("continuation on %s failed (%s): %s", backend.name, e.kind, e.cause)
                continue
            if is_event_stream(answer):
                return backend, answer
            log.info("continuation on %s answered %s, not a stream", backend.name, answer.up.status)
            if answer.up.transport:
                answer.up.transport.abort()
            r.release(backend)

    async def _relay(self, b: Backend, answer: Answer) -> str | None:
        """Forward `answer`'s events; None once [DONE] (or a finish) went out, else why it broke."""
        r, up = self.router, answer.up
        chunk, clean = answer.head, False
        try:
            with r.flight.on(b.name) as task:  # an ejection of `b` cancels us with its cause
                try:
                    while True:
                        for event in self.splice.feed(chunk):
                            self.reply.write(event)
                        if self.splice.oversized:
                            r.table.failed(b.name, r.clock.now())
                            return f"{b.name} sent an SSE event larger than {MAX_EVENT >> 20} MiB"
                        await self.reply.drain()
                        if self.splice.done:
                            clean = True
                            return None
                        async with asyncio.timeout(r.cfg.retry.idle_timeout):
                            chunk = await up.read()
                        if not chunk:
                            return f"{b.name} ended the stream before [DONE]"
                except UpstreamBroken as e:
                    r.table.failed(b.name, r.clock.now())
                    return f"{b.name}: {e}"
                except TimeoutError:
                    return f"{b.name} silent for {r.cfg.retry.idle_timeout:g} s"
                except asyncio.CancelledError:
                    if (cause := r.flight.cause_of(task)) is None:
                        raise
                    return f"{b.name}: {cause[1]}"
        finally:
            if clean:
                up.release()
            elif up.transport:
                up.transport.abort()
            r.release(b)
