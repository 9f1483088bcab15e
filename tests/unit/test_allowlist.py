"""Issue 9: backend URLs learnt from etcd are checked before the router sends
anything there (a record naming cloud metadata gets no traffic)."""

import pytest

from vigil.core.allowlist import BackendAllowlist
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


def test_default_allows_ordinary_addresses_and_names():
    a = BackendAllowlist()
    assert a.problem("http://10.0.0.5:8000") is None and a.problem("http://gpu-07:8000") is None
    assert a.problem("http://127.0.0.1:8000") is None


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
