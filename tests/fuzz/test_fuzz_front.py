"""Fuzz target: one client connection to the router's front protocol
(vigil.router.http1), in-process over a transport that models the kernel:
it delivers the client's bytes only while the router reads, and holds the
router's answers until the client reads them. Pipelined requests (1-8),
Content-Length, chunked and empty bodies, bodies over `max_body`, the bytes
split anywhere, a client that reads late, small pipeline and held caps.

Invariants: every request is answered once, in order (413 for a body over
max_body, 429 only past max_held, else the handler's echo of its target and
exact body); a connection is never read while its pipeline is full or its
answers unread; no answer is written while the last one waits unread;
nothing is held afterwards. (The socket-level target: test_fuzz_router.py;
slow senders against the real sweep: tests/integration/test_router_limits.py.)"""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.fuzz.conftest import EXAMPLES
from vigil.router.http1 import FrontProtocol, Incoming, Listener, Reply

MAX_BODY = 256
HIGH = 128  # the transport's write buffer high-water mark (asyncio's is 64 KiB)
ANSWER = 200  # bytes of the largest answer echo writes at once


class KernelTransport(asyncio.Transport):
    """The socket as the router sees it: writes buffer until the client reads."""

    def __init__(self, proto: FrontProtocol):
        super().__init__()
        self.proto, self.out, self.unread = proto, bytearray(), 0
        self.reading, self.closed, self.writes_paused = True, False, False

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data) -> None:
        assert not self.closed, "a write after close"
        self.out += data
        self.unread += len(data)
        assert self.unread <= HIGH + ANSWER, "an answer written while the last waits unread"
        if self.unread > HIGH and not self.writes_paused:
            self.writes_paused = True
            self.proto.pause_writing()

    def client_reads(self) -> None:
        self.unread = 0
        if self.writes_paused:
            self.writes_paused = False
            self.proto.resume_writing()

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.proto.connection_lost, None)

    abort = close


async def until(cond, what: str, turns: int = 20_000) -> None:
    """Let the loop run until `cond()` (turns of the loop, not time); fail naming `what`."""
    for _ in range(turns):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


async def sendable(t: KernelTransport, turns: int = 20_000) -> None:
    """Until the router reads again (its pipeline drained); a client whose send
    blocks still reads its answers meanwhile, as a real one must, if late."""
    for turn in range(turns):
        if t.reading or t.closed:
            return
        if t.writes_paused and turn % 32 == 31:
            t.client_reads()
        await asyncio.sleep(0)
    raise AssertionError("the router never read again")


async def echo(req: Incoming, reply: Reply) -> None:
    """The router's answers: 429 past max_held, 413 past max_body, else an echo,
    sometimes streamed in pieces with backpressure."""
    await asyncio.sleep(0)  # an answer is never synchronous
    if req.over_limit:
        reply.whole(429, [], b"held")
    elif req.too_large:
        reply.whole(413, [], b"large")
    else:
        body = f"{req.target} {len(req.body)} {hashlib.sha256(req.body).hexdigest()[:16]}".encode()
        if req.target.endswith("s"):
            reply.head(200, [], None)
            for i in range(0, len(body), 20):
                reply.write(body[i:i + 20])
                await reply.drain()
            reply.end()
        else:
            reply.whole(200, [], body)


@st.composite
def connections(draw):
    n = draw(st.integers(1, 8))
    data, expect = b"", []
    for i in range(n):
        size = draw(st.integers(0, 2 * MAX_BODY))  # bytes of every value, the framing's among them
        body = bytes((i * 31 + j * 7) % 256 for j in range(size))
        framing = draw(st.sampled_from(["length", "chunked", "none"]))
        target = f"/v1/{i}" + draw(st.sampled_from(["", "s"]))
        lines = [f"POST {target} HTTP/1.1", "Host: f"] + (["Connection: close"] if i == n - 1 else [])
        if framing == "length":
            lines.append(f"Content-Length: {len(body)}")
            payload = body
        elif framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
            cuts = sorted(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=4, unique=True)))
            parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if body[a:b]]
            payload = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        else:
            body, payload = b"", b""
        data += ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
        expect.append((target, body))
    splits = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    pieces = [data[a:b] for a, b in zip([0, *splits], [*splits, len(data)])]
    reads = draw(st.lists(st.booleans(), min_size=len(pieces), max_size=len(pieces)))
    return pieces, reads, expect, draw(st.integers(1, 4)), draw(st.sampled_from([2, 5, 1 << 30]))


def answers(out: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each answer written, Content-Length or chunked."""
    got = []
    while out:
        head, out = out.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ")[1])
        if b"Content-Length: " in head:
            n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            body, out = out[:n], out[n:]
        else:
            body = b""
            while True:
                size, out = out.split(b"\r\n", 1)
                n = int(size, 16)
                body, out = body + out[:n], out[n + 2:]
                if n == 0:
                    break
        got.append((status, body))
    return got


async def one_connection(pieces, reads, expect, pipeline: int, max_held: int) -> None:
    listener = Listener(MAX_BODY, max_held=max_held, max_pipeline=pipeline)
    proto = FrontProtocol(echo, listener)
    t = KernelTransport(proto)
    proto.connection_made(t)
    for piece, read in zip(pieces, reads):
        if read:
            t.client_reads()
        await sendable(t)
        if t.closed:
            break
        proto.data_received(piece)
        if len(proto._queue) >= pipeline or proto._queued_bytes >= MAX_BODY or t.writes_paused:
            assert not t.reading, f"read on with {proto!r}"
        assert listener.held <= max_held, "held past max_held"
        await until(lambda: not proto._task or proto._task.done() or t.writes_paused or not proto._queue,
                    "the answers to go out or back up")
    while not t.closed:  # the client reads everything; the last request said close
        t.client_reads()
        await until(lambda: t.closed or t.writes_paused, "the connection to close after its last answer")
    await until(lambda: (proto._task is None or proto._task.done()) and not listener.conns,
                "the answers to finish and the connection to go")
    assert listener.held == 0 and not listener.conns
    got = answers(bytes(t.out))
    assert len(got) == len(expect), (got, expect)
    for (status, body), (target, sent) in zip(got, expect):
        if status == 429:
            assert max_held < len(expect)
        elif len(sent) > MAX_BODY:
            assert status == 413
        else:
            digest = hashlib.sha256(sent).hexdigest()[:16]
            assert (status, body) == (200, f"{target} {len(sent)} {digest}".encode())


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(connections())
def test_a_pipelined_connection_is_answered_in_order_within_its_bounds(loop, conn):
    loop.run_until_complete(one_connection(*conn))
