"""The agent's decision for one cycle: a table of small handlers.

Each handler looks at one immutable `ClusterView` and either returns a
`Decision` (what to do and why) or None to pass to the next handler. The
first decision wins. The reason string is logged every cycle and asserted
by tests (Patroni's `run_cycle() -> str`, without its 186-line function).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vigil.core.view import ACTIVE, FAILED, FENCED, MAINTENANCE, STANDBY, ClusterView

NONE, CAMPAIGN, RESIGN, DEMOTE = "none", "campaign", "resign", "demote"


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str

    def __str__(self) -> str:
        return f"{self.action}: {self.reason}"


Handler = Callable[[ClusterView], "Decision | None"]


def _no_session(v: ClusterView) -> Decision | None:
    if v.session_ok:
        return None
    if v.i_lead:
        return Decision(DEMOTE, "lost the etcd session; stepping down")
    return Decision(NONE, "waiting for an etcd session")


def _i_lead_without_key(v: ClusterView) -> Decision | None:
    if not v.i_lead:
        return None
    if v.leader is None:
        return Decision(DEMOTE, "leader key disappeared")
    if v.leader.token != v.my_token or v.leader.name != v.me:
        return Decision(DEMOTE, f"leader key now held by {v.leader.name} (token {v.leader.token})")
    return None


def _stale_own_key(v: ClusterView) -> Decision | None:
    if v.leader is None or v.leader.name != v.me or v.i_lead:
        return None
    if v.leader.lease == v.my_lease:
        return Decision(RESIGN, f"leader key (token {v.leader.token}) is mine but I no longer "
                                "act on it; releasing it")
    return Decision(NONE, f"waiting for the leader key of an earlier lease (token {v.leader.token}) to expire")


def _leading(v: ClusterView) -> Decision | None:
    if not v.i_lead:
        return None
    so = v.switchover
    if so and so.to != v.me and v.eligible(so.to):
        return Decision(RESIGN, f"switchover to {so.to} requested")
    if not v.healthy:
        return Decision(RESIGN, "unhealthy: " + ("; ".join(v.health_reasons) or "no reason given"))
    return Decision(NONE, f"holding leadership (token {v.my_token})")


def _following(v: ClusterView) -> Decision | None:
    if v.leader is None:
        return None
    return Decision(NONE, f"following {v.leader.name} (token {v.leader.token})")


def _no_leader(v: ClusterView) -> Decision:
    if not v.healthy:
        return Decision(NONE, "no leader; not eligible: " + "; ".join(v.health_reasons))
    if not v.eligible(v.me):
        return Decision(NONE, f"no leader; not eligible (state {v.states.get(v.me, 'unregistered')})")
    so = v.switchover
    if so and so.to == v.me:
        return Decision(CAMPAIGN, "no leader; I am the switchover target")
    if so and v.eligible(so.to):
        return Decision(NONE, f"no leader; waiting for switchover target {so.to}")
    best = v.best_candidate()
    if best == v.me:
        return Decision(CAMPAIGN, f"no leader; best eligible candidate "
                                  f"(priority {v.members[v.me].priority})")
    if v.no_leader_for >= v.campaign_grace:
        return Decision(CAMPAIGN, f"no leader for {v.no_leader_for:.1f} s and {best} has not "
                                  "taken over")
    return Decision(NONE, f"no leader; giving {best} (higher priority) {v.campaign_grace:g} s to take over")


HANDLERS: tuple[Handler, ...] = (_no_session, _i_lead_without_key, _stale_own_key, _leading,
                                 _following)


def decide(v: ClusterView) -> Decision:
    """The one decision for this cycle, with its reason."""
    for handler in HANDLERS:
        d = handler(v)
        if d is not None:
            return d
    return _no_leader(v)


def decide_states(v: ClusterView) -> dict[str, str]:
    """States the leader should write (only those that change).

    The leader is `active`, registered members are `standby`, and a node with
    a state but no member record (its lease is gone) or that the leader
    suspects is `failed`. `fenced` and `maintenance` are kept until an
    operator or the fencing path changes them.
    """
    if not v.i_lead:
        return {}
    wanted: dict[str, str] = {}
    for name in set(v.members) | set(v.states):
        current = v.states.get(name)
        if current in (FENCED, MAINTENANCE):
            continue
        if name == v.me:
            state = ACTIVE
        elif name in v.members and name not in v.suspected:
            state = STANDBY
        else:
            state = FAILED
        if state != current:
            wanted[name] = state
    return wanted
