"""The router's lean HTTP/1.1 data plane: asyncio protocols with httptools'
parsers (llhttp) on both sides, no framework on the hot path.

- `FrontProtocol` parses client requests and hands each complete one, with a
  `Reply` to answer it, to the router's handler; requests pipelined on one
  connection are answered in order. A request larger than `max_body` gets 413
  at once; a malformed one 400, then the connection closes. A client that
  goes away cancels its handler.
- `UpstreamPool` keeps idle keep-alive connections per backend; `request()`
  sends one request and returns an `Upstream` once the status line and
  headers arrived; its body is read chunk by chunk (`read()`, b"" at the end)
  with flow control (the socket pauses while unread data piles up).

Errors: an upstream that cannot be reached raises `ConnectFailed` (nothing
was sent); one that breaks before or while answering raises `UpstreamBroken`.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Awaitable, Callable

import httptools

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailers", "transfer-encoding", "upgrade", "content-length", "host"})
REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
           404: "Not Found", 409: "Conflict", 413: "Payload Too Large", 422: "Unprocessable Entity",
           429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}
HIGH_WATER = 1 << 20


class ConnectFailed(Exception):
    """No connection to the upstream: the request was never sent."""


class UpstreamBroken(Exception):
    """The upstream connection broke after the request was (maybe) sent."""


@dataclass
class Incoming:
    method: str
    target: str  # path and query, as sent
    headers: list[tuple[str, str]]
    body: bytes
    keep_alive: bool
    too_large: bool = False
    client: str = ""  # the peer's address, for X-Forwarded-For

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


MAX_HEAD = 64 * 1024  # request line and headers together


class FrontProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler, max_body: int, conns: "set[FrontProtocol] | None" = None):
        self.handler, self.max_body = handler, max_body
        self.conns = conns if conns is not None else set()
        self.transport: asyncio.Transport | None = None
        self.active_at = 0.0  # loop time of the last bytes received
        self.in_message = False  # a request is partly received
        self.parser = httptools.HttpRequestParser(self)
        self.keep_alive = True
        self._queue: collections.deque[Incoming] = collections.deque()
        self._task: asyncio.Task | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._reset()

    def _reset(self) -> None:
        self._url, self._headers, self._body, self._size, self._large = b"", [], [], 0, False
        self._keep, self._head_size = False, 0

    # -- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else ""
        self.active_at = asyncio.get_running_loop().time()
        self.conns.add(self)

    def data_received(self, data: bytes) -> None:
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
        self._writable.set()
        if self._task and not self._task.done():
            self._task.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- httptools callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self.in_message = True

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
        self._queue.append(req)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._serve())

    # -- answering ------------------------------------------------------------------
    async def _serve(self) -> None:
        while self._queue and self.transport is not None:
            req = self._queue.popleft()
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


async def sweep(conns: set[FrontProtocol], idle: float, head: float) -> None:
    """Close client connections idle longer than `idle` (keep-alive), and those
    sending one request's line and headers for longer than `head` (slowloris)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(min(idle, head) / 4)
        now = loop.time()
        for c in list(conns):
            quiet = now - c.active_at
            if (c.in_message and quiet > head) or (not c.busy() and quiet > idle):
                c.close()


class Upstream(asyncio.Protocol):
    """One keep-alive connection to a backend, answering one request at a time."""

    def __init__(self, pool: "UpstreamPool", key: tuple[str, int]):
        self.pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self._head: asyncio.Future | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._more = asyncio.Event()
        self._done = self._broken = False
        self._head_only = self._keep = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.transport = None
        if not self._done:
            self._broken = True
            if self._head and not self._head.done():
                self._head.set_exception(UpstreamBroken(f"connection closed before the answer ({exc})"))
        self._more.set()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._broken = True
            if self._head and not self._head.done():
                self._head.set_exception(UpstreamBroken(f"malformed answer: {e}"))
            if self.transport:
                self.transport.abort()
            self._more.set()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self._keep = self.parser.should_keep_alive()  # llhttp forgets it once the message ends
        if self._head and not self._head.done():
            self._head.set_result(None)
        if self._head_only:
            self._finish()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and self.transport:
            self.transport.pause_reading()
        self._more.set()

    def on_message_complete(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._more.set()

    # -- used by the router -----------------------------------------------------------
    async def send(self, data: bytes, head_only: bool) -> None:
        """Send a request; return once the status line and headers arrived."""
        self._head = asyncio.get_running_loop().create_future()
        self._head_only = head_only
        assert self.transport is not None
        self.transport.write(data)
        await self._head

    @property
    def content_length(self) -> int | None:
        v = next((v for k, v in self.headers if k.lower() == "content-length"), None)
        return int(v) if v and v.isdigit() else None

    async def read(self) -> bytes:
        """The next body chunk; b"" at the end. Raises UpstreamBroken."""
        while not self._chunks:
            if self._done:
                return b""
            if self._broken:
                raise UpstreamBroken("connection closed in the middle of the answer")
            self._more.clear()
            await self._more.wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self.transport and self._buffered < HIGH_WATER // 4:
            self.transport.resume_reading()
        return chunk

    async def read_all(self) -> bytes:
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Back to the pool if it can carry another request, else closed."""
        if self._done and not self._broken and self.transport and self._keep and not self._head_only:
            self.parser = httptools.HttpResponseParser(self)
            self.status, self.headers, self._done, self._head = 0, [], False, None
            self.pool.idle[self.key].append(self)
        elif self.transport:
            self.transport.abort()


class UpstreamPool:
    def __init__(self, connect_timeout: float):
        self.connect_timeout = connect_timeout
        self.idle: dict[tuple[str, int], list[Upstream]] = collections.defaultdict(list)

    async def connection(self, host: str, port: int) -> Upstream:
        key = (host, port)
        idle = self.idle[key]
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Upstream(self, key), host, port), self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectFailed(f"{type(e).__name__}: {e}") from None
        return conn

    def close(self) -> None:
        for conns in self.idle.values():
            for c in conns:
                if c.transport:
                    c.transport.abort()
        self.idle.clear()


def request_bytes(method: str, target: str, host: str, headers: list[tuple[str, str]],
                  body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in HOP_BY_HOP]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
