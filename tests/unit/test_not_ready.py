"""Which engine answers say it ran nothing (vigil.router.attempt.not_ready), and
which client bodies plan a stream (vigil.router.resume.plan_stream): total readers
of untrusted bytes."""

import json

from hypothesis import given, strategies as st

from vigil.router.attempt import not_ready


def test_only_an_error_whose_code_is_not_ready_says_so():
    assert not_ready(b'{"error": {"message": "not ready: loading the model", "code": "not_ready"}}')
    for body in (b'{"error": {"code": "internal"}}', b'{"error": "not_ready"}', b'["not_ready"]', b"not_ready",
                 b'{"code": "not_ready"}', b"", b"\xff\xfe", b'{"error": {"code": "not_ready"}' + b" " * 5000):
        assert not not_ready(body), body


@given(st.one_of(st.binary(max_size=300), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["error", "code", "x"]), inner,
                                                               max_size=3)).map(lambda v: json.dumps(v).encode())))
def test_no_body_makes_it_raise(body):
    assert not_ready(body) in (True, False)


def test_a_deeply_nested_body_is_not_one_and_does_not_raise():
    assert not not_ready(b"[" * 4000)
    assert not not_ready(b'{"error": {"code": "not_ready", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}}")


def test_a_client_body_nested_past_the_parser_is_no_stream_plan_and_does_not_raise():
    from vigil.router.http1 import Incoming
    from vigil.router.resume import plan_stream
    for body in (b"[" * 4000, b'{"stream": true, "x": ' + b"[" * 3000 + b"]" * 3000 + b"}", b"\xff"):
        assert plan_stream(Incoming("POST", "/v1/completions", [], body, True), True) is None
