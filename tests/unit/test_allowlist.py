"""Issue 9: backend URLs learnt from etcd are checked before the router sends
anything there (a record naming cloud metadata gets no traffic)."""

import pytest

from vigil.core.allowlist import BackendAllowlist, ClusterNetworks
from vigil.errors import ConfigError
from vigil.router.config import parse_router_config
from vigil.testing.keys import shared_keys


@pytest.mark.parametrize("url, words", [
    ("http://169.254.169.254:80", "link-local"),
    ("http://[fe80::1]:80", "link-local"),
    ("http://0.0.0.0:80", "unspecified"),
    ("https://10.0.0.5:8000", "not http://HOST:PORT"),
    ("http://10.0.0.5", "not http://HOST:PORT"),
    ("http://user:pw@10.0.0.5:8000", "not http://HOST:PORT"),
    ("file:///etc/passwd", "not http://HOST:PORT"),
    ("http://[::1:8000", "not a URL"),
])
def test_default_refuses_metadata_and_odd_urls(url, words):
    assert words in BackendAllowlist().problem(url)


def test_default_admits_only_the_networks_heartbeats_come_from():
    """B5: without backends.allow, a URL must name an address in the /24 (/64)
    of a heard member's heartbeat source; an outside host or a name is refused."""
    a, cluster = BackendAllowlist(), ClusterNetworks()
    assert a.problem("http://10.0.0.5:8000") is None, "an address is fine on its own"
    assert "no heartbeat heard yet" in a.outside("http://10.0.0.5:8000", cluster)
    assert cluster.heard("n1", "10.0.0.1") and not cluster.heard("n1", "10.0.0.1")
    assert not cluster.heard("n2", "10.0.0.2"), "the same network again adds nothing"
    assert a.outside("http://10.0.0.5:8000", cluster) is None
    outside = a.outside("http://203.0.113.7:443", cluster)
    assert "203.0.113.7 is outside the cluster's networks (10.0.0.0/24)" in outside
    assert "backends.allow" in outside, "the refusal names the fix"
    assert "host name 'evil.example'" in a.problem("http://evil.example:80")
    assert "backends.allow" in a.problem("http://evil.example:80")
    cluster.heard("n3", "fd00::3")
    assert a.outside("http://[fd00::99]:8000", cluster) is None, "IPv6: the /64"
    assert not cluster.forget("n1"), "n2 still vouches for 10.0.0.0/24"
    assert cluster.forget("n2") and a.outside("http://10.0.0.5:8000", cluster) is not None
    cluster.heard("lab", "127.0.0.1")
    assert a.outside("http://127.0.0.1:8000", cluster) is None, "loopback for a lab on one machine"


def test_an_explicit_allowlist_decides_alone():
    a = BackendAllowlist(["198.51.100.0/24"])
    assert a.outside("http://198.51.100.9:80", ClusterNetworks()) is None


def test_an_allowlist_admits_only_its_networks_and_names():
    a = BackendAllowlist(["10.0.0.0/24", "gpu-07.example", "fd00::/8"])
    assert a.problem("http://10.0.0.9:8000") is None and a.problem("http://[fd00::5]:8000") is None
    assert a.problem("http://GPU-07.example:8000") is None
    assert "not in backends.allow" in a.problem("http://10.0.1.9:8000")
    assert "not in backends.allow" in a.problem("http://gpu-08.example:8000")
    assert "not in backends.allow" in a.problem("http://169.254.169.254:80")


def test_router_config_names_a_bad_entry():
    base = {"cluster": "c", "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
            "heartbeat": shared_keys("n1")["ring"]}
    assert parse_router_config({**base, "backends": {"allow": ["10.0.0.0/8"]}}).backends.restricted
    for bad in (["10.0.0.0/8", "a b"], "10.0.0.0/8", [5]):
        with pytest.raises(ConfigError) as e:
            parse_router_config({**base, "backends": {"allow": bad}})
        assert e.value.field == "backends.allow"


def test_etcd_only_membership_needs_an_explicit_allowlist():
    base = {"cluster": "c", "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
            "heartbeat": shared_keys("n1")["ring"]}
    assert parse_router_config(base).membership == "heard"
    with pytest.raises(ConfigError) as e:
        parse_router_config({**base, "membership": "etcd_only"})
    assert e.value.field == "membership" and "backends.allow" in str(e.value)
    cfg = parse_router_config({**base, "membership": "etcd_only", "backends": {"allow": ["10.0.0.0/24"]}})
    assert cfg.membership == "etcd_only"
    with pytest.raises(ConfigError) as e:
        parse_router_config({**base, "membership": "etcd"})
    assert "etcd_only" in str(e.value) and "heard" in str(e.value)
