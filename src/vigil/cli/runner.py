"""Running a foreground daemon: an event set by SIGTERM/SIGINT, and the event
loop (uvloop where installed)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Awaitable, Callable


def stop_on_signals() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def on_reload(callback: Callable[[], Any]) -> None:
    """Call `callback` on SIGHUP (call inside the running loop)."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, callback)


def run(main: Callable[[], Awaitable[Any]]) -> None:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        asyncio.run(main())
        return
    uvloop.run(main())
