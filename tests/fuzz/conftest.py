"""Shared parts of the fuzz targets: an event loop in a thread (the servers
under test run there, hypothesis drives them synchronously) and one raw
HTTP exchange over a real socket."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any, Awaitable

import pytest
from hypothesis import strategies as st

# issue 9: every fuzz target runs at least this many examples in CI; a deeper
# run sets VIGIL_FUZZ_EXAMPLES (issue 22: 200,000 with --hypothesis-profile=explore)
EXAMPLES = max(2000, int(os.environ.get("VIGIL_FUZZ_EXAMPLES") or 2000))


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, aw: Awaitable[Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(aw, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def loop_thread():
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


def exchange(port: int, data: bytes, timeout: float = 10.0, half_close: bool = True) -> bytes:
    """Send `data`, close our side (unless `half_close` is False: aiohttp drops
    a half-closed client's request), read the answer until the server closes.
    A server that hangs fails the example (socket timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:  # the server refused and closed while we sent: its answer may be in
            pass
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk


def status_of(answer: bytes) -> int | None:
    """The status code of the first answer, None when there is none."""
    if not answer:
        return None
    assert answer.startswith(b"HTTP/1."), answer[:80]
    return int(answer.split(b" ", 2)[1])


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'",
                min_size=1, max_size=20)
VALUE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="\x7f"),
                max_size=60)


@st.composite
def http_requests(draw, paths: list[str], methods: list[str]) -> tuple[bytes, bool]:
    """Mostly well-formed HTTP/1.1 requests with hostile parts; sometimes raw
    bytes. With each, whether it is complete as sent (else the sender closes
    its side, so the server sees the end instead of waiting for the rest)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=400)), False
    method = draw(st.sampled_from(methods) | TOKEN)
    path = draw(st.sampled_from(paths) | st.text(alphabet="/abc?=&%.:~0123456789", max_size=40)
                .map(lambda p: "/" + p))
    headers = draw(st.lists(st.tuples(st.sampled_from(["Content-Type", "Idempotency-Key", "Connection",
                                                      "Transfer-Encoding", "X-Forwarded-For", "Expect",
                                                      "Authorization", "Accept"]) | TOKEN, VALUE),
                            max_size=6))
    body = draw(st.binary(max_size=300))
    length = draw(st.sampled_from(["right", "none", "short", "garbage"]))
    lines = [f"{method} {path} HTTP/1.1", "Host: fuzz", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if length == "right":
        lines.append(f"Content-Length: {len(body)}")
    elif length == "short":
        lines.append(f"Content-Length: {len(body) + 10}")
    elif length == "garbage":
        lines.append(f"Content-Length: {draw(VALUE)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, length in ("right", "none")
