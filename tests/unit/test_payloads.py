"""vigil.core.payloads: which long-running work to register, and bad reports."""

from vigil.core.payloads import FOREIGN, Payload, PayloadBook, parse_payloads


def p(pid: str, started: float, progress: int = 0) -> Payload:
    return Payload(pid, "m", "stream", started, progress)


def test_only_work_older_than_min_age_is_registered_and_ended_work_is_removed():
    book = PayloadBook(min_age=1.0, every=2.0)
    assert book.plan([p("a", 100.0)], 100.5, lease=7) == ([], [])
    puts, deletes = book.plan([p("a", 100.0, 5)], 101.0, lease=7)
    assert puts == [p("a", 100.0, 5)] and deletes == []
    book.put(puts[0], 101.0, 50)
    assert book.create_revision("a") == 50
    assert book.plan([p("a", 100.0, 9)], 102.0, lease=7) == ([], []), "progress at most every 2 s"
    assert book.plan([p("a", 100.0, 9)], 103.0, lease=7) == ([p("a", 100.0, 9)], [])
    assert book.plan([], 103.5, lease=7) == ([], ["a"])
    book.deleted("a")
    assert book.written == {}


def test_a_new_lease_writes_everything_again():
    book = PayloadBook(min_age=0.0)
    book.put(p("a", 1.0), 1.0, 3)
    assert book.plan([p("a", 1.0)], 2.0, lease=1) == ([p("a", 1.0)], []), "the old records went with the old lease"


def test_a_record_another_node_holds_is_never_rewritten_or_deleted_here():
    book = PayloadBook(min_age=0.0, every=0.0)
    book.put(p("s", 1.0, 5), 1.0, FOREIGN)  # the create found another node's record: a continued stream
    assert book.plan([p("s", 1.0, 9)], 5.0, lease=0) == ([], []), "its progress is not ours to write"
    assert book.plan([], 6.0, lease=0) == ([], ["s"]) and book.create_revision("s") == FOREIGN, \
        "forgotten here; the publisher deletes only what it created"


def test_malformed_entries_are_left_out_and_counted():
    good = {"id": "cmpl-1", "model": "m", "kind": "stream", "started": 1.5, "tokens": 3}
    got, bad = parse_payloads([good, {"id": "../etc", "model": "m", "kind": "stream", "started": 1},
                               {"id": "x", "model": "m", "kind": "other", "started": 1}, "junk",
                               {**good, "tokens": -1}, {**good, "started": True}])
    assert got == [Payload("cmpl-1", "m", "stream", 1.5, 3)] and bad == 5
    assert parse_payloads(None) == ([], 0) and parse_payloads("x") == ([], 1)
