"""Issue 22 #3: the Idempotency-Key marker parser, 2,000 examples each,
in-process. Whatever a marker key holds (any JSON, a marker with one field
made hostile, text that is not JSON), parse_marker returns a Marker within
its bounds or a BadMarker, never raises; and every marker a router writes
reads back as written."""

from __future__ import annotations

import hashlib
import json
from hypothesis import given, settings, strategies as st

from tests.fuzz.conftest import EXAMPLES
from vigil.store.idem import MAX_HEADERS, MAX_KEPT_BODY, STATES, BadMarker, Marker, encode_marker, parse_marker

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                               max_size=3),
                    max_leaves=8)
HOSTILE = (JSON | st.just(10 ** 400) | st.just(float("nan")) | st.just("x" * 70_000)
           | st.just([["k", "v"]] * (MAX_HEADERS + 1)) | st.lists(st.lists(st.text(max_size=3), max_size=3),
                                                               max_size=3) | st.text(max_size=20))
FIELDS = ("v", "state", "fp", "router", "claimant", "status", "headers", "body", "body_sha256")
GOOD = {"v": 1, "state": "done", "fp": "POST /v1/pay " + "0" * 64, "router": "r1", "claimant": "c1", "status": 200,
        "headers": [["Content-Type", "application/json"]], "body": "e30=", "body_sha256": "1" * 64}

markers = st.builds(
    lambda state, fp, router, claimant, status, headers, body: Marker(
        state, fp, router, claimant, *((status, tuple(headers), body, hashlib.sha256(body).hexdigest())
                                       if state == "done" else ())),
    st.sampled_from(STATES), st.text(max_size=40), st.text(max_size=20), st.text(max_size=16),
    st.integers(100, 599),
    st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=4),
    st.binary(max_size=100) | st.just(b"\xff" * MAX_KEPT_BODY))


def bounded(m: Marker) -> bool:
    return (m.state in STATES and (m.state == "in_flight" or 100 <= m.status <= 599)
            and len(m.headers) <= MAX_HEADERS and (m.body is None or len(m.body) <= MAX_KEPT_BODY))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.one_of(
    st.text(max_size=50),
    JSON.map(json.dumps),
    st.tuples(st.sampled_from(FIELDS), HOSTILE).map(
        lambda fv: json.dumps({**GOOD, fv[0]: fv[1]}, allow_nan=True)),
    st.sampled_from([10, 1000, 100_000]).map(lambda n: "[" * n),
))
def test_any_value_is_a_bounded_marker_or_named_bad(value: str):
    m = parse_marker(value)
    assert isinstance(m, BadMarker) and m.reason or isinstance(m, Marker) and bounded(m)


@settings(max_examples=EXAMPLES, deadline=None)
@given(markers)
def test_every_marker_a_router_writes_reads_back(m: Marker):
    assert parse_marker(encode_marker(m)) == m
