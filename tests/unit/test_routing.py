from vigil.core.routing import NEVER_HEARD, Backend, RetryPolicy, RoutingTable


def table(*names):
    t = RoutingTable(inhibit_base=1.0, inhibit_max=8.0)
    for n in names:
        t.member(n, f"http://{n}")
        t.ready(n, True)
        t.heard(n, True)
    return t


def load(t, name, n):
    """`name` with `n` attempts in flight (the table's own events)."""
    b = t.backend(name)
    while b.outstanding < n:
        t.started(b)
    while b.outstanding > n:
        t.finished(b)


def test_least_outstanding_wins_and_ties_rotate():
    t = table("a", "b", "c")
    load(t, "a", 2)
    picks = {t.choose(0.0).name for _ in range(6)}
    assert picks == {"b", "c"}
    load(t, "b", 1)
    assert t.choose(0.0).name == "c"


def test_ineligible_reasons():
    t = table("a", "b", "c", "d")
    t.ready("a", False)
    t.heard("b", False)
    t.state("c", "failed")
    assert t.choose(0.0).name == "d"
    t.state("d", "maintenance")
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
    t.ready("a", False)
    t.heard("b", False)
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
    t.member("c", "http://c", weight=0.5)  # its node's verdict is degraded: it serves, less
    assert {t.choose(0).name for _ in range(6)} == {"a", "b"}, "idle ready nodes first"
    load(t, "a", 1)
    load(t, "b", 1)
    picks = {t.choose(0).name for _ in range(6)}
    assert "c" in picks, "with the others busy it takes its share"
    for n in "abc":
        load(t, n, 0)
    assert t.choose(0, exclude=frozenset({"a", "b"})).name == "c", "and it still serves when alone"


def test_a_node_never_heard_or_refused_gets_no_traffic_not_even_in_panic():
    """B5: a member record is a claim; only a heard node at an admitted URL serves."""
    t = RoutingTable(panic_threshold=1.0)  # panics as soon as one node is ineligible
    for n in ("a", "b"):
        t.member(n, f"http://{n}")
        t.ready(n, True)
    assert t.backend("a").why_not(0.0) == NEVER_HEARD
    assert t.choose(0.0) is None and t.eligible(0.0) == [], "a name in etcd alone gets nothing"
    t.heard("a", True)
    assert [b.name for b in t.eligible(0.0)] == ["a"], "panic routes only to nodes not confirmed gone"
    t.refuse("a", "10.9.9.9 is outside the cluster's networks")
    assert t.backend("a").why_not(0.0) == "refused: 10.9.9.9 is outside the cluster's networks"
    assert t.choose(0.0) is None


def test_a_forgotten_backend_is_not_brought_back_by_its_last_attempt():
    t = table("a")
    t.forget("a")
    t.failed("a", 1.0)
    t.succeeded("a", 1.0)
    assert t.backends == {}, "an attempt that ends after its node was forgotten adds nothing"


def test_the_membership_events_say_whether_they_changed_anything():
    t = RoutingTable()
    t.member("a", "http://a")
    assert t.ready("a", True) and not t.ready("a", True)
    assert t.heard("a", True) and not t.heard("a", True)
    assert t.heard("a", False) and t.backend("a").heard, "a suspected node was heard once"
    assert t.state("a", "draining") and not t.state("a", "draining")
    assert t.refuse("a", "outside") and t.refuse("a", "") and not t.refuse("a", "")
    assert t.went("a") and not t.went("a")
    assert t.backend("a").why_not(0.0) == "member record gone (lease expired or revoked)"
    t.member("a", "http://a2")
    assert not t.backend("a").gone and t.backend("a").url == "http://a2"
    assert t.backend("new", state="fenced", heard=True).state == "fenced"
    assert t.backend("new", state="standby").state == "fenced", "only a new backend takes its start"


def test_the_attempt_events_feed_the_backend_they_took():
    t = table("a")
    b = t.backend("a")
    t.started(b)
    t.answered(b, 1.0, 0.2, queue_s=0.0, service_s=0.2, depth=7)
    assert b.outstanding == 1 and b.engine_queue == 7 and b.limit.latency == 0.2
    t.answered(b, 2.0, 0.2)
    assert b.engine_queue == 7, "an answer that says no depth keeps the last report"
    limit = b.limit.limit
    shed = t.engine_shed(b, 3.0, "HTTP 429 busy")
    assert b.limit.limit < limit and b.shed_by_engine == 1
    assert shed.retry_after >= 0.05 and shed.reason == "a is full: HTTP 429 busy"
    t.forget("a")
    t.finished(b)
    assert b.outstanding == 0 and "a" not in t.backends, "a forgotten backend is not brought back"


def test_only_the_table_writes_a_backends_fields():
    """The table is fed events (issue 27 step 2): no module of the router
    assigns a Backend's fields itself."""
    import ast
    import dataclasses
    from pathlib import Path

    import vigil

    fields = {f.name for f in dataclasses.fields(Backend)}
    root = Path(vigil.__file__).parent
    writes = []
    for path in root.glob("router/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (node.targets if isinstance(node, ast.Assign) else
                       [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
            for t in targets:
                for x in t.elts if isinstance(t, ast.Tuple) else [t]:
                    if (isinstance(x, ast.Attribute) and x.attr in fields
                            and not (isinstance(x.value, ast.Name) and x.value.id == "self")):
                        writes.append(f"{path.name}:{node.lineno}: {ast.unparse(x)}")
    assert writes == []
