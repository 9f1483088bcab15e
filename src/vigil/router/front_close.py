"""Closing the router's client connections on our side (vigil.router.http1):
the overdue ones, always (`sweep`), and every one at a planned handover of
the VIP (`quiesce`), without closing one under a request its client sends."""

from __future__ import annotations

import asyncio
import logging

from vigil.router.http1 import FrontProtocol, Listener

log = logging.getLogger(__name__)

# s: at a quiesce, an idle connection is closed once unused this long, counted from the quiesce
# at the earliest. A busy client meanwhile sends a request on each connection it pools (most
# recently used first), and each is answered with `Connection: close`: a close of ours would
# race that request. QUIESCE_MAX in agent/release.py (5 s) leaves room for it.
QUIESCE_IDLE = 1.5


def quiesce(listener: Listener) -> int:
    """A planned handover of the address clients reach us on (the VIP): every
    connection closes after the answer it is working on (`Connection: close`), an
    idle one once unused (nothing received, nothing answered) QUIESCE_IDLE s since
    the quiesce, and a new one after its first answer, so no client holds a
    kept-alive connection when the address moves (a request on one would meet the
    new holder's reset). Until `listener.closing` is cleared. Returns how many
    connections were open."""
    listener.closing = True
    open_now = list(listener.conns)
    loop = asyncio.get_running_loop()
    began = loop.time()
    for c in open_now:
        c.keep_alive = False
        _close_when_idle(c, loop, began)
    return len(open_now)


def _close_when_idle(c: FrontProtocol, loop: asyncio.AbstractEventLoop, began: float) -> None:
    """Close `c` once unused for QUIESCE_IDLE s since the quiesce `began` at the earliest.
    Sooner, its client may be writing a request on it this very moment (it cannot have
    seen the close yet), and that request would fail unanswered; a request it does
    send is answered, with `Connection: close`, and that closes it."""
    if c.transport is None or c.busy() or not c.listener.closing:
        return  # the answer it is working on closes it (or the quiesce was lifted)
    wait = max(c.active_at, c.answered_at, began) + QUIESCE_IDLE - loop.time()
    if wait <= 0:
        c.close()
    else:
        loop.call_later(wait, _close_when_idle, c, loop, began)


async def sweep(listener: Listener) -> None:
    """Close the listener's connections that are overdue (FrontProtocol.overdue):
    idle, slow to send a request's head or body, or reading none of their answers."""
    lim, loop = listener, asyncio.get_running_loop()
    while True:
        await asyncio.sleep(min(lim.idle, lim.head) / 4)
        now = loop.time()
        for c in list(listener.conns):
            why = c.overdue(now)
            if why is not None and c.transport is not None:
                log.debug("closing the connection of %s: %s", c.client, why)
                if c.stalled_at is not None:
                    c.transport.abort()  # a close would wait for it to read what we wrote
                else:
                    c.transport.close()
