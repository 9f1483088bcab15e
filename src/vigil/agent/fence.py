"""Fast, safe takeover: power the suspected leader off through its fencing
devices (levels tried in order), verify it is off, revoke its lease (its
leader key and member record vanish at once), mark it `fenced`. Only then
may this node campaign. If no level can confirm the power-off, the node is
marked blocked in etcd (it is marked so from the first attempt, so nobody
campaigns while a fence is in flight) and nobody takes its roles until an
operator runs `vigil fence NODE --confirm-off`: a node that was not confirmed dead is never
assumed dead. Every step is an event with its timing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from vigil.core.view import LeaderInfo
from vigil.errors import StoreError
from vigil.fencing.devices import FencingFailed, make_device

if TYPE_CHECKING:
    from vigil.agent.daemon import Agent

log = logging.getLogger(__name__)


async def fence_leader(a: "Agent", leader: LeaderInfo, reason: str) -> bool:
    """True once `leader` is confirmed off and its lease revoked."""
    assert a.cfg.fencing is not None
    t0 = a.clock.now()
    a.events.record("fencing_started", f"fencing {leader.name}: {reason}", subject=leader.name,
                    token=leader.token)
    # Hold everyone else back while we fence: if the lease expires meanwhile, no one may
    # take the role of a node that is not yet confirmed off. Under our lease: if we die
    # or lose etcd mid-fence the marker goes with us; if we abandon the attempt (an etcd
    # error, a revoke that failed) the next reconcile cycle removes it.
    await a.registry.block_fencing(leader.name, {"reason": f"fencing in progress by {a.cfg.node}",
                                                 "state": "in_progress", "by": a.cfg.node,
                                                 "at": a.clock.wall()}, a.session.lease_id)
    errors = []
    for level, spec in enumerate(a.cfg.fencing.topology[leader.name], start=1):
        device = make_device(spec)
        try:
            await device.fence()
        except FencingFailed as e:
            errors.append(f"level {level} ({device.name}): {e}")
            a.events.record("fencing_level_failed", str(e), subject=leader.name, level=level)
            continue
        ms = round((a.clock.now() - t0) * 1000, 1)
        # From here the old leader cannot act: its leadership ended no later than now.
        a.history.write("fenced", leader.token, a.clock.wall(), node=leader.name, by=a.cfg.node)
        try:
            await a.store.revoke(leader.lease)
            await a.registry.fenced(leader.name)
        except StoreError as e:
            a.events.record("fencing_incomplete", f"{leader.name} is off but its lease could not be "
                            f"revoked yet ({e}); it will expire", subject=leader.name)
            return False
        a.vips.previous_holder_fenced()  # proven off: our takeover needs no duplicate-address probe
        a.events.record("node_fenced", f"{leader.name} powered off by {device.name} and verified off in "
                        f"{ms:.0f} ms; lease revoked", subject=leader.name, device=device.name,
                        level=level, fence_ms=ms, token=leader.token)
        return True
    why = "; ".join(errors)
    await a.registry.block_fencing(leader.name, {"reason": why, "state": "failed", "by": a.cfg.node,
                                                 "at": a.clock.wall()})
    a.events.record("fencing_failed", f"could not confirm {leader.name} is off ({why}); its roles stay "
                    f"blocked. Power it off by hand, then run `vigil fence {leader.name} --confirm-off`",
                    subject=leader.name)
    return False
