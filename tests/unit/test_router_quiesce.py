"""A quiesce (a planned handover of the VIP, vigil.agent.release) never closes
a kept-alive connection under a request its client may be sending: an idle
connection stays open QUIESCE_IDLE s from the quiesce (or its last use), a
request sent on it meanwhile is answered with `Connection: close`, and one left
unused is closed then. (It closed idle connections at once: a busy client whose
hot connections were answered `Connection: close` reached into its pool for a
cold one just as it was closed, and saw "Server disconnected" or "Can not write
request body": the deployment walkthrough's rolling upgrade failed one request
in four runs.)"""

from __future__ import annotations

import asyncio

from vigil.router.front_close import QUIESCE_IDLE, quiesce
from vigil.router.http1 import FrontProtocol, Incoming, Listener, Reply
from vigil.testing.wait import wait_until


async def ok(req: Incoming, reply: Reply) -> None:
    reply.whole(200, [("Content-Type", "text/plain")], b"ok")


REQUEST = b"POST /v1/embeddings HTTP/1.1\r\nHost: vip\r\nContent-Length: 2\r\n\r\n{}"


async def answer(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.wait_for(reader.readexactly(2), 5)
    return head


async def test_a_quiesce_answers_a_request_on_an_idle_connection_and_closes_the_unused_later():
    listener = Listener(1 << 20)
    server = await asyncio.get_running_loop().create_server(lambda: FrontProtocol(ok, listener), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        used = await asyncio.open_connection("127.0.0.1", port)
        unused = await asyncio.open_connection("127.0.0.1", port)
        for reader, writer in (used, unused):
            writer.write(REQUEST)
            assert b"Connection: close" not in await answer(reader), "kept alive before the quiesce"
        loop = asyncio.get_running_loop()
        answered = loop.time()
        # the scenario: both lie unused in the client's pool longer than QUIESCE_IDLE
        await wait_until(lambda: loop.time() - answered > QUIESCE_IDLE * 1.2, 10, "both connections cold")
        t0 = loop.time()
        assert quiesce(listener) == 2
        used[1].write(REQUEST)  # a busy client reaches that far into its pool just now
        head = await answer(used[0])
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head, head
        assert await asyncio.wait_for(used[0].read(), 5) == b"", "closed after that answer"
        assert await asyncio.wait_for(unused[0].read(), 5) == b"", "the unused one closed too"
        assert loop.time() - t0 >= QUIESCE_IDLE * 0.9, "but not before its client left it unused a while"
        for _, writer in (used, unused):
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_connection_whose_long_answer_just_ended_is_not_closed_under_its_next_request():
    """Idle counts from the last answer too: a stream that ran longer than QUIESCE_IDLE
    and ended just before the quiesce leaves its client about to reuse the connection."""
    loop = asyncio.get_running_loop()

    async def slow(req: Incoming, reply: Reply) -> None:
        began = loop.time()  # a long generation: the client sends nothing meanwhile
        await wait_until(lambda: loop.time() - began > QUIESCE_IDLE * 1.5, 10, "a generation longer than idle")
        reply.whole(200, [("Content-Type", "text/plain")], b"ok")

    listener = Listener(1 << 20)
    server = await loop.create_server(lambda: FrontProtocol(slow, listener), "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(REQUEST)
        await answer(reader)
        quiesce(listener)
        writer.write(REQUEST)  # at once, on the kept-alive connection
        head = await answer(reader)
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head, head
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
