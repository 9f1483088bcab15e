"""The router's request plan on its own (vigil.core.request_plan): each step it
takes, fed the outcomes an attempt or a wait can have, with no IO."""

from hypothesis import given, settings, strategies as st

from vigil.core.admission import Admission
from vigil.core.request_plan import Fail, Queue, RequestPlan, Shed, Try
from vigil.core.routing import RetryPolicy, RoutingTable


def table(*names: str) -> RoutingTable:
    t = RoutingTable()
    for n in names:
        t.member(n, f"http://{n}")
        t.ready(n, True)
        t.heard(n, True)
    return t


def fill(t: RoutingTable, *names: str) -> None:
    """`names` at their limit: no room for another attempt."""
    for n in names:
        b = t.backend(n)
        while b.has_room():
            t.started(b)


def plan(t: RoutingTable, safe: bool = True, queues: bool = True, max_attempts: int = 3,
         tokens: float = 10.0, admit: Admission | None = None) -> RequestPlan:
    return RequestPlan(t, RetryPolicy(max_attempts=max_attempts, tokens=tokens),
                       admit or Admission(queue_wait=2.0), safe, queues)


def test_a_failed_safe_attempt_is_retried_on_another_backend():
    t = table("a", "b")
    p = plan(t)
    first = p.next(0.0, 0)
    assert isinstance(first, Try) and first.attempt == 1
    assert p.failed(0.0, "status", "HTTP 503 busy", 503), "the retry policy spent a retry"
    second = p.next(0.0, 0)
    assert isinstance(second, Try) and second.attempt == 2
    assert second.backend.name != first.backend.name
    assert t.backend(first.backend.name).why_not(0.1).startswith("inhibited"), "the table heard it"


def test_an_unsafe_request_that_may_have_run_is_not_retried():
    t = table("a", "b")
    p = plan(t, safe=False)
    p.next(0.0, 0)
    assert not p.failed(0.0, "reset", "connection reset")
    end = p.next(0.0, 0)
    assert isinstance(end, Fail) and end.code == 502 and end.maybe_ran
    assert end.message.endswith("(not retried: unsafe request)") and "connection reset" in end.message
    assert p.next(0.0, 0) is end, "the plan has ended"


def test_an_unsafe_request_never_received_goes_elsewhere():
    p = plan(table("a", "b"), safe=False)
    first = p.next(0.0, 0)
    assert p.failed(0.0, "connect", "cannot connect")
    second = p.next(0.0, 0)
    assert isinstance(second, Try) and second.backend.name != first.backend.name
    assert not p.maybe_ran


def test_no_first_byte_fails_with_504_and_leaves_the_node_its_traffic():
    t = table("a")
    p = plan(t, safe=False)
    p.next(0.0, 0)
    assert not p.failed(0.0, "first_byte", "no first byte within 3 s")
    end = p.next(0.0, 0)
    assert isinstance(end, Fail) and end.code == 504 and end.maybe_ran
    assert t.backend("a").why_not(0.1) is None, "slow is not hung: no inhibition"


def test_a_5xx_unsafe_fails_with_its_status():
    p = plan(table("a", "b"), safe=False)
    p.next(0.0, 0)
    p.failed(0.0, "status", "HTTP 503 x", 503)
    end = p.next(0.0, 0)
    assert isinstance(end, Fail) and (end.code, end.maybe_ran) == (503, True)


def test_the_attempt_cap_and_the_budget_end_a_safe_request():
    p = plan(table("a", "b", "c"), max_attempts=2)
    p.next(0.0, 0)
    assert p.failed(0.0, "reset", "reset")
    p.next(0.0, 0)
    assert not p.failed(0.0, "reset", "reset")
    end = p.next(0.0, 0)
    assert isinstance(end, Fail) and end.message.endswith("(not retried: retry limit or budget)")
    broke = plan(table("a", "b"), tokens=0.0)  # the request adds 0.2: still below one retry
    broke.next(0.0, 0)
    assert not broke.failed(0.0, "reset", "reset") and isinstance(broke.next(0.0, 0), Fail)


