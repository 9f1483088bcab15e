"""etcd versions with known defects Vigil must warn about (etcd #15247)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from vigil.errors import StoreError

log = logging.getLogger(__name__)


def lease_revocation_bug(version: str) -> str | None:
    """A warning for etcd versions whose raft leader, resumed after a stall,
    can revoke leases its successor renews (etcd #15247, fixed by PR #16822 in
    3.4.28 and 3.5.11): a Vigil leader may then lose its lease while healthy."""
    try:
        major, minor, patch = (int(x) for x in version.split("-")[0].split(".")[:3])
    except ValueError:
        return f"etcd version {version!r} is not MAJOR.MINOR.PATCH: cannot tell whether it has the lease-revocation bug"
    fixed = {(3, 4): 28, (3, 5): 11}
    if (major, minor) < (3, 4) or ((major, minor) in fixed and patch < fixed[(major, minor)]):
        return (f"etcd {version} can revoke a healthy leader's lease after a raft-leader stall "
                "(etcd #15247): run etcd >= 3.4.28 or >= 3.5.11 in production")
    return None


async def warn_of_lease_bug(store: Any, record: Any) -> None:
    """Warn loudly, once, when etcd has the lease-revocation bug (etcd #15247);
    `record(kind, cause)` is the event log's. Retries while etcd is away."""
    version_of = getattr(store, "version", None)
    while version_of is not None:  # the in-memory store has no version to check
        try:
            problem = lease_revocation_bug(await version_of())
        except StoreError:
            await asyncio.sleep(5.0)
            continue
        if problem:
            log.warning("%s", problem)
            record("etcd_version_warning", problem)
        return
