"""The agent's decision for one cycle: a table of small handlers.

Each handler looks at one immutable `ClusterView` and either returns a
`Decision` (what to do and why) or None to pass to the next handler. The
first decision wins. The reason string is logged every cycle and asserted
by tests (Patroni's `run_cycle() -> str`, without its 186-line function).

A decision is a typed effect that carries its targets, so the shell acts on
what was decided, never on a re-read: `Wait` (nothing to do), `Campaign`,
`Resign(token)` (release the leader key created at `token`), `Demote` (stop
acting at once; the key is not ours to touch), `Fence(target)` (power off
the leader key's holder: name, token, lease) and `ClearLeaderKey(target)`
(remove a leader key that names no leader anyone may follow). The shell
(vigil.agent.reconciler) is a table of one small runner per type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

from vigil.core.health import DEGRADED, SERVING
from vigil.core.view import (ACTIVE, FAILED, FENCED, HELD, INELIGIBLE_STATES, MAINTENANCE, STANDBY,
                             ClusterView, LeaderInfo)

NONE, CAMPAIGN, RESIGN, DEMOTE, FENCE, HANDOVER, CLEAR = ("none", "campaign", "resign", "demote", "fence",
                                                          "wait_for_handover", "clear_leader_key")


@dataclass(frozen=True)
class Decision:
    """What to do and why; `action` names the type in logs and /status."""
    reason: str
    action: ClassVar[str] = NONE

    def __str__(self) -> str:
        return f"{self.action}: {self.reason}"


@dataclass(frozen=True)
class Wait(Decision):
    action: ClassVar[str] = NONE


@dataclass(frozen=True)
class Campaign(Decision):
    action: ClassVar[str] = CAMPAIGN


@dataclass(frozen=True)
class Demote(Decision):
    action: ClassVar[str] = DEMOTE


@dataclass(frozen=True)
class Resign(Decision):
    token: int  # the leader key's create revision: deleted only if it is still that key
    # A handover the node chose while it still serves (a switchover, an operator's standby or
    # drain, a degraded node with a ready peer): its front door is quiesced first
    # (vigil.agent.release). An unhealthy or failed leader resigns at once.
    planned: bool = False
    action: ClassVar[str] = RESIGN


@dataclass(frozen=True)
class Fence(Decision):
    target: LeaderInfo  # the leader key's holder as decided: powered off, its lease revoked
    action: ClassVar[str] = FENCE


@dataclass(frozen=True)
class ClearLeaderKey(Decision):
    """The leader key names no leader (`ClusterView.leader_key_problem`): it is
    "no leader", an alarm, and it is removed only while it is still the key
    judged (its mod revision), so the next campaign can succeed."""
    target: LeaderInfo
    action: ClassVar[str] = CLEAR


@dataclass(frozen=True)
class WaitForHandover(Decision):
    peers: tuple[str, ...]  # alive peers whose latest heartbeat still says "leader"
    until: float  # when they have demoted themselves whatever they say (monotonic s)
    action: ClassVar[str] = HANDOVER


Handler = Callable[[ClusterView], "Decision | None"]


def handover(token: int, claimants: list[str], now: float, until: float) -> WaitForHandover | None:
    """Holding a fresh `token`: act now (None), or wait while an alive peer still
    announces itself leader in its heartbeats, at most `until` (won + demote_after:
    that peer cannot renew a lease that is gone, so it has demoted itself by then).
    This never happens when etcd keeps its lease contract; it does with etcd
    before 3.4.28 / 3.5.11, whose raft leader, resumed after a stall, revokes
    leases its successor was renewing (etcd issues #12528, #15247)."""
    if not claimants or now >= until:
        return None
    return WaitForHandover(f"won token {token} while {', '.join(claimants)} still announced itself leader; "
                           f"acting when it stops or in {until - now:.3f} s", tuple(claimants), until)


def _no_session(v: ClusterView) -> Decision | None:
    if v.session_ok:
        return None
    if v.i_lead:
        return Demote("lost the etcd session; stepping down")
    return Wait("waiting for an etcd session")


def _i_lead_without_key(v: ClusterView) -> Decision | None:
    if not v.i_lead:
        return None
    if v.leader is None:
        return Demote("leader key disappeared")
    if v.leader.token != v.my_token or v.leader.name != v.me:
        return Demote(f"leader key now held by {v.leader.name} (token {v.leader.token})")
    if v.leader.lease != v.my_lease:  # rewritten under another lease: its expiry no longer bounds my term
        return Demote(f"leader key (token {v.leader.token}) rebound from my lease to lease {v.leader.lease:x}")
    return None


def _invalid_leader_key(v: ClusterView) -> Decision | None:
    # While I lead, `_i_lead_without_key` has checked the key is the one I created.
    why, lead = None if v.i_lead else v.leader_key_problem(), v.leader
    if why is None or lead is None:
        return None
    return ClearLeaderKey(f"leader key (token {lead.token}) {why}: no leader; removing it so an "
                          "election can happen", lead)


def _leader_outside_my_ring(v: ClusterView) -> Decision | None:
    lead = v.leader
    if v.i_lead or lead is None or not v.unknown_campaigner():
        return None
    return Wait(f"leader key (token {lead.token}) names {lead.name}, which is not in my key "
                "ring: following no one, removing nothing and fencing no one until the ring is "
                "reloaded (add its key with `vigil keygen`, then SIGHUP)")


def _stale_own_key(v: ClusterView) -> Decision | None:
    if v.leader is None or v.leader.name != v.me or v.i_lead:
        return None
    if v.leader.lease == v.my_lease:
        return Resign(f"leader key (token {v.leader.token}) is mine but I no longer "
                      "act on it; releasing it", v.leader.token)
    return Wait(f"waiting for the leader key of an earlier lease (token {v.leader.token}) to expire")


def _leading(v: ClusterView) -> Decision | None:
    if not v.i_lead:
        return None
    so = v.switchover
    if so and so.to != v.me and v.eligible(so.to):
        by = f" by {so.requested_by}" if so.requested_by else ""
        return Resign(f"switchover to {so.to} requested{by}", v.my_token, planned=True)
    mine = v.states.get(v.me)
    if mine in INELIGIBLE_STATES:
        return Resign(f"state {mine} (an operator's standby or drain): handing the role over",
                      v.my_token, planned=True)
    if not v.healthy:
        return Resign("unhealthy: " + ("; ".join(v.health_reasons) or "no reason given"), v.my_token)
    why = "; ".join(v.verdict_reasons) or "no reason given"
    if v.verdict not in SERVING:
        return Resign(f"{v.verdict}: handing the role over ({why})", v.my_token)
    if v.verdict == DEGRADED:
        ready = _ready_peers(v)
        if ready:
            return Resign(f"degraded ({why}); {ready[0]} is ready to lead", v.my_token, planned=True)
        return Wait(f"holding leadership while degraded ({why}): no ready member to hand over to")
    return Wait(f"holding leadership (token {v.my_token})")


def _ready_peers(v: ClusterView) -> list[str]:
    return sorted(n for n in v.members if n != v.me and v.eligible(n))


def _fence_dead_leader(v: ClusterView) -> Decision | None:
    """A suspected leader with a fencing device is powered off by the best
    standby, which then takes over without waiting for the lease."""
    lead = v.leader
    # Only a peer we heard and then lost counts: one we never heard (we just
    # started) is unknown, and unknown is no reason to power anything off.
    if lead is None or lead.name == v.me or lead.name not in v.suspected_for:
        return None
    if lead.name in v.fence_blocked:
        return Wait(f"blocked on {lead.name}: {v.fence_blocked[lead.name]}; if it stays "
                    f"blocked, power it off by hand, then run `vigil fence {lead.name} "
                    "--confirm-off`")
    if lead.name not in v.fenceable:
        return Wait(f"leader {lead.name} suspected; no fencing device for it: waiting for its "
                    "lease to expire")
    # One node's view is not enough to power a leader off: a standby on a lossy link
    # would fence a healthy leader (and, its BMC traffic lost too, fail and block).
    agree, voters, need = v.corroborated(lead.name)
    if agree < need:
        who = "members; fencing needs a majority" if v.topology is None or v.topology.full_mesh else \
            f"of its observers and failure-domain mesh; fencing needs {need} of them"
        return Wait(f"leader {lead.name} suspected by {agree} of {voters} {who} (else its lease decides)")
    if not v.healthy or not v.eligible(v.me):
        return Wait(f"leader {lead.name} suspected; not eligible to take over")
    best = v.best_candidate(succeeding=lead.name)
    if best is not None and best != v.me:  # (I am eligible: there is a best)
        why = "higher priority" if v.rank(best, lead.name)[0] == v.rank(v.me, lead.name)[0] else \
            f"outside {lead.name}'s failure domain"
        return Wait(f"leader {lead.name} suspected; {best} ({why}) will fence it")
    wait = v.higher_priority_peers(lead.name) * v.race_delay
    waited = v.suspected_for.get(lead.name, 0.0)
    if waited < wait:
        return Wait(f"leader {lead.name} suspected; fencing it in {wait - waited:.1f} s unless "
                    "a higher-priority node does first")
    return Fence(f"leader {lead.name} (token {lead.token}) suspected; fencing it", lead)


def _following(v: ClusterView) -> Decision | None:
    if v.leader is None:
        return None
    return Wait(f"following {v.leader.name} (token {v.leader.token})")


def _no_leader(v: ClusterView) -> Decision:
    if v.fence_blocked:
        node, why = sorted(v.fence_blocked.items())[0]
        return Wait(f"blocked on {node}: {why}; it may still be alive. If it stays blocked, "
                    f"power it off by hand, then run `vigil fence {node} --confirm-off`")
    if not v.healthy:
        return Wait("no leader; not eligible: " + "; ".join(v.health_reasons))
    if _lead_while_degraded(v):
        return Campaign(f"no leader for {v.no_leader_for:.1f} s and no ready member; leading "
                        f"while degraded ({'; '.join(v.verdict_reasons)})")
    if not v.eligible(v.me):
        return Wait(f"no leader; not eligible (state {v.states.get(v.me, 'unregistered')})")
    so = v.switchover
    if so and so.to == v.me:
        return Campaign("no leader; I am the switchover target")
    if so and v.eligible(so.to):
        return Wait(f"no leader; waiting for switchover target {so.to}")
    best = v.best_candidate()
    if best == v.me:
        return Campaign(f"no leader; best eligible candidate "
                        f"(priority {v.members[v.me].priority})")
    if v.no_leader_for >= v.campaign_grace:
        return Campaign(f"no leader for {v.no_leader_for:.1f} s and {best} has not "
                        "taken over")
    return Wait(f"no leader; giving {best} (higher priority) {v.campaign_grace:g} s to take over")


def _lead_while_degraded(v: ClusterView) -> bool:
    """A degraded node is never promoted over a ready one, but a cluster with
    no ready member is better led by a degraded node than by none (a whole
    room running warm must not lose its leader)."""
    return (v.verdict == DEGRADED and v.me in v.members and v.no_leader_for >= v.campaign_grace
            and v.states.get(v.me) not in INELIGIBLE_STATES and not any(v.eligible(n) for n in v.members))


HANDLERS: tuple[Handler, ...] = (_no_session, _i_lead_without_key, _invalid_leader_key,
                                 _leader_outside_my_ring, _stale_own_key,
                                 _leading, _fence_dead_leader, _following)


def decide(v: ClusterView) -> Decision:
    """The one decision for this cycle, with its reason."""
    for handler in HANDLERS:
        d = handler(v)
        if d is not None:
            return d
    return _no_leader(v)


def decide_states(v: ClusterView) -> dict[str, str]:
    """States the leader should write (only those that change).

    The leader is `active`, registered members are `standby` (`held` while
    flap damping holds them out, vigil.core.damping), and a node with
    a state but no member record (its lease is gone) or that the leader
    does not hear now is `failed`; names outside the key ring get no state.
    `maintenance` is kept until an operator changes it;
    `fenced` is kept until the node registers again (it was rebooted).
    """
    if not v.i_lead:
        return {}
    wanted: dict[str, str] = {}
    for name in set(v.members) | set(v.states):
        if not v.in_ring(name):  # a record under a name outside the key ring is no member's
            continue
        current = v.states.get(name)
        if current == MAINTENANCE or (current == FENCED and name not in v.members):
            continue
        if name == v.me:
            state = ACTIVE
        elif name in v.members and v.heard(name):
            state = HELD if name in v.held_out else STANDBY
        else:
            state = FAILED
        if state != current:
            wanted[name] = state
    return wanted
