from vigil.core.routing import NEVER_HEARD, Backend, RetryPolicy, RoutingTable


def table(*names):
    t = RoutingTable(inhibit_base=1.0, inhibit_max=8.0)
    for n in names:
        b = t.backend(n)
        b.url, b.ready, b.heard = f"http://{n}", True, True
    return t


def test_least_outstanding_wins_and_ties_rotate():
    t = table("a", "b", "c")
    t.backend("a").outstanding = 2
    picks = {t.choose(0.0).name for _ in range(6)}
    assert picks == {"b", "c"}
    t.backend("b").outstanding = 1
    assert t.choose(0.0).name == "c"


def test_ineligible_reasons():
    t = table("a", "b", "c", "d")
    t.backend("a").ready = False
    t.backend("b").alive = False
    t.backend("c").state = "failed"
    assert t.choose(0.0).name == "d"
    t.backend("d").state = "maintenance"
    assert t.choose(0.0) is None
    reason = t.none_reason(0.0)
    assert "a: inference server not ready" in reason and "b: node suspected" in reason
    assert "c: node is failed" in reason and "d: node is maintenance" in reason


def test_failure_inhibits_with_backoff_and_success_clears():
    t = table("a", "b")
    t.failed("a", 10.0)
    assert t.choose(10.5, frozenset()).name == "b"
    assert t.backend("a").why_not(10.5).startswith("inhibited")
    t.failed("a", 11.0)
    t.failed("a", 11.0)
    assert t.backend("a").inhibit_for == 4.0
    t.succeeded("a")
    assert t.backend("a").why_not(11.0) is None


def test_panic_guard_ignores_inhibition_only():
    t = table("a", "b")
    t.failed("a", 0.0)
    t.failed("b", 0.0)
    assert t.choose(0.1) is not None, "inhibition alone never empties the pool"
    t.backend("a").ready = False
    t.backend("b").alive = False
    assert t.choose(0.1) is None


def test_exclude_tried_backends():
    t = table("a", "b")
    assert t.choose(0.0, frozenset({"a"})).name == "b"
    assert t.choose(0.0, frozenset({"a", "b"})) is None


def test_retry_rules():
    p = RetryPolicy(max_attempts=3, budget_ratio=0.5, tokens=2)
    assert p.safe("GET", "/x", {}) and p.safe("POST", "/v1/embeddings", {})
    assert not p.safe("POST", "/v1/chat/completions", {})
    assert not p.safe("POST", "/v1/chat/completions", {"Idempotency-Key": "k1"}), \
        "a key makes a request at most once, not safe to run twice (issue 9 #2)"
    assert not p.may_retry(1, safe=False, status=None)
    assert not p.may_retry(1, safe=True, status=400), "4xx is never retried"
    assert not p.may_retry(1, safe=True, status=500)
    assert p.may_retry(1, safe=True, status=503)
    assert p.may_retry(2, safe=True, status=None)
    assert not p.may_retry(3, safe=True, status=None), "attempt cap"
    assert not p.may_retry(1, safe=True, status=None), "budget spent"
    assert p.denied == 1
    for _ in range(2):
        p.request_started()
    assert p.may_retry(1, safe=True, status=502), "requests refill the budget"


def test_backend_defaults_are_not_eligible_without_url():
    assert Backend("x").why_not(0.0) == "no inference server"


def test_a_degraded_node_gets_work_only_once_the_others_are_busier():
    t = table("a", "b", "c")
    t.backends["c"].weight = 0.5  # its node's verdict is degraded: it serves, less
    assert {t.choose(0).name for _ in range(6)} == {"a", "b"}, "idle ready nodes first"
    t.backends["a"].outstanding = t.backends["b"].outstanding = 1
    picks = {t.choose(0).name for _ in range(6)}
    assert "c" in picks, "with the others busy it takes its share"
    t.backends["a"].outstanding = t.backends["b"].outstanding = 0
    t.backends["c"].outstanding = 0
    assert t.choose(0, exclude=frozenset({"a", "b"})).name == "c", "and it still serves when alone"


def test_a_node_never_heard_or_refused_gets_no_traffic_not_even_in_panic():
    """B5: a member record is a claim; only a heard node at an admitted URL serves."""
    t = RoutingTable(panic_threshold=1.0)  # panics as soon as one node is ineligible
    for n in ("a", "b"):
        t.backend(n).url, t.backend(n).ready = f"http://{n}", True
    assert t.backend("a").why_not(0.0) == NEVER_HEARD
    assert t.choose(0.0) is None and t.eligible(0.0) == [], "a name in etcd alone gets nothing"
    t.backend("a").heard = True
    assert [b.name for b in t.eligible(0.0)] == ["a"], "panic routes only to nodes not confirmed gone"
    t.backend("a").refused = "10.9.9.9 is outside the cluster's networks"
    assert t.backend("a").why_not(0.0) == "refused: 10.9.9.9 is outside the cluster's networks"
    assert t.choose(0.0) is None


def test_a_forgotten_backend_is_not_brought_back_by_its_last_attempt():
    t = table("a")
    t.forget("a")
    t.failed("a", 1.0)
    t.succeeded("a", 1.0)
    assert t.backends == {}, "an attempt that ends after its node was forgotten adds nothing"
