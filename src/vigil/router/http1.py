"""The router's lean HTTP/1.1 data plane: asyncio protocols with httptools'
parsers (llhttp) on both sides, no framework on the hot path.

- `FrontProtocol` parses client requests and hands each complete one, with a
  `Reply` to answer it, to the router's handler; requests pipelined on one
  connection are answered in order. A request larger than `max_body` gets 413
  at once; a malformed one 400, then the connection closes. A client that
  goes away cancels its handler.
- At most `max_conns` client connections are served at once; one more is
  answered 503 and closed (HAProxy's maxconn, said rather than silent).

The upstream side is vigil.router.upstream.
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

    def cut(self) -> None:
        """Close after what was written reaches the client (flushed, unlike `abort`),
        without the last chunk: the answer still shows as cut short."""
        self.front.keep_alive = False
        if self.front.transport:
            self.front.transport.close()


MAX_HEAD = 64 * 1024  # request line and headers together


class FrontProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler, max_body: int, conns: "set[FrontProtocol] | None" = None,
                 max_conns: int = 1 << 30):
        self.handler, self.max_body, self.max_conns = handler, max_body, max_conns
        self.conns = conns if conns is not None else set()
        self.transport: asyncio.Transport | None = None
        self.active_at = 0.0  # loop time of the last bytes received
        self.in_message = False  # a request is partly received
        self.parser = httptools.HttpRequestParser(self)
        self.keep_alive = True
        self.refused = False
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
        if len(self.conns) >= self.max_conns:
            self.refused = True
            self._refuse(503, b"the router is at its connection limit (limits.max_connections); "
                              b"retry shortly or on another router")
            return
        self.conns.add(self)

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
