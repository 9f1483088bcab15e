import threading

import pytest
from hypothesis import given, strategies as st

from vigil.errors import VigilError
from vigil.resources.guard import StaleToken, TokenGuard


def test_lower_token_rejected_equal_and_higher_accepted():
    g = TokenGuard()
    g.admit(5)
    g.admit(5)
    g.admit(9)
    with pytest.raises(StaleToken) as e:
        g.admit(5)
    assert e.value.highest == 9 and "deposed leader" in str(e.value)
    assert g.rejected == 1


def test_state_survives_restart_and_corruption_is_loud(tmp_path):
    f = tmp_path / "token"
    TokenGuard(f).admit(42)
    g = TokenGuard(f)
    assert g.highest == 42
    with pytest.raises(StaleToken):
        g.admit(41)
    f.write_text("garbage")
    with pytest.raises(VigilError, match="corrupt"):
        TokenGuard(f)


@pytest.mark.parametrize("bad", [0, -3, "7", True, None])
def test_invalid_tokens_are_refused(bad):
    with pytest.raises(VigilError):
        TokenGuard().admit(bad)


@given(st.lists(st.integers(1, 50), max_size=60))
def test_admitted_tokens_never_decrease(tokens):
    g = TokenGuard()
    admitted = []
    for t in tokens:
        try:
            g.admit(t)
            admitted.append(t)
        except StaleToken:
            assert t < max(admitted)
    assert admitted == sorted(admitted)


def test_concurrent_admits_keep_the_maximum(tmp_path):
    g = TokenGuard(tmp_path / "t")
    threads = [threading.Thread(target=lambda t=t: _try(g, t)) for t in range(1, 200)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert g.highest == 199 and TokenGuard(tmp_path / "t").highest == 199


def _try(g, t):
    try:
        g.admit(t)
    except StaleToken:
        pass


def test_the_state_is_written_under_an_unpredictable_name_and_leaves_nothing_behind(tmp_path):
    """Issue 9 #7: a fixed `.tmp` name could be planted (a symlink) by anyone who can write there."""
    from vigil.resources.guard import TokenGuard
    state = tmp_path / "actuator.token"
    planted = tmp_path / "actuator.tmp"
    planted.symlink_to(tmp_path / "victim")
    g = TokenGuard(state)
    g.admit(7)
    assert state.read_text() == "7" and not (tmp_path / "victim").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["actuator.tmp", "actuator.token"]
    assert TokenGuard(state).highest == 7
