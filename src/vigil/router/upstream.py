"""The router's connections to backends (httptools' response parser).

`UpstreamPool` keeps idle keep-alive connections per backend, at most
`max_idle` each (more are closed on release); `connection()` gives one
(an idle one only if the backend has not closed it: `Upstream.dropped`),
`Upstream.send` sends one request and returns once the status line and
headers arrived; its body is read chunk by chunk (`read()`, b"" at the end)
with flow control (the socket pauses while unread data piles up).

Errors: an upstream that cannot be reached raises `ConnectFailed` (nothing
was sent); one that breaks before or while answering raises `UpstreamBroken`.
"""

from __future__ import annotations

import asyncio
import collections
import select

import httptools

from vigil.router.http1 import HIGH_WATER, HOP_BY_HOP


class ConnectFailed(Exception):
    """No connection to the upstream: the request was never sent."""


class UpstreamBroken(Exception):
    """The upstream connection broke after the request was (maybe) sent."""


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

    def dropped(self) -> bool:
        """An idle connection the backend closed (or wrote to) that the loop has not
        noticed yet: its socket is readable. Checked before reuse (as urllib3's
        is_connection_dropped): a request sent on it would break before any answer,
        and a POST that broke so is not retried (it may have been received)."""
        if self.transport is None or self.transport.is_closing():
            return True
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def release(self) -> None:
        """Back to the pool if it can carry another request, else closed."""
        if self._done and not self._broken and self.transport and self._keep and not self._head_only:
            self.parser = httptools.HttpResponseParser(self)
            self.status, self.headers, self._done, self._head = 0, [], False, None
            idle = self.pool.idle[self.key]
            if len(idle) < self.pool.max_idle:
                idle.append(self)
                return
        if self.transport:
            self.transport.abort()


class UpstreamPool:
    def __init__(self, connect_timeout: float, max_idle: int = 64):
        self.connect_timeout, self.max_idle = connect_timeout, max_idle
        self.idle: dict[tuple[str, int], list[Upstream]] = collections.defaultdict(list)

    async def connection(self, host: str, port: int) -> Upstream:
        key = (host, port)
        idle = self.idle[key]
        while idle:
            conn = idle.pop()
            if not conn.dropped():
                return conn
            if conn.transport:
                conn.transport.abort()
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