def test_no_eligible_node_is_a_503_that_says_why():
    t = table("a")
    t.ready("a", False)
    end = plan(t).next(0.0, 0)
    assert isinstance(end, Fail) and end.code == 503 and not end.maybe_ran
    assert "a: inference server not ready" in end.message
    assert "no inference node is known yet" in plan(RoutingTable()).next(0.0, 0).message


def test_no_node_left_after_a_failure_names_it_and_keeps_the_unknown_outcome():
    p = plan(table("a"))
    p.next(0.0, 0)
    assert p.failed(0.0, "first_byte", "no first byte within 1 s")
    end = p.next(0.0, 0)
    assert isinstance(end, Fail) and end.code == 503 and end.maybe_ran
    assert "last failure: a: no first byte within 1 s" in end.message


def test_a_full_router_queues_when_a_slot_can_come_and_takes_it():
    t = table("a", "b")
    fill(t, "a", "b")
    p = plan(t)
    step = p.next(0.0, 0)
    assert isinstance(step, Queue) and not step.front and {b.name for b in step.pool} == {"a", "b"}
    p.waited(True)
    again = p.next(0.0, 0)
    assert isinstance(again, Queue) and again.front, "woken for a slot someone took: back to the head"
    t.finished(t.backend("a"))
    p.waited(True)
    step = p.next(0.0, 3)
    assert isinstance(step, Try) and step.backend.name == "a", "admitted before: not behind the newcomers"


def test_a_newcomer_queues_behind_those_waiting_even_with_room():
    p = plan(table("a"))
    assert isinstance(p.next(0.0, 2), Queue)


def test_a_metadata_read_never_queues():
    t = table("a")
    fill(t, "a")
    step = plan(t, queues=False).next(0.0, 5)
    assert isinstance(step, Try) and step.backend.name == "a"


def test_shed_when_the_queue_would_not_drain_in_time():
    t = table("a")
    fill(t, "a")
    step = plan(t, admit=Admission(queue_wait=2.0, max_queue=3)).next(0.0, 3)
    assert isinstance(step, Shed) and step.reason == "queue_full" and not step.maybe_ran
    assert step.message.startswith("router queue full (3 waiting)") and step.retry_after > 0


def test_shed_when_no_slot_came_in_time():
    t = table("a")
    fill(t, "a")
    p = plan(t, admit=Admission(queue_wait=1.5))
    assert isinstance(p.next(0.0, 0), Queue)
    p.waited(False)
    step = p.next(0.0, 0)
    assert isinstance(step, Shed) and step.reason == "queue_timeout"
    assert (step.message, step.retry_after) == ("waited 3 s for a free slot", 1.5)


def test_engines_that_shed_it_send_it_elsewhere_then_shed_it_with_their_reason():
    t = table("a", "b")
    p = plan(t, safe=False)
    first = p.next(0.0, 0)
    assert not p.failed(0.0, "overloaded", "HTTP 429 full", 429), "not a retry: it never ran"
    second = p.next(0.0, 0)
    assert isinstance(second, Try) and second.backend.name != first.backend.name
    p.failed(0.0, "overloaded", "HTTP 429 full", 429)
    end = p.next(0.0, 0)
    assert isinstance(end, Shed) and end.reason == "engine_full" and not end.maybe_ran
    assert end.message == f"{second.backend.name} is full: HTTP 429 full" and end.retry_after >= 0.05
    assert t.backend("a").shed_by_engine == t.backend("b").shed_by_engine == 1


def test_a_shed_request_is_told_the_soonest_retry_any_engine_named():
    for hints in ((3.0, 0.5), (0.5, 3.0)):
        p = plan(table("a", "b"), safe=False)
        for hint in hints:
            p.next(0.0, 0)
            p.failed(0.0, "overloaded", "HTTP 429 full", 429, hint)
        end = p.next(0.0, 0)
        assert isinstance(end, Shed) and end.retry_after == 0.5, hints
    p = plan(table("a"), safe=False)
    p.next(0.0, 0)
    p.failed(0.0, "overloaded", "HTTP 429 full", 429, 1e9)
    assert p.next(0.0, 0).retry_after == 30.0, "an engine's word is bounded"


