"""A continuation's replay (vigil.serve.completions._replay): the delivered ids
fed one at a time, in turns of the engine's thread bounded in time, so a short
replay runs whole and a long one yields to the other streams."""

from vigil.serve.completions import _replay


class Decoder:
    def __init__(self, clock: list[float], cost: float):
        self.clock, self.cost, self.fed = clock, cost, []

    def push(self, token: int) -> None:
        self.fed.append(token)
        self.clock[0] += self.cost


def test_a_replay_within_its_turn_runs_whole_in_order():
    clock = [0.0]
    d = Decoder(clock, 0.015)
    assert _replay(d, list(range(40)), 1.0, lambda: clock[0]) == 40 and d.fed == list(range(40))


def test_a_long_replay_yields_after_its_turn_and_goes_on_where_it_stopped():
    clock = [0.0]
    d = Decoder(clock, 0.3)
    ids = list(range(10))
    fed = 0
    turns = []
    while fed < len(ids):
        n = _replay(d, ids[fed:], 1.0, lambda: clock[0])
        turns.append(n)
        fed += n
    assert turns == [4, 4, 2] and d.fed == ids


def test_every_turn_feeds_at_least_one_id():
    clock = [0.0]
    d = Decoder(clock, 5.0)
    assert _replay(d, [7, 8], 1.0, lambda: clock[0]) == 1 and d.fed == [7]
