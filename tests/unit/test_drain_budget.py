"""The drain budget (vigil.core.drain_budget): an XID storm or a warm room
drains at most a share of the cluster and of each failure domain; the rest
serve degraded and say why; places are kept by those that hold them and
taken in name order when they free; a failed verdict and an incompatible
workload are never held back. The agents' rounds are played out as every
agent would, each deciding from the member records of one snapshot."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.agent.health import HealthMonitor
from vigil.core.drain_budget import DrainBudget, DrainGate, Published, may_drain
from vigil.core.health import DEGRADED, DRAINING, FAILED, READY, Finding, Verdict, incompatible, worst
from vigil.errors import StoreError
from vigil.probes.config import parse_health
from vigil.store.drain_places import DrainPlaces
from vigil.store.keys import Keys
from vigil.testing import MemoryStore
from vigil.testing.clock import FakeClock
from vigil.testing.xid_log import XidLog

XID48_FINDINGS = [Finding(DRAINING, "XID 48 on GPU 0: double-bit ECC error", "reset_gpu")]
XID48 = worst(XID48_FINDINGS)
T0 = 1_800_000_000.0  # the wall clock at the first round


@dataclass
class Record:
    """What the gate reads of a member record (vigil.store.member_record)."""
    verdict: str
    drain_deferred: bool = False
    drain_since: float = math.inf


class Cluster:
    """Every agent's gate and published record; `play` runs rounds one second apart
    in which every node judges its own verdict (a drain if it `wants` one) from the
    records of the round before, as agents reading one snapshot would."""

    def __init__(self, names, domains, budget=DrainBudget(), out=()):
        self.names, self.out, self.now = names, set(out), 0.0
        self.gates = {n: DrainGate(n, budget, domains) for n in names}
        self.records = {n: Record(FAILED if n in out else READY) for n in names}

    def play(self, wants, rounds=5):
        for _ in range(rounds):
            seen = dict(self.records)
            for n in self.names:
                if n not in self.out:
                    self.gates[n].see(seen, self.now)
                    v = self.gates[n].apply(XID48 if n in wants else Verdict(), self.now, T0 + self.now)
                    self.records[n] = Record(v.state, v.deferred, v.deferred_since if v.deferred else math.inf)
            self.now += 1.0
        return self.records


def play(names, wants, domains, budget=DrainBudget(), rounds=5, out=()):
    return Cluster(names, domains, budget, out).play(wants, rounds)


def test_an_xid_storm_drains_a_third_and_the_rest_serve_degraded_saying_why():
    names = [f"n{i}" for i in range(1, 10)]
    records = play(names, set(names), {n: "default" for n in names})
    draining = sorted(n for n, r in records.items() if r.verdict == DRAINING)
    assert draining == ["n1", "n2", "n3"], "int(0.34 x 9) = 3 places, taken in name order"
    assert all(records[n].verdict == DEGRADED and records[n].drain_deferred for n in names[3:])
    gate = DrainGate("n9", DrainBudget(), {n: "default" for n in names})
    gate.see(records, 0.0)
    v = gate.apply(XID48, 0.0, T0)
    assert v.state == DEGRADED and v.deferred and v.to_json()["drain"] == "deferred"
    assert v.reasons[0].startswith("drain deferred by the drain budget (3 at once): 3 member(s) already out")
    assert "n1, n2, n3" in v.reasons[0] and v.reasons[1].startswith("XID 48"), v.reasons
    assert v.actions == XID48.actions, "what the XID asks for (a GPU reset) is still asked"


def test_a_rack_that_runs_warm_drains_one_of_its_nodes_and_other_racks_keep_theirs():
    names = [f"n{i}" for i in range(1, 10)]
    domains = {n: f"rack-{(i - 1) // 3 + 1}" for i, n in enumerate(names, 1)}
    warm = {"n1", "n2", "n3"}
    records = play(names, warm | {"n7"}, domains)
    assert sorted(n for n, r in records.items() if r.verdict == DRAINING) == ["n1", "n7"], \
        "max(1, int(0.34 x 3)) = 1 per rack of 3; rack-3's node drains beside rack-1's"
    assert records["n2"].drain_deferred and records["n3"].drain_deferred


def test_a_place_is_kept_by_its_holder_and_taken_by_the_first_waiting_when_it_frees():
    names = ["n1", "n2", "n3"]
    c = Cluster(names, {n: "default" for n in names})
    c.play({"n2"})
    assert c.records["n2"].verdict == DRAINING
    c.play({"n1", "n2", "n3"})
    assert [c.records[n].verdict for n in names] == [DEGRADED, DRAINING, DEGRADED], \
        "n1 wants one later: n2 keeps its place although n1 comes first by name"
    c.play({"n1", "n3"})  # n2's drain ended
    assert [c.records[n].verdict for n in names] == [DRAINING, READY, DEGRADED], "the first waiting by name"
    c.play({"n3"})
    assert c.records["n3"].verdict == DRAINING and c.records["n1"].verdict == READY


def test_a_drain_says_so_first_and_takes_a_place_only_after_it_settles():
    names = ["n1", "n2", "n3"]
    c = Cluster(names, {n: "default" for n in names})
    assert c.play({"n1"}, rounds=1)["n1"] == Record(DEGRADED, True, T0), "even with the budget empty"
    c.play({"n1"}, rounds=1)
    assert c.records["n1"] == Record(DEGRADED, True, T0), "1 s said: not settled (SETTLE 2 s), since the start"
    c.play({"n1"}, rounds=1)
    assert c.records["n1"] == Record(DRAINING), "said and settled: the place is taken"
    assert may_drain("n1", DrainBudget(), {"n1": Published(DEGRADED, True)}, {"n1": "a"})


def test_failed_and_incompatible_are_never_held_back_and_failed_holds_a_place():
    names = [f"n{i}" for i in range(1, 7)]
    domains = {n: "default" for n in names}
    records = play(names, set(names), domains, out={"n5", "n6"})
    assert [n for n, r in records.items() if r.verdict == DRAINING] == [], \
        "two failed of six fill the int(0.34 x 6) = 2 places"
    gate = DrainGate("n1", DrainBudget(), domains)
    gate.see(records, 0.0)
    off_the_bus = worst([Finding(FAILED, "XID 79 on GPU 0: GPU has fallen off the bus", "fence: XID 79")])
    assert gate.apply(off_the_bus, 0.0, T0) == off_the_bus
    wrong = worst(incompatible(["cuda_driver 12.0 does not satisfy >=12.1"]))
    assert wrong.state == DRAINING and not wrong.deferrable and gate.apply(wrong, 0.0, T0) == wrong
    both = worst([*incompatible(["cuda_driver 12.0 does not satisfy >=12.1"]), *XID48_FINDINGS])
    assert gate.apply(both, 0.0, T0) == both, "one finding that may not wait: the whole drain goes now"


def test_a_budget_of_one_lets_everything_drain():
    names = [f"n{i}" for i in range(1, 6)]
    records = play(names, set(names), {n: "default" for n in names}, DrainBudget(1.0))
    assert all(r.verdict == DRAINING for r in records.values())


def test_a_place_taken_is_kept_while_the_records_catch_up():
    """Granted, the node's own draining record is not in its next snapshot yet, and
    a node first by name says it wants a drain too: the place is not taken back."""
    domains = {n: "default" for n in ("n1", "n2", "n3")}
    gate = DrainGate("n2", DrainBudget(), domains)
    gate.see({"n2": Record(DEGRADED, True, T0)}, 0.0)
    assert gate.apply(XID48, 0.0, T0).state == DEGRADED
    gate.see({"n2": Record(DEGRADED, True, T0)}, 2.0)
    assert gate.apply(XID48, 2.0, T0 + 2).state == DRAINING
    gate.see({"n1": Record(DEGRADED, True, T0 - 5), "n2": Record(DEGRADED, True, T0)}, 2.5)  # still stale
    assert gate.apply(XID48, 2.5, T0 + 2.5).state == DRAINING, "no flip back to degraded"
    assert gate.apply(Verdict(), 3.0, T0 + 3).state == READY and gate.apply(XID48, 3.0, T0 + 3).state == DEGRADED, \
        "a drain that ended gave its place back; a new one waits again"


def test_who_waited_longest_goes_first_not_who_sorts_first():
    domains = {n: "default" for n in ("a1", "z9", "n3")}
    published = {"a1": Published(DEGRADED, True, T0 + 60), "z9": Published(DEGRADED, True, T0)}
    assert may_drain("z9", DrainBudget(), published, domains) and not may_drain("a1", DrainBudget(), published,
                                                                                   domains)


def test_without_a_snapshot_or_a_budget_a_drain_does_not_wait():
    domains = {"n1": "a", "n2": "a", "n3": "a"}
    gate = DrainGate("n1", DrainBudget(), domains)
    gate.see({"n2": Record(DRAINING)}, 0.0)  # the one place is taken
    assert gate.apply(XID48, 1.0, T0).state == DEGRADED
    assert gate.apply(XID48, 10.5, T0 + 10).state == DRAINING, "no snapshot for 10 s (etcd away): own health first"
    open_gate = DrainGate("n1", DrainBudget(1.0), domains)
    open_gate.see({"n2": Record(DRAINING)}, 0.0)
    assert open_gate.apply(XID48, 0.0, T0).state == DRAINING, "a share of 1 is no budget: no wait either"


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 24), st.integers(1, 6), st.floats(0.01, 1.0), st.integers(0, 2**32 - 1))
def test_agents_reading_one_snapshot_never_exceed_the_budget(n, racks, share, seed):
    """Whatever wants a drain, whatever is already out: after any number of rounds
    in which every agent reads the same snapshot, the nodes out number at most
    the room (or those failed, if more), cluster-wide and in every domain."""
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(n)]
    domains = {x: f"rack-{rng.randrange(racks)}" for x in names}
    out = {x for x in names if rng.random() < 0.15}
    budget = DrainBudget(share)
    c = Cluster(names, domains, budget, out)
    for _ in range(3):  # the wanting set changes between plays; the gates and records carry over
        wants = {x for x in names if rng.random() < 0.6}
        records = c.play(wants, rounds=rng.randint(1, 5))
        room, per_domain = budget.rooms(n, domains)
        gone = [x for x, r in records.items() if r.verdict in (DRAINING, FAILED)]
        assert len(gone) <= max(room, len(out))
        for d, limit in per_domain.items():
            assert len([x for x in gone if domains[x] == d]) <= max(limit, len([x for x in out if domains[x] == d]))
        assert all(records[x].verdict == READY for x in names if x not in wants and x not in out)


async def test_the_monitor_publishes_the_deferred_verdict_and_drains_once_a_place_frees():
    events, changes, clock = [], [], FakeClock()
    m = HealthMonitor(parse_health({"gpu": "off", "kernel_log": "off", "drain_budget": 0.34}), clock,
                      lambda kind, cause, **d: events.append((kind, cause)), lambda: changes.append(1),
                      probes=[XidLog()], gate=DrainGate("n3", DrainBudget(0.34), {"n1": "a", "n2": "a", "n3": "a"}))
    m.gate.see({"n1": Record(DRAINING), "n2": Record(READY)}, clock.now())
    await m.round()
    assert m.judged.state == DRAINING and m.verdict.state == DEGRADED
    assert m.describe()["drain"] == "deferred" and m.describe()["verdict"] == DEGRADED
    assert events[-1][0] == "health_verdict" and "drain deferred" in events[-1][1]
    clock.advance(2.0)
    m.see_members({"n1": Record(DRAINING), "n2": Record(READY), "n3": Record(DEGRADED, True)})
    assert m.verdict.state == DEGRADED and len(changes) == 1, "n1 holds the one place"
    m.see_members({"n1": Record(READY), "n2": Record(READY), "n3": Record(DEGRADED, True)})
    assert m.verdict.state == DRAINING and "drain" not in m.describe() and len(changes) == 2
    assert events[-1][0] == "health_verdict" and events[-1][1].startswith("draining: XID 48 on GPU 0")


class Places:
    """The places in etcd as vigil.store.drain_places keeps them: a claim is taken
    only if no other claim came since the claimant read them."""

    def __init__(self):
        self.holders, self.epoch = set(), 0

    def read(self):
        return set(self.holders), self.epoch

    def take(self, node, epoch):
        if epoch != self.epoch:
            return False
        self.holders.add(node)
        self.epoch += 1
        return True


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 18), st.integers(1, 4), st.floats(0.01, 0.6), st.integers(0, 2**32 - 1))
def test_agents_reading_different_snapshots_never_exceed_the_budget_once_places_are_claimed(n, racks, share, seed):
    """Each agent reads its own snapshot: any member's record may be the newest,
    an older one, or not there yet (the race the records alone cannot settle:
    two agents that do not see each other waiting both find the last place
    free). Claims go through the places, read by every wanting agent before
    any of them writes, in any order: the nodes out never outnumber the room,
    cluster-wide or in any domain."""
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(n)]
    domains = {x: f"rack-{rng.randrange(racks)}" for x in names}
    budget, places, now = DrainBudget(share), Places(), 0.0
    gates = {x: DrainGate(x, budget, domains) for x in names}
    for g in gates.values():
        g.claims = True
    history = [{x: Record(READY) for x in names}]
    for _ in range(8):
        views = {x: {y: h[y] for y in names if (h := rng.choice(history[-3:])) and y in h and rng.random() < 0.8}
                 for x in names}
        records = dict(history[-1])
        for x in names:
            gates[x].see({**views[x], x: history[-1][x]}, now)
            v = gates[x].apply(XID48, now, T0 + now)
            records[x] = Record(v.state, v.deferred, v.deferred_since if v.deferred else math.inf)
        readings = {x: places.read() for x in names if gates[x].wants_place}
        for x in rng.sample(sorted(readings), len(readings)):
            holders, epoch = readings[x]
            if gates[x].fits(holders) and places.take(x, epoch):
                gates[x].grant()
                v = gates[x].apply(XID48, now, T0 + now)
                records[x] = Record(v.state, v.deferred, v.deferred_since if v.deferred else math.inf)
        history.append(records)
        now += 1.0
        gone = {x for x, r in records.items() if r.verdict == DRAINING} | places.holders
        room, per_domain = budget.rooms(n, domains)
        assert len(gone) <= room, (gone, room)
        for d, limit in per_domain.items():
            assert len([x for x in gone if domains[x] == d]) <= limit, (d, gone, limit)
    assert places.holders, "someone drains: a storm is not held back forever"


async def test_the_monitor_claims_its_place_in_etcd_and_gives_it_back_when_the_drain_ends():
    clock = FakeClock()
    store = MemoryStore(clock)
    store.start()
    keys = Keys("c")
    lease = (await store.grant(3600)).id  # outlives the XID's hold
    m = HealthMonitor(parse_health({"gpu": "off", "kernel_log": "off", "drain_budget": 0.34}), clock,
                      lambda kind, cause, **d: None, lambda: None, probes=[XidLog()],
                      gate=DrainGate("n3", DrainBudget(0.34), {"n1": "a", "n2": "a", "n3": "a"}))
    m.claim_places(DrainPlaces(store, keys, "n3"), lambda: lease)
    await DrainPlaces(store, keys, "n1").take(0, T0, lease)  # n1 holds the one place; its record lags
    await m.round()
    clock.advance(2.0)
    m.see_members({"n1": Record(READY), "n2": Record(READY), "n3": Record(DEGRADED, True)})
    await _settled(m)
    assert m.verdict.state == DEGRADED, "the records leave room, but n1's claim holds the place"
    await DrainPlaces(store, keys, "n1").give_back()
    m.see_members({"n1": Record(READY), "n2": Record(READY), "n3": Record(DEGRADED, True)})
    await _settled(m)
    assert m.verdict.state == DRAINING and list((await DrainPlaces(store, keys, "n2").read())[0]) == ["n3"]
    m.probes = []  # the XIDs stop and their hold ends: the drain ends and the place is given back
    clock.advance(601.0)
    await m.round()
    await _settled(m)
    assert m.verdict.state == READY and (await DrainPlaces(store, keys, "n2").read())[0] == {}
    await m.stop()
    await store.close()


async def _settled(m):
    await m.place.idle()


async def test_a_node_etcd_refuses_places_to_judges_on_the_records_says_how_to_grant_them_and_tries_again():
    """A cluster whose etcd roles were made before the places existed (a node
    may read the prefix but not write the places): the drain is not held back
    forever, nothing is given back that was never taken, the node says what
    to run, and it tries the places again later."""
    class Refusing(MemoryStore):
        refuse, txns = True, 0

        async def txn(self, expect, puts, deletes=()):
            self.txns += 1
            if self.refuse:
                raise StoreError("etcd: permission denied")
            return await super().txn(expect, puts, deletes)

    clock, events = FakeClock(), []
    store = Refusing(clock)
    store.start()
    lease = (await store.grant(3600)).id
    m = HealthMonitor(parse_health({"gpu": "off", "kernel_log": "off", "drain_budget": 0.34}), clock,
                      lambda kind, cause, **d: events.append((kind, cause)), lambda: None, probes=[XidLog()],
                      gate=DrainGate("n3", DrainBudget(0.34), {"n1": "a", "n2": "a", "n3": "a"}))
    m.claim_places(DrainPlaces(store, Keys("c"), "n3"), lambda: lease)
    await m.round()
    clock.advance(2.0)
    records = {"n1": Record(READY), "n2": Record(READY), "n3": Record(DEGRADED, True)}
    m.see_members(records)
    await _settled(m)
    assert m.verdict.state == DRAINING and store.txns == 1
    for _ in range(5):
        m.see_members(records)
        await _settled(m)
    assert store.txns == 1, "no give-back of a place never taken, no claim until the retry"
    assert [k for k, _ in events].count("drain_places_refused") == 1
    assert "vigil etcd-auth apply" in dict(events)["drain_places_refused"]
    store.refuse = False
    clock.advance(301.0)
    m.see_members(records)
    await _settled(m)
    holders, _ = await DrainPlaces(store, Keys("c"), "n1").read()
    assert list(holders) == ["n3"], "once the roles allow it, the drain holds its claim"
    await m.stop()
    await store.close()


async def test_a_drain_granted_without_a_claim_writes_one_and_moves_it_to_a_new_lease():
    """Already out when it restarted (its record says draining): it drains at
    once, and its claim is written for the others to count; when the session
    is replaced mid-drain the claim moves to the new lease."""
    clock = FakeClock()
    store = MemoryStore(clock)
    store.start()
    leases = [(await store.grant(3600)).id]
    m = HealthMonitor(parse_health({"gpu": "off", "kernel_log": "off", "drain_budget": 0.34}), clock,
                      lambda kind, cause, **d: None, lambda: None, probes=[XidLog()],
                      gate=DrainGate("n3", DrainBudget(0.34), {"n1": "a", "n2": "a", "n3": "a"}))
    m.claim_places(DrainPlaces(store, Keys("c"), "n3"), lambda: leases[-1])
    m.gate.see({"n3": Record(DRAINING)}, clock.now())
    await m.round()
    clock.advance(2.0)
    m.see_members({"n3": Record(DRAINING)})
    await _settled(m)
    assert m.verdict.state == DRAINING
    kv = await store.get(Keys("c").drain_claim("n3"))
    assert kv is not None and kv.lease == leases[0]
    await store.revoke(leases[0])
    leases.append((await store.grant(3600)).id)
    m.see_members({"n3": Record(DRAINING)})
    await _settled(m)
    kv = await store.get(Keys("c").drain_claim("n3"))
    assert kv is not None and kv.lease == leases[1]
    await m.stop()
    await store.close()
