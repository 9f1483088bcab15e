"""The router's lean HTTP/1.1 data plane: asyncio protocols with httptools'
parsers (llhttp) on both sides, no framework on the hot path.

- `FrontProtocol` parses client requests and hands each complete one, with a
  `Reply` to answer it, to the router's handler; requests pipelined on one
  connection are answered in order. A request larger than `max_body` gets 413
  at once; a malformed one 400, then the connection closes. A client that
  goes away cancels its handler.
- A `Listener` holds what one listening socket's connections share: at most
  `max_conns` at once (one more is answered 503 and closed: HAProxy's
  maxconn, said rather than silent), a pipeline depth and a body budget per
  connection (past them it is not read: backpressure, not memory), the
  requests they hold (one received while they hold `max_held` is marked
  `over_limit`, for the handler to refuse), and the deadlines `sweep`
  enforces: a request's head and body must arrive in a total time (not an
  inactivity timer: a client that sends one byte per interval is closed),
  an idle connection closes.

The upstream side is vigil.router.upstream.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import httptools


HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailers", "transfer-encoding", "upgrade", "content-length", "host"})
REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
           404: "Not Found", 409: "Conflict", 413: "Payload Too Large", 422: "Unprocessable Entity",
           429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}
HIGH_WATER = 1 << 20


@dataclass
class Incoming:
    method: str
    target: str  # path and query, as sent
    headers: list[tuple[str, str]]
    body: bytes
    keep_alive: bool
    too_large: bool = False
    client: str = ""  # the peer's address, for X-Forwarded-For
    over_limit: bool = False  # arrived while its listener held `max_held` requests: refuse it

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


Handler = Callable[[Incoming, "Reply"], Awaitable[None]]


class Reply:
    """Writes one answer to the client: `head`, then `write`s, then `end`."""

    def __init__(self, front: "FrontProtocol", head_only: bool):
        self.front, self.head_only = front, head_only
        self.started = self.finished = False
        self._chunked = False

    def head(self, status: int, headers: list[tuple[str, str]], length: int | None) -> None:
        self.front.send(self._head(status, headers, length))

    def _head(self, status: int, headers: list[tuple[str, str]], length: int | None) -> bytes:
        self.started = True
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        elif not self.head_only and status >= 200 and status not in (204, 304):
            self._chunked = True
            lines.append("Transfer-Encoding: chunked")
        if not self.front.keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def write(self, data: bytes) -> None:
        if data and not self.head_only:
            self.front.send(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)

    def end(self) -> None:
        if self._chunked:
            self.front.send(b"0\r\n\r\n")
        self.finished = True

    def whole(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        head = self._head(status, headers, len(body))
        self.front.send(head if self.head_only else head + body)  # one write: one syscall
        self.finished = True

    async def drain(self) -> None:
        await self.front.drain()

    def abort(self) -> None:
        """Cut the client off: a truncated answer must not look whole."""
        self.front.keep_alive = False
        if self.front.transport:
            self.front.transport.abort()

    def cut(self) -> None:
        """Close after what was written reaches the client (flushed, unlike `abort`),
        without the last chunk: the answer still shows as cut short."""
        self.front.keep_alive = False
        if self.front.transport:
            self.front.transport.close()


MAX_HEAD = 64 * 1024  # request line and headers together


@dataclass
class Listener:
    """What the client connections of one listening socket share: caps,
    deadlines, the set of them, and `held`, the requests they hold (received
    and not yet answered: in service, or queued behind another on a pipelined
    connection). A request received while they hold `max_held` is not counted
    and comes to the handler `over_limit` (first come, first served).

    - `max_conns` connections at once; one more is answered 503 and closed.
    - `max_pipeline` requests queued per connection, and `max_body` bytes of
      their bodies; past either the connection is not read until its answers
      catch up, nor while the client leaves them unread (write buffer full).
    - A request's line and headers must arrive within `head` s of its first
      byte, a total, not a silence (slowloris); its body must then average
      `body_rate` bytes/s once `head` s have passed since its headers.
    - An idle keep-alive connection, or one whose client reads nothing, closes
      after `idle` s.
    Time spent not reading a client's bytes (our doing) does not count against it.
    """

    max_body: int
    max_conns: int = 1 << 30
    max_held: int = 1 << 30
    max_pipeline: int = 16
    idle: float = 75.0
    head: float = 60.0
    body_rate: float = 4096.0
    conns: "set[FrontProtocol]" = field(default_factory=set, repr=False)
    held: int = 0
    closing: bool = False  # a planned handover is under way: no connection is kept alive (quiesce)


class FrontProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler, listener: Listener):
        self.handler, self.listener = handler, listener
        self.max_body, self.conns = listener.max_body, listener.conns
        self.transport: asyncio.Transport | None = None
        self.active_at = 0.0  # loop time of the last bytes received
        self.answered_at = 0.0  # ... when the last answer was finished
        self.began_at = 0.0  # ... when the request now arriving began
        self.body_at: float | None = None  # ... when its headers were complete
        self.stalled_at: float | None = None  # ... since when the client reads none of our writes
        self.paused_at: float | None = None  # ... since when we read nothing from the client
        self.in_message = False  # a request is partly received
        self.parser = httptools.HttpRequestParser(self)
        self.keep_alive = True
        self.refused = False
        self.retry_at = 0.0  # when (the router clock's now) this client was told to retry (a 429's)
        self._queue: collections.deque[Incoming] = collections.deque()
        self._queued_bytes = 0
        self._task: asyncio.Task | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._reset()

    def _reset(self) -> None:
        self._url, self._headers, self._body, self._size, self._large = b"", [], [], 0, False
        self._keep, self._head_size = False, 0

    def __repr__(self) -> str:
        return (f"<FrontProtocol {self.client if self.transport else 'closed'} queued={len(self._queue)} "
                f"in_message={self.in_message} paused={self.paused_at is not None}>")

    # -- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else ""
        self.active_at = asyncio.get_running_loop().time()
        if len(self.conns) >= self.listener.max_conns:
            self.refused = True
            self._refuse(503, b"the router is at its connection limit (limits.max_connections); "
                              b"retry shortly or on another router")
            return
        self.conns.add(self)
        self.keep_alive = not self.listener.closing

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self.active_at = asyncio.get_running_loop().time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, b"upgrades are not supported")
        except httptools.HttpParserError:
            self._refuse(400, b"malformed HTTP request")

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.conns.discard(self)
        self.listener.held -= sum(not r.over_limit for r in self._queue)  # _serve lets go of its own
        self._queue.clear()
        self._writable.set()
        if self._task and not self._task.done():
            self._task.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()
        self.stalled_at = asyncio.get_running_loop().time()
        self._flow()

    def resume_writing(self) -> None:
        self._writable.set()
        self.stalled_at = None
        self._flow()

    # -- httptools callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self.in_message = True
        self.began_at, self.body_at = asyncio.get_running_loop().time(), None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            raise httptools.HttpParserError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEAD:
            raise httptools.HttpParserError("headers too large")

    def on_headers_complete(self) -> None:
        self._keep = self.parser.should_keep_alive()
        self.body_at = asyncio.get_running_loop().time()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.max_body:
            self._large, self._body = True, []
        elif not self._large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        req = Incoming(self.parser.get_method().decode("latin-1"), self._url.decode("latin-1"),
                       self._headers, b"".join(self._body), self._keep, self._large,
                       self.client)
        self._body = []
        req.over_limit = self.listener.held >= self.listener.max_held
        self.listener.held += not req.over_limit
        self._queue.append(req)
        self._queued_bytes += len(req.body)
        self._flow()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._serve())

    # -- flow control ---------------------------------------------------------------
    def _flow(self) -> None:
        """Read the client while its pipeline has room and it reads its answers."""
        if self.transport is None or self.refused or self.transport.is_closing():
            return
        full = (len(self._queue) >= self.listener.max_pipeline or self._queued_bytes >= self.max_body
                or not self._writable.is_set())
        now = asyncio.get_running_loop().time()
        if full and self.paused_at is None:
            self.paused_at = now
            self.transport.pause_reading()
        elif not full and self.paused_at is not None:
            waited, self.paused_at = now - self.paused_at, None
            self.began_at += waited  # our pause is not the client's slowness
            if self.body_at is not None:
                self.body_at += waited
            self.transport.resume_reading()

    def overdue(self, now: float) -> str | None:
        """Why the sweep closes this connection now, or None."""
        lim = self.listener
        if self.stalled_at is not None and now - self.stalled_at > lim.idle:
            return "reads none of its answers"
        if not self.in_message or self.paused_at is not None:
            return None if self.busy() or now - self.active_at <= lim.idle else "idle"
        if self.body_at is None:
            return "head too slow" if now - self.began_at > lim.head else None
        late = now - self.body_at - lim.head
        return "body too slow" if late > 0 and self._size < lim.body_rate * late else None

    # -- answering ------------------------------------------------------------------
    async def _serve(self) -> None:
        while self._queue and self.transport is not None:
            await self._writable.wait()  # a client that reads no answers gets no more of them
            if self.transport is None or not self._queue:
                return
            req = self._queue.popleft()
            self._queued_bytes -= len(req.body)
            self._flow()
            try:
                await self._answer(req)
            finally:
                self.listener.held -= not req.over_limit

    async def _answer(self, req: Incoming) -> None:
        self.keep_alive = self.keep_alive and req.keep_alive
        reply = Reply(self, req.method == "HEAD")
        try:
            await self.handler(req, reply)
        except Exception:  # noqa: BLE001 - one broken request must not stall the connection
            if not reply.started:
                reply.whole(502, [("Content-Type", "text/plain")], b"router error")
            else:
                reply.abort()
        if not reply.finished and self.transport is not None:
            reply.abort()
        self.answered_at = asyncio.get_running_loop().time()
        if not self.keep_alive and self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def busy(self) -> bool:
        return self.in_message or bool(self._queue) or (self._task is not None and not self._task.done())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def drain(self) -> None:
        await self._writable.wait()

    def _refuse(self, status: int, message: bytes) -> None:
        self.keep_alive = False
        reply = Reply(self, False)
        reply.whole(status, [("Content-Type", "text/plain")], message)
        if self.transport is not None:
            self.transport.close()
