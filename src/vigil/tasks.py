"""The end of a component's background tasks, written once: cancel, then wait."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel every task given (None: skipped) and return once all have ended.
    Their exceptions, cancellation included, are retrieved here and not raised:
    a component that stops must not fail because a loop it owned had failed."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    await asyncio.gather(*live, return_exceptions=True)