def test_an_engine_shedding_the_last_allowed_attempt_sheds_the_request():
    p = plan(table("a", "b", "c"), max_attempts=1)
    p.next(0.0, 0)
    p.failed(0.0, "overloaded", "HTTP 429", 429)
    end = p.next(0.0, 0)
    assert isinstance(end, Shed) and end.reason == "engine_full"


KINDS = ["connect", "reset", "status", "first_byte", "ejected", "overloaded", "unready"]
outcome = st.one_of(st.just(None), st.tuples(st.sampled_from(KINDS), st.sampled_from([None, 502, 503, 504])))


@settings(max_examples=300, deadline=None)
@given(names=st.integers(1, 6), max_attempts=st.integers(1, 5), tokens=st.floats(0, 5),
       safe=st.booleans(), queues=st.booleans(), full=st.sets(st.integers(0, 5)),
       outcomes=st.lists(outcome, max_size=12), slots=st.lists(st.booleans(), max_size=6),
       waiting=st.integers(0, 3))
def test_the_plan_never_tries_a_backend_twice_and_ends_within_its_budget(
        names, max_attempts, tokens, safe, queues, full, outcomes, slots, waiting):
    t = table(*(f"n{i}" for i in range(names)))
    fill(t, *(f"n{i}" for i in full if i < names))
    p = plan(t, safe=safe, queues=queues, max_attempts=max_attempts, tokens=tokens)
    tried: list[str] = []
    outcomes, slots = list(outcomes), list(slots)
    for _ in range(max_attempts + 2 * len(slots) + 3):
        step = p.next(0.0, waiting)
        if isinstance(step, Try):
            assert step.backend.name not in tried and step.attempt == len(tried) + 1
            tried.append(step.backend.name)
            result = outcomes.pop(0) if outcomes else None
            if result is None:
                break  # answered: the router relays it
            p.failed(0.0, result[0], "failed", result[1] if result[0] == "status" else None)
        elif isinstance(step, Queue):
            p.waited(slots.pop(0) if slots else False)
        else:
            assert isinstance(step, (Shed, Fail))
            break  # a 429 or an error: the request has ended
    else:
        raise AssertionError("the plan did not end")
    assert len(tried) <= max_attempts


def test_an_unsafe_request_its_engine_refused_as_not_ready_goes_elsewhere():
    p = plan(table("a", "b"), safe=False)
    first = p.next(0.0, 0)
    assert not p.failed(0.0, "unready", "HTTP 503 not ready: loading the model", 503), "no retry spent"
    second = p.next(0.0, 0)
    assert isinstance(second, Try) and second.backend.name != first.backend.name
    assert not p.maybe_ran, "it never ran: a keyed request's key is freed"
    assert t_why(p, first.backend.name).startswith("inhibited"), "the table heard it"
    assert p.table.backend(first.backend.name).refused_not_ready == 1


def test_engines_that_all_say_not_ready_end_it_with_their_503_within_the_attempt_cap():
    p = plan(table("a", "b", "c"), safe=False, max_attempts=2, tokens=0.0)
    p.next(0.0, 0)
    p.failed(0.0, "unready", "HTTP 503 not ready", 503)
    assert isinstance(p.next(0.0, 0), Try), "an empty retry budget does not stop it"
    p.failed(0.0, "unready", "HTTP 503 not ready", 503)
    end = p.next(0.0, 0)
    assert isinstance(end, Fail) and end.code == 503 and not end.maybe_ran and "after 2 attempts" in end.message


def t_why(p, name):
    return p.table.backend(name).why_not(0.1)


def test_a_node_that_turns_ready_again_is_not_kept_out_by_what_it_answered_while_loading():
    t = table("a", "b")
    for _ in range(6):  # a burst of not_ready answers doubles its inhibition to the cap
        p = plan(t, safe=False)
        step = p.next(0.0, 0)
        if step.backend.name == "a":
            p.failed(0.0, "unready", "HTTP 503 not ready", 503)
    t.ready("a", False)
    assert t.ready("a", True)
    assert t.backend("a").why_not(0.1) is None
