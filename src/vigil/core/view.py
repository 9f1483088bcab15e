"""One immutable snapshot of the cluster, as one node sees it in one cycle
(Patroni's `Cluster` namedtuple, as frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vigil.core.topology import Topology

ACTIVE, STANDBY, DRAINING, FAILED, FENCED, MAINTENANCE, HELD = (
    "active", "standby", "draining", "failed", "fenced", "maintenance", "held")
NODE_STATES = (ACTIVE, STANDBY, DRAINING, FAILED, FENCED, MAINTENANCE, HELD)
#: States in which a node may not take the leader role.
INELIGIBLE_STATES = frozenset({FENCED, MAINTENANCE, DRAINING, HELD})


@dataclass(frozen=True)
class LeaderInfo:
    name: str
    token: int  # the leader key's create revision: the fencing token
    lease: int
    mod_revision: int = 0  # of the key as read (0: not known); a guarded removal compares it


@dataclass(frozen=True)
class MemberInfo:
    name: str
    priority: int = 100
    healthy: bool = True
    reasons: tuple[str, ...] = ()
    lease: int = 0
    suspects: frozenset[str] = frozenset()  # the peers this member's detector suspects now
    verdict: str = "ready"  # its node health verdict (vigil.core.health)


@dataclass(frozen=True)
class Switchover:
    to: str
    requested_by: str = ""


@dataclass(frozen=True)
class ClusterView:
    """Everything a decision may depend on; built fresh every cycle."""

    me: str
    now: float
    session_ok: bool
    my_lease: int
    i_lead: bool  # my LeaderRole is valid at `now`
    my_token: int
    healthy: bool  # the agent itself may lead (its watchdog, its decision loop)
    health_reasons: tuple[str, ...] = ()
    verdict: str = "ready"  # the node's health verdict (vigil.core.health) and why
    verdict_reasons: tuple[str, ...] = ()
    leader: LeaderInfo | None = None
    members: dict[str, MemberInfo] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    switchover: Switchover | None = None
    # Peers this node does not hear now: never heard since it started, or heard and then
    # lost. Only the second kind is *suspected* (`suspected_for`, a member's `suspects`).
    unheard: frozenset[str] = frozenset()
    no_leader_for: float = 0.0
    campaign_grace: float = 1.0
    fenceable: frozenset[str] = frozenset()  # nodes this node has a fencing device for
    fence_blocked: dict[str, str] = field(default_factory=dict)  # node -> why its fencing failed
    suspected_for: dict[str, float] = field(default_factory=dict)  # heard, then lost: seconds since
    race_delay: float = 0.5
    cluster_size: int = 0  # configured members (peers + me); 0: count registered members only
    held_out: dict[str, str] = field(default_factory=dict)  # flap damping (the leader's): node -> why
    heard_suspects: dict[str, frozenset[str]] = field(default_factory=dict)  # from peers' heartbeats
    # The names in the key ring: only they may lead or vote (empty: not known, any registered name).
    ring: frozenset[str] = frozenset()
    # Who watches whom (vigil.core.topology); None or a full mesh: I watch everyone.
    topology: Topology | None = None

    def watches(self, name: str) -> bool:
        """Do I time `name`'s heartbeats myself (else its observers judge it)?"""
        t = self.topology
        if t is None or t.full_mesh:
            return True
        return name in t.subjects(self.me, self.leader.name if self.leader else None)

    def heard(self, name: str) -> bool:
        """Is `name` alive as far as this node can tell: heard by me when I watch
        it, else not suspected cluster-wide by its observers (`suspected_cluster_wide`)."""
        if name == self.me:
            return True
        if self.watches(name):
            return name not in self.unheard
        return not self.suspected_cluster_wide(name)

    def suspected_cluster_wide(self, name: str) -> bool:
        """At least H of `name`'s K observers suspect it (vigil.core.topology):
        my own view when I am one of them, else what the observer's latest
        heartbeat or member record says. Without a topology: never (the caller
        then relies on its own detector)."""
        t = self.topology
        if t is None or t.full_mesh or not t.observers(name):
            return False
        agree = sum(1 for o in t.observers(name) if self.in_ring(o) and name in self._word_of(o))
        return agree >= t.need(name)

    def _word_of(self, voter: str) -> frozenset[str] | dict[str, float]:
        """What `voter` suspects: my detector for me, else its heartbeat's list when
        it carries one, else its member record's."""
        if voter == self.me:
            return self.suspected_for
        m = self.members.get(voter)
        return self.heard_suspects.get(voter, m.suspects if m else frozenset())

    def in_ring(self, name: str) -> bool:
        return not self.ring or name in self.ring

    def leader_key_problem(self) -> str | None:
        """Why the leader key is one no campaign wrote, or None. A campaign binds
        the key to the campaigning node's own lease (the one its member record is
        bound to), and only key-ring members campaign. Any other key was written
        by hand or by a compromised credential; following it would leave the
        cluster leaderless for good. A key under a live lease that names a ring
        member and no other member's lease may be that member's, from an earlier
        incarnation: it is waited out (its lease ends it), never removed, since
        its holder's self-demotion deadline is only known to end with that lease."""
        lead = self.leader
        if lead is None:
            return None
        if lead.lease == 0:
            return f"names {lead.name!r} with no lease"
        if not self.in_ring(lead.name) and not self.unknown_campaigner():
            return f"names {lead.name!r}, which is not in the key ring"
        owner = next((m.name for m in self.members.values() if m.lease == lead.lease and m.name != lead.name),
                     None)
        if owner is not None:
            return f"names {lead.name!r} but is bound to {owner}'s lease"
        return None

    def unknown_campaigner(self) -> bool:
        """The leader key is bound to the lease of a member record of the same
        name that my key ring does not hold: a node added to the cluster whose
        key has not reached my ring yet (a rollout in progress) looks exactly so.
        Removing its key would let others campaign while it may still act, so
        it is neither followed nor removed: an alarm until my ring is reloaded.
        (Only that node's own etcd user may write its member record.)"""
        lead = self.leader
        m = self.members.get(lead.name) if lead is not None else None
        return (lead is not None and m is not None and lead.lease != 0 and m.lease == lead.lease
                and not self.in_ring(lead.name))

    def eligible(self, name: str) -> bool:
        """Could `name` lead: in the key ring, registered, healthy, heard by me, not
        held out by its state."""
        m = self.members.get(name)
        if m is None or not m.healthy or not self.in_ring(name):
            return False
        if not self.heard(name):
            return False
        return self.states.get(name) not in INELIGIBLE_STATES

    def higher_priority_peers(self, exclude: str) -> int:
        """Healthy registered members ranked above me to succeed `exclude`
        (`rank`), whether I can hear them or not: each one is a node that should
        fence before I do. A member its state holds out (fenced, maintenance,
        draining, held: written in etcd, so it reads the same) will not, and is
        not waited for: a node just back from being fenced, still `fenced` until
        the leader calls it standby, cost every takeover in that window a whole
        race delay (measured: ~700 ms instead of ~200 ms)."""
        mine = self.rank(self.me, exclude)
        return sum(1 for m in self.members.values()
                   if m.name not in (self.me, exclude) and m.healthy and self.rank(m.name, exclude) < mine
                   and self.states.get(m.name) not in INELIGIBLE_STATES)

    def rank(self, name: str, succeeding: str | None = None) -> tuple[bool, int, str]:
        """Order of succession (lower first): outside the failure domain of the
        leader it would succeed (`succeeding`), when the topology knows domains
        (a fault that took the leader, a rack's power or switch, is likeliest to
        take its rack next); then priority; ties to the lowest name."""
        m = self.members.get(name)
        t = self.topology
        same = bool(t and succeeding and t.several_domains
                    and t.domains.get(name) == t.domains.get(succeeding, object()))
        return same, -(m.priority if m else 0), name

    def corroborated(self, node: str) -> tuple[int, int, int]:
        """(voters suspecting `node`, voters whose word counts, how many must agree).

        In a full mesh the voters are every configured member but `node`,
        counting my own view instead of my published one, and a majority must
        agree. A member with no (valid) record counts as a voter that does not
        agree: a majority of a shrunken registry is no majority of the cluster.
        Above the mesh (vigil.core.topology) the voters are `node`'s K
        observers and its failure domain's mesh: only they publish their
        suspicions of it in their member records (a crash would otherwise have
        every survivor write its record at once, an O(N²) storm of watch
        events), and each of them hears a leader directly. A voter that does not
        agree and that I do not hear (convicted by its own observers: its rack
        lost power with the leader) is gone and counts neither way. A majority
        of the voters present must agree, and at least H of K and never fewer
        than H (or all voters, where there are fewer): a leader with one
        observer (16 nodes in its rack, one in another) is not fenced on that
        one node's word, whatever that node hears.

        A voter's word is what its latest heartbeat lists when that heartbeat
        lists suspicions (sent the moment they change, so never older than its
        member record), else what its member record says. Only key-ring members
        vote: a record under any other name is no member's word."""
        t = self.topology
        if t is not None and not t.full_mesh and node in t.domains:
            voters = [o for o in sorted(t.voters(node)) if self.in_ring(o)]
            agreeing = [o for o in voters if node in self._word_of(o)]
            present = [o for o in voters if o in agreeing or self.heard(o)]
            need = max(len(present) // 2 + 1, t.need(node), min(t.settings.agreement, len(voters)))
            return len(agreeing), len(present), need
        others = [m for m in self.members.values() if m.name != node and self.in_ring(m.name)]
        agree = sum(1 for m in others if node in self._word_of(m.name))
        counted = max(len(others), self.cluster_size - 1)
        return agree, counted, counted // 2 + 1

    def convicted(self) -> frozenset[str]:
        """The members I suspect whose conviction is corroborated (`corroborated`, the
        word a fence of a leader needs) and, in a full mesh, agreed by more than half
        of the whole cluster, the suspect counted: what lets a batch shard leave its
        owner before etcd expires the owner's lease. No side of a split convicts the
        other unless it is a majority of the cluster (an even split: neither; two
        nodes: never), so two sides never take shards back and forth."""
        full_mesh = self.topology is None or self.topology.full_mesh
        size = max(self.cluster_size, len(self.members))
        out = []
        for name in self.suspected_for:
            agree, _voters, need = self.corroborated(name)
            if name != self.me and agree >= need and (not full_mesh or agree > size // 2):
                out.append(name)
        return frozenset(out)

    def best_candidate(self, succeeding: str | None = None) -> str | None:
        """The eligible member first in the order of succession (`rank`)."""
        ranked = sorted(self.rank(m.name, succeeding) for m in self.members.values() if self.eligible(m.name))
        return ranked[0][2] if ranked else None
