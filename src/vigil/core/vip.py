"""The virtual IP's kernel lease: how long the holder may let the kernel keep
the address after a refresh, so that it is gone before anyone else can take
the role, even if the holder is SIGKILLed or frozen right after.

The holder adds the VIP with an IPv4 lifetime (valid_lft = preferred_lft, whole
seconds) and refreshes it on every acknowledged keep-alive. Leadership ends at
the self-demotion deadline `valid_until` (keep-alive sent + demote_after), which
is before the etcd lease can expire, and a successor takes the role only after
that lease expired or after fencing. The kernel removes an expired address up
to `KERNEL_LAG` late (its lifetime check is rounded up to a whole second within
a quarter-second fuzz: measured 0.0-0.3 s here), so:

    lifetime = floor(valid_until - now - KERNEL_LAG)

ends the address by valid_until. A lifetime below 1 s cannot be given (the
kernel counts whole seconds): the address must then be removed at once.
"""

from __future__ import annotations

import math

KERNEL_LAG = 0.5  # seconds an expired address may linger (measured <= 0.3 s)


def lifetime(now: float, valid_until: float, lag: float = KERNEL_LAG) -> int | None:
    """Whole seconds the kernel may keep the VIP from `now`; None: remove it now."""
    left = valid_until - now - lag
    return int(math.floor(left)) if left >= 1.0 else None


def gone_by(now: float, seconds: int, lag: float = KERNEL_LAG) -> float:
    """The latest time the address can still be on the interface after a refresh."""
    return now + seconds + lag
