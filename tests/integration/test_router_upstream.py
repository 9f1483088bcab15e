"""The router's pool of backend connections against a real TCP backend that
closes an idle keep-alive connection (a model server restarted, an idle
timeout): the pool must not hand that connection out, even when the
backend's FIN reached the kernel before the event loop noticed it. A POST
sent on it would break before any answer and, not safe to retry, become a
502 (the rolling upgrade of the deployment walkthrough saw one)."""

from __future__ import annotations

import asyncio
import select
import socket
import threading

from vigil.router.upstream import UpstreamPool, request_bytes

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Backend(threading.Thread):
    """Answers one request per connection, keeping it open until `close_now`."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.close_now, self.closed = threading.Event(), threading.Event()
        self.accepted = 0

    def run(self) -> None:
        first = self._serve_one()
        self.close_now.wait(10)
        first.close()
        self.closed.set()
        self._serve_one().close()

    def _serve_one(self) -> socket.socket:
        conn, _ = self.listener.accept()
        self.accepted += 1
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(4096)
        conn.sendall(ANSWER)
        return conn


async def ask(pool: UpstreamPool, port: int):
    up = await pool.connection("127.0.0.1", port)
    await up.send(request_bytes("POST", "/v1/completions", "backend", [], b"{}"), False)
    return up, up.status, await up.read_all()


def test_an_idle_connection_the_backend_closed_is_never_handed_out():
    backend = Backend()
    backend.start()

    async def run():
        pool = UpstreamPool(connect_timeout=2.0)
        first, status, body = await ask(pool, backend.port)
        assert (status, body) == (200, b"ok")
        first.release()
        assert pool.idle[("127.0.0.1", backend.port)] == [first], "kept for the next request"
        # The backend closes it while this loop does not run (no await in between):
        # the FIN is in the kernel, the transport does not know yet.
        backend.close_now.set()
        assert backend.closed.wait(10)
        fd = first.transport.get_extra_info("socket").fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(10_000), "the FIN reached this end"
        assert first.transport is not None and not first.transport.is_closing()
        second, status, body = await ask(pool, backend.port)
        assert second is not first and (status, body) == (200, b"ok")
        assert backend.accepted == 2, "a fresh connection, not the dead one"
        second.release()
        pool.close()

    asyncio.run(run())
    backend.join(10)
    backend.listener.close()
