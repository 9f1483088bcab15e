"""The end of a component's background tasks, written once: cancel, then wait;
and a stop step that may fail without stopping the steps after it."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable

from vigil.errors import VigilError

log = logging.getLogger(__name__)


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel every task given (None: skipped) and return once all have ended.
    Their exceptions, cancellation included, are retrieved here and not raised:
    a component that stops must not fail because a loop it owned had failed."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    await asyncio.gather(*live, return_exceptions=True)


async def best_effort(what: str, aw: Awaitable[object]) -> None:
    """A stop step that fails is logged; the remaining steps still run."""
    try:
        await aw
    except (VigilError, asyncio.TimeoutError, OSError) as e:
        log.warning("on stop, could not %s: %s", what, e)
