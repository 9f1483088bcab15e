"""Bearer tokens (vigil.web.bearer_holder), shared by the agent API and the
router's admin listener: any header value is a yes with a name or a no."""

from vigil.web import bearer_holder

TOKENS = {"operator": "a" * 32, "prometheus": "b" * 32}


def test_the_right_token_names_its_holder_and_anything_else_is_refused():
    assert bearer_holder("Bearer " + "b" * 32, TOKENS) == "prometheus"
    for given in (None, "", "a" * 32, "Bearer " + "a" * 31, "bearer " + "a" * 32,
                  "Bearer \udcff" + "a" * 31, "Bearer \xff"):  # undecodable: was a 500 in aiohttp
        assert bearer_holder(given, TOKENS) is None, given
