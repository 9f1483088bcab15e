"""Member records as every reader takes them (issue 9 #1): a malformed record
is named and left out, never an exception in a decision loop or a command."""

import json

from hypothesis import given, settings, strategies as st

from vigil.store.base import KeyValue
from vigil.store.keys import Keys
from vigil.store.member_record import MemberRecord, member_problem, parse_member
from vigil.store.registry import parse_snapshot

K = Keys("c")
GOOD = {"name": "n1", "api_url": "http://127.0.0.1:8008", "priority": 100,
        "health": {"verdict": "healthy", "reasons": []}, "suspects": [],
        "inference": {"url": "http://127.0.0.1:8000", "ready": True}}


def kv(key: str, value: str, lease: int = 7) -> KeyValue:
    return KeyValue(key, value, 1, 1, lease=lease)


def test_a_bad_record_is_left_out_and_named():
    kvs = [kv(K.member("n1"), json.dumps(GOOD)),
           kv(K.member("n2"), json.dumps({**GOOD, "priority": "high"})),
           kv(K.member("n3"), json.dumps({**GOOD, "inference": "x"})),
           kv(K.member("n4"), "{not json")]
    snap = parse_snapshot(K, kvs, 9)
    assert list(snap.members) == ["n1"] and snap.member_infos()["n1"].priority == 100
    assert snap.bad_records[K.member("n2")] == "priority 'high' is not an integer from 0 to 1000"
    assert "inference 'x'" in snap.bad_records[K.member("n3")]
    assert "not JSON" in snap.bad_records[K.member("n4")]


def test_records_agents_write_are_good():
    assert member_problem(GOOD) is None
    assert member_problem({"name": "n1"}) is None, "an old agent's sparse record still counts"


@settings(max_examples=2000, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=12))
def test_any_json_is_a_good_record_or_a_named_problem(value):
    snap = parse_snapshot(K, [kv(K.member("n1"), json.dumps(value))], 1)
    if snap.members:
        snap.member_infos()  # a record let through never raises later
    else:
        assert snap.bad_records[K.member("n1")]


def test_a_record_reads_back_as_written_and_keeps_the_contract_keys():
    rec = MemberRecord("n1", "http://127.0.0.1:8008", 150, ("127.0.0.1",), 7946,
                       {"verdict": "degraded", "reasons": ["gpu 0: 4 C margin"], "may_lead": True,
                        "requires": {"gpu_count": ">=1"}}, {"gpu.count": 1},
                       {"url": "http://127.0.0.1:8000", "ready": True}, None, {"n2": ["ipmi"]},
                       ("n3",), 4, 1.5, "0.9", 42)
    assert parse_member("n1", rec.to_json()) == rec
    assert set(json.loads(rec.to_json())) == {
        "name", "api_url", "priority", "heartbeat", "health", "fingerprint", "inference", "router",
        "fences", "suspects", "incarnation", "started_at", "version", "pid"}
    assert rec.verdict == "degraded" and rec.may_lead and rec.requires == {"gpu_count": ">=1"}
    sparse = parse_member("n1", json.dumps({"name": "n1", "health": {"verdict": "healthy"}}))
    assert isinstance(sparse, MemberRecord) and sparse.may_lead, "an issue-9 agent's record still leads"
    assert parse_member("n1", "[1]").problem == "not a JSON object: '[1]'"


def test_etcd_versions_with_the_lease_revocation_bug_are_named():
    from vigil.store.etcd_version import lease_revocation_bug
    for bad in ("3.4.23", "3.5.1", "3.5.10", "3.3.25"):
        assert "etcd #15247" in lease_revocation_bug(bad), bad
    for good in ("3.4.28", "3.5.11", "3.5.17", "3.6.0", "3.6.0-rc.1"):
        assert lease_revocation_bug(good) is None, good
    assert "not MAJOR.MINOR.PATCH" in lease_revocation_bug("banana")


def test_urls_every_reader_takes_apart_or_the_record_is_bad():
    """vigil.router.haproxy renders a server line from each record's URLs (7cf5bfd:
    ValueError from .port on 'http://h:99999', and a host with a space went into
    haproxy.cfg as is)."""
    from vigil.router.haproxy import render
    for bad in ("http://h:99999", "http://[::1", "ftp://h", "http://a b:80", "http://h\nx:1", "http://:80"):
        for rec in ({**GOOD, "api_url": bad}, {**GOOD, "inference": {"url": bad, "ready": True}}):
            assert "is not a URL" in parse_member("n2", json.dumps(rec)).problem, bad
    assert isinstance(parse_member("n1", json.dumps({**GOOD, "api_url": "https://[::1]:8008/x"})), MemberRecord)
    good = parse_member("n1", json.dumps(GOOD))
    assert "server n1 127.0.0.1:8000 check port 8008" in render("c", {"n1": good}, "/run/s", "127.0.0.1:80")


def test_etcd_ids_and_revisions_at_their_full_width_are_good_values():
    """etcd's lease ids and revisions are int64: a lease id has 19 digits as often as not,
    and an event or payload record that carries one is a record an agent wrote."""
    from vigil.core.records import decode_json
    from vigil.store.records import parse_event

    lease = 2**63 - 1
    event = json.dumps({"at": 1.7e9, "node": "n1", "kind": "session_opened", "cause": "c",
                        "lease": lease, "ttl": 2})
    assert parse_event(K.event("1"), event)["lease"] == lease
    assert decode_json("k", str(1 - 2**63)) == 1 - 2**63
    assert "out of range" in decode_json("k", str(2**63)).problem
    assert "digits" in decode_json("k", "1" + "0" * 400).problem
