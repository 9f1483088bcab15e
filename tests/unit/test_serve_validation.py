import pytest

from vigil.serve.server import MAX_INPUTS, BadRequest, parse_embedding_request


@pytest.mark.parametrize("body, param", [
    ([1, 2], None),
    ({}, "input"),
    ({"input": 5}, "input"),
    ({"input": ["ok", 3]}, "input"),
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["x"] * (MAX_INPUTS + 1)}, "input"),
    ({"input": "x" * 40000}, "input"),
    ({"input": "x", "model": "gpt-4"}, "model"),
    ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"input": "x", "dimensions": 12}, "dimensions"),
])
def test_bad_requests_name_the_parameter(body, param):
    with pytest.raises(BadRequest) as e:
        parse_embedding_request(body)
    assert e.value.param == param and str(e.value)


def test_good_requests():
    assert parse_embedding_request({"input": "hi"}) == (["hi"], "float")
    assert parse_embedding_request({"input": ["a", "b"], "encoding_format": "base64",
                                    "model": "sentence-transformers/all-MiniLM-L6-v2"}) == (["a", "b"], "base64")
