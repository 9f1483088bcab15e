"""Which engine answers say it ran nothing (vigil.router.attempt.not_ready): a
total reader of untrusted bytes."""

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
