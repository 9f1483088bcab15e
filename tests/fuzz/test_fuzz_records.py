"""Issue 22 #1 (review B1, A2, A4): every etcd record parser, 2,000 examples
each, in-process (every example goes to every family's parser). Whatever a key holds (bytes that are not UTF-8, any JSON,
400-digit integers, NaN, 1e999, nesting 100,000 deep, 300 KB strings, a valid
record with one field made hostile, a key whose tail is not a name), each
family's parser returns its typed record or a BadRecord naming the key and
the problem, never raises, and every number it lets through is finite and in
range."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from hypothesis import given, settings, strategies as st

from tests.fuzz.conftest import EXAMPLES
from vigil.core.compat import differences, mismatches
from vigil.core.jobs import JobRecordError, JobSpec, Progress, parse_chunk, parse_progress
from vigil.core.payloads import Payload, parse_payloads
from vigil.core.records import BULK, CLUSTER, BadRecord, decode_json
from vigil.router.haproxy import render
from vigil.store.idem import Marker, encode_marker
from vigil.store.keys import Keys
from vigil.store.member_record import MemberRecord
from vigil.store.records import FAMILIES, family_of, parse_record

K = Keys("fz")
HUGE = 10 ** 400
SPEC = JobSpec("j", "m", 10, 4, 3, 2, 1.0, "op", "0" * 64)

# A record of each family as Vigil writes it, and the key it is written under.
SAMPLES: dict[str, tuple[str, Any]] = {
    "leader": (K.leader, "n1"),
    "members": (K.member("n1"), json.loads(MemberRecord(
        "n1", "http://127.0.0.1:8008", 150, ("127.0.0.1",), 7946, {"verdict": "healthy", "reasons": [],
                                                                   "may_lead": True}, {"gpu.count": 1},
        {"url": "http://127.0.0.1:8000", "ready": True}, None, {"n2": ["ipmi"]}, ("n3",), 4, 1.5e9, "0.9",
        42).to_json())),
    "state": (K.state("n1"), "standby"),
    "fencing": (K.fence_marker("n2"), {"reason": "fencing in progress by n1", "state": "in_progress",
                                       "by": "n1", "at": 1.7e9}),
    "held": (K.hold("n2"), {"until": 1.7e9, "why": "flapping: 3 failures in 600 s"}),
    "switchover": (K.switchover, {"to": "n2", "by": "operator"}),
    "drain": (K.drain_claim("n2"), {"since": 1.7e9}),
    "drain epoch": (K.drain_epoch, {"by": "n2"}),
    "payloads": (K.payload("job:j:1"), {**Payload("job:j:1", "m", "job", 1.7e9, 12).record("n1"), "total": 6}),
    "events": (K.event("000661edd17274c3-n1-1"), {"at": 1.7e9, "node": "n1", "kind": "state_changed",
                                                  "cause": "n1 is now active", "id": "000661edd17274c3-n1-1"}),
    "config": (K.config, {}),
    "job spec": (K.job_spec("j"), json.loads(SPEC.record())),
    "job progress": (K.job_progress("j", 1), json.loads(Progress("running", 1, 3, 4, 1, "n1", 1.7e9).record())),
    "job input": (K.job_input("j", 0), ["a", "b", "c", "d"]),
    "job result": (K.job_result("j", 0), {"chunk": 0, "node": "n1", "claim": 7, "at": 1.7e9,
                                          "inputs_sha256": "0" * 64, "vectors": ["AACAPw=="] * 4}),
    "idempotency": (K.idem_marker("ab" * 32), json.loads(encode_marker(Marker(
        "done", "f" * 64, "router", status=200, headers=(("content-type", "application/json"),), body=b'{"ok": true}')))),
}


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# -- hostile values ------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers() | st.sampled_from([HUGE, -HUGE, 2 ** 63, 10 ** 18])
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2))
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=10)


def deep(n: int, kind: int) -> str:
    return ("[" * n + "]" * n, '{"a":' * n + "1" + "}" * n, "[" * n)[kind]


@st.composite
def mutated(draw, value: Any) -> str:
    """`value` with one field (at any depth) replaced by a hostile JSON value, or removed."""
    if isinstance(value, (dict, list)) and value:
        value = json.loads(json.dumps(value))
        node = value
        while True:
            keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
            at = draw(st.sampled_from(keys))
            child = node[at]
            if isinstance(child, (dict, list)) and child and draw(st.booleans()):
                node = child
                continue
            if isinstance(node, dict) and draw(st.integers(0, 5)) == 0:
                del node[at]
            else:
                node[at] = draw(JSON | st.sampled_from([HUGE, "x" * 20_000, [[[[[[]]]]]]]))
            break
    return json.dumps(value)  # NaN and Infinity as Python writes them


GENERIC = st.one_of(
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),  # as EtcdStore decodes
    JSON.map(json.dumps),
    st.tuples(st.integers(1, 100_000), st.integers(0, 2)).map(lambda t: deep(*t)),
    st.integers(0, 40_000).map(lambda n: json.dumps("x" * n)),  # across the 16 KiB string bound
    st.sampled_from(["1" + "0" * 400, "NaN", "-Infinity", "1e999", '{"a": 1e400}', "", " ", "\x00",
                     json.dumps(["x" * 300_000])]),
)


def hostile(value: Any) -> st.SearchStrategy[str]:
    """Anything, or `value` (a record as Vigil writes it) as is or with one field made hostile."""
    return st.one_of(GENERIC, mutated(value), st.just(text_of(value)))


# -- checks -----------------------------------------------------------------------------

def bounded(v: Any, depth: int = 0) -> bool:
    """Every number anywhere in `v` finite and below 2**63 in magnitude."""
    assert depth < 64, "a record let through nests too deep"
    if isinstance(v, bool) or v is None or isinstance(v, (str, bytes)):
        return True
    if isinstance(v, (int, float)):
        return (isinstance(v, int) or math.isfinite(v)) and abs(v) < 2 ** 63
    if dataclasses.is_dataclass(v):
        return all(bounded(getattr(v, f.name), depth + 1) for f in dataclasses.fields(v))
    if isinstance(v, dict):
        return all(bounded(k, depth + 1) and bounded(x, depth + 1) for k, x in v.items())
    if isinstance(v, (list, tuple, frozenset, set)):
        return all(bounded(x, depth + 1) for x in v)
    raise AssertionError(f"unexpected {type(v).__name__} in a record")


def check(key: str, out: Any, typed: type) -> None:
    if isinstance(out, BadRecord):
        assert out.key == key and isinstance(out.problem, str) and out.problem
        assert len(out.problem) < 2000, "a problem line stays short"
    else:
        assert isinstance(out, typed), (key, out)
        assert bounded(out)
        if isinstance(out, MemberRecord):  # what every reader asks of a record let through
            (out.verdict, out.reasons, out.may_lead, out.inference_url, out.to_json())
            mismatches(out.fingerprint, out.requires), differences({out.name: out.fingerprint})
            render("fz", {out.name: out}, "/run/haproxy.sock", "127.0.0.1:80")


TYPED = {f.name: type(f.parse(SAMPLES[f.name][0], text_of(SAMPLES[f.name][1]))) for f in FAMILIES}
EXACT = (K.leader, K.switchover, K.config)


@settings(max_examples=EXAMPLES, deadline=None)
@given(text=GENERIC, name=st.sampled_from(sorted(SAMPLES)), data=st.data(), tail=st.none() | st.text(max_size=70))
def test_every_family_parser_is_total(text, name, data, tail):
    """Each example goes to every family's parser (so each parser takes 2,000): a
    hostile text, and one family's valid record with one field made hostile (or
    as is), under the family's key or one whose tail is any text."""
    own = data.draw(hostile(SAMPLES[name][1]), label=f"{name} record")
    for f in FAMILIES:
        assert TYPED[f.name] is not BadRecord, f"the {f.name} sample as Vigil writes it parses"
        key = SAMPLES[f.name][0]
        if tail is not None and key not in EXACT:
            key = key.rsplit("/", 1)[0] + "/" + tail
        for t in (text, own):
            check(key, f.parse(key, t), TYPED[f.name])
            if family_of(K, key) is f:
                check(key, parse_record(K, key, t), TYPED[f.name])
    for limits in (CLUSTER, BULK):
        out = decode_json("k", text, limits)
        assert isinstance(out, BadRecord) or (bounded(out) and len(text) <= limits.max_bytes)


@settings(max_examples=EXAMPLES, deadline=None)
@given(text=hostile(json.loads(Progress("running", 4, 6, 4, 1, "n1", 1.0).record())) | hostile(["a", "b"]),
       shard=st.integers(-2, 3) | st.just(HUGE))
def test_job_records_against_their_spec_raise_only_a_job_record_error(text, shard):
    for parse in (lambda: parse_progress(text, "k", SPEC, shard), lambda: parse_chunk(text, "k", SPEC, shard)):
        try:
            out = parse()
        except JobRecordError as e:
            assert str(e).startswith("k: ")
        else:
            assert bounded(out)


@settings(max_examples=EXAMPLES, deadline=None)
@given(report=st.lists(SCALARS | st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "job:j:1", "../x", ""]), "model": st.text(max_size=3), "kind": st.just("stream"),
     "started": SCALARS, "tokens": SCALARS}), max_size=4) | JSON)
def test_a_load_reports_payloads_are_taken_within_bounds(report):
    """The model server's load report is decoded by aiohttp without our hooks:
    a 400-digit `started` must be refused here, not raise in float()."""
    good, bad = parse_payloads(report)
    assert all(bounded(p) for p in good) and bad >= 0
