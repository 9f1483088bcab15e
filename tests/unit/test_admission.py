"""Adaptive concurrency limits, the router's queue admission and the panic
threshold (vigil.core.admission, vigil.core.routing)."""

from vigil.core.admission import Admission, NodeLimit, RetryPacer
from vigil.core.routing import RoutingTable
from vigil.router.attempt import retry_hint


def single_thread_engine(limit: NodeLimit, service: float, rounds: int) -> float:
    """An engine that works one request at a time: with L in flight, each waits
    (L - 1) services. Returns the limit it settles at."""
    now = 0.0
    for _ in range(rounds):
        inflight = limit.slots
        queue = (inflight - 1) * service
        now += service
        limit.sample(now, queue + service, queue, service)
    return limit.limit


def test_limit_settles_where_the_engine_queue_is_within_tolerance():
    lim = NodeLimit(limit=20.0, tolerance=2.0)
    settled = single_thread_engine(lim, 0.3, 400)
    assert 2.0 <= settled <= 4.5, settled


def test_limit_grows_for_an_engine_that_batches():
    lim = NodeLimit(limit=4.0, max_limit=64.0)
    now = 0.0
    for _ in range(2000):
        now += 0.05
        lim.sample(now, 0.05, 0.0, 0.05)  # no queueing however many are in flight
    assert lim.limit > 50


def test_without_engine_report_latency_against_its_lowest_is_the_signal():
    lim = NodeLimit(limit=10.0, tolerance=1.0)
    now = 0.0
    for _ in range(50):
        now += 1
        lim.sample(now, 0.1)
    grown = lim.limit
    for _ in range(50):
        now += 1
        lim.sample(now, 0.5)  # 5x the lowest: congested
    assert lim.limit < grown / 2


def test_engine_shedding_cuts_at_once_and_never_below_min():
    lim = NodeLimit(limit=10.0, min_limit=2.0)
    for i in range(20):
        lim.overloaded(float(i))
    assert lim.limit == 2.0 and lim.slots == 2


def test_queue_admits_what_drains_within_the_wait_and_sheds_the_rest():
    a = Admission(queue_wait=2.0)
    # 6 slots, 0.6 s each: 10 req/s drain; 19 waiting + this one = 2.0 s
    assert a.may_wait(19, 6, 0.6) is None
    shed = a.may_wait(20, 6, 0.6)
    assert shed is not None and 2.0 < shed.retry_after < 2.2 and "6 slots" in shed.reason
    assert a.may_wait(5, 6, 0.6, ) is None and a.shed == 1
    assert Admission(max_queue=3).may_wait(3, 100, 0.001).reason.startswith("router queue full")


def table(n: int, threshold: float) -> RoutingTable:
    t = RoutingTable(panic_threshold=threshold)
    for i in range(n):
        t.member(f"n{i}", f"http://n{i}")
        t.ready(f"n{i}", True)
        t.heard(f"n{i}", True)  # heartbeats heard: routable (B5)
    return t


def test_panic_routes_to_every_node_not_confirmed_gone():
    t = table(4, 0.5)
    for name in ("n0", "n1", "n2"):
        t.ready(name, False)  # e.g. every agent wrongly calling its engine hung
    pool = t.eligible(0.0)
    assert t.panicking and {b.name for b in pool} == {"n0", "n1", "n2", "n3"}
    t.heard("n0", False)  # suspected by the router's own detector: gone
    t.state("n1", "fenced")
    t.went("n2")
    assert {b.name for b in t.eligible(0.0)} == {"n3"}
    assert not t.panicking


def test_no_panic_above_the_threshold_and_full_nodes_stay_eligible():
    t = table(3, 0.5)
    t.ready("n0", False)
    assert {b.name for b in t.eligible(0.0)} == {"n1", "n2"} and not t.panicking
    for name in ("n1", "n2"):
        b = t.backend(name)
        for _ in range(b.limit.slots):
            t.started(b)
    assert t.choose(0.0) is None, "every eligible node is at its limit"
    assert len(t.eligible(0.0)) == 2, "load never makes a node ineligible"
    assert t.backend("n1").why_not(0.0) is None


def test_an_unused_limit_does_not_grow():
    lim = NodeLimit(limit=4.0)
    for i in range(500):  # a quiet hour: one request at a time, answered fast
        lim.sample(float(i), 0.3, 0.0, 0.3, inflight=1)
    assert lim.limit == 4.0


def test_a_connection_back_before_its_retry_after_is_held_until_then_within_bounds():
    p = RetryPacer(max_hold=5.0, max_held=2)
    assert p.hold(retry_at=0.0, now=10.0) == 0.0, "never told to wait: served at once"
    assert p.hold(retry_at=9.0, now=10.0) == 0.0, "came back after its Retry-After: polite"
    assert p.hold(retry_at=11.5, now=10.0) == 1.5
    assert p.hold(retry_at=100.0, now=10.0) == 5.0, "at most max_hold"
    assert p.hold(retry_at=11.0, now=10.0) == 0.0, "max_held held already: answered at once"
    assert (p.held, p.paced) == (2, 2)
    p.released()
    assert p.hold(retry_at=11.0, now=10.0) == 1.0 and p.held == 2


def test_a_retry_hint_is_read_from_any_header_within_bounds():
    assert retry_hint([("retry-after-ms", "1500"), ("Retry-After", "2")]) == 1.5
    assert retry_hint([("Retry-After", "2")]) == 2.0
    assert retry_hint([("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")]) is None
    for hostile in ("nan", "inf", "-5", "1e400", "", "0x10", "١٢"):
        got = retry_hint([("retry-after-ms", hostile)])
        assert got is None or 0.0 <= got <= 60.0, (hostile, got)
    assert retry_hint([]) is None
