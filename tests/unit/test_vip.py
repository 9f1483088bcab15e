"""The VIP's kernel lease (core.vip) and its configuration."""

import pytest

from vigil.config import parse_config
from vigil.core.vip import KERNEL_LAG, gone_by, lifetime
from vigil.errors import ConfigError
from vigil.testing.keys import shared_keys


@pytest.mark.parametrize("left, seconds", [(1.6, 1), (1.5, 1), (1.49, None), (8.0, 7), (0.0, None),
                                           (-3.0, None)])
def test_lifetime_ends_before_the_deadline(left, seconds):
    assert lifetime(100.0, 100.0 + left) == seconds
    if seconds:
        assert gone_by(100.0, seconds) <= 100.0 + left, "the address is gone by the deadline"


def test_the_bound_holds_for_any_refresh_time():
    for i in range(1000):
        now, deadline = i * 0.013, i * 0.013 + 0.5 + i * 0.01
        s = lifetime(now, deadline)
        assert s is None or (s >= 1 and now + s + KERNEL_LAG <= deadline)


def base(**over):
    return {"cluster": "c", "node": "n1", "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
            "heartbeat": shared_keys("n1")["n1"], **over}


def test_vips_parse_and_name_mistakes():
    cfg = parse_config(base(vips=[{"address": "10.0.0.100/24", "interface": "eth0"}]))
    v = cfg.vips[0]
    assert (v.address, v.prefixlen, v.interface, v.announce_count) == ("10.0.0.100", 24, "eth0", 3)
    for bad, field in (([{"address": "10.0.0.300/24", "interface": "eth0"}], "vips[0].address"),
                       ([{"address": "10.0.0.1/24"}], "vips[0].interface"),
                       ([{"address": "10.0.0.1/24", "interface": "eth0", "announce_count": 0}],
                        "vips[0].announce_count"),
                       ("10.0.0.1/24", "vips"),
                       ([{"address": "10.0.0.1/24", "interface": "a"}, {"address": "10.0.0.1/16",
                                                                        "interface": "b"}], "vips")):
        with pytest.raises(ConfigError) as e:
            parse_config(base(vips=bad))
        assert e.value.field == field
