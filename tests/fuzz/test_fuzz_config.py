"""Fuzz target: configuration files. A node's and a router's configuration,
with any field replaced by any YAML value, and YAML text of any shape, either
load or raise ConfigError naming a field: never another exception."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings, strategies as st

from tests.fuzz.conftest import EXAMPLES
from vigil.config import load_config, parse_config
from vigil.errors import ConfigError
from vigil.router.config import parse_router_config
from vigil.testing.keys import shared_keys

KEYS = shared_keys("n1", "n2")
NODE = {"cluster": "prod", "node": "n1", "priority": 100, "data_dir": "/tmp/vigil-fuzz",
        "api": {"host": "127.0.0.1", "port": 8008},
        "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
        "heartbeat": {**KEYS["n1"], "addresses": ["10.0.0.1"], "port": 694, "max_clock_skew": 2.0,
                      "peers": [{"name": "n2", "addresses": ["10.0.0.2"], "port": 694}],
                      "observers": [{"address": "10.0.0.9", "port": 695}]},
        "timing": {"heartbeat_interval": 0.1, "lease_ttl": 10, "keepalive_interval": 2.5},
        "inference": {"url": "http://127.0.0.1:8000", "command": ["serve"], "canary_interval": 1.0,
                      "load_format": "vigil", "rise": 1},
        "fencing": {"topology": {"n2": [{"type": "ipmi", "host": "10.0.1.2", "user": "admin",
                                         "password": "pw", "timeout": 2}]}, "race_delay": 0.5},
        "controller": {"gateway": "http://127.0.0.1:9", "register": 0, "interval": 0.2},
        "watchdog": {"mode": "off"}}
ROUTER = {"cluster": "prod", "name": "r1", "listen": {"host": "127.0.0.1", "port": 8080},
          "admin": {"port": 8081}, "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
          "heartbeat": {**KEYS["ring"], "port": 695}, "retry": {"max_attempts": 3, "per_try_timeout": 5},
          "admission": {"initial_limit": 4, "queue_wait": 1.0},
          "limits": {"max_connections": 100, "max_body": 4096}}

VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**65, 2**65) | st.floats()
                      | st.text(max_size=30),
                      lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=12), kids,
                                                                                max_size=3),
                      max_leaves=8)


def paths(doc, prefix=()):
    """Every (path) to a value in a nested config document."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for k, v in items:
        out.append(prefix + (k,))
        out += paths(v, prefix + (k,))
    return out


def replaced(doc, path, value):
    d = copy.deepcopy(doc)
    target = d
    for k in path[:-1]:
        target = target[k]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


_DELETE = object()


def check(parse, doc) -> None:
    try:
        parse(doc)
    except ConfigError as e:
        assert e.field and str(e)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(paths(NODE)), VALUES | st.just(_DELETE))
def test_any_field_of_a_node_config_loads_or_is_named(path, value):
    check(parse_config, replaced(NODE, path, value))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(paths(ROUTER)), VALUES | st.just(_DELETE))
def test_any_field_of_a_router_config_loads_or_is_named(path, value):
    check(parse_router_config, replaced(ROUTER, path, value))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=300) | VALUES.map(lambda v: __import__("yaml").safe_dump(v)))
def test_any_yaml_text_loads_or_is_named(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz-node.yaml"
    path.write_text(text)
    check(load_config, path)


def test_the_unfuzzed_documents_load():
    assert parse_config(NODE).node == "n1" and parse_router_config(ROUTER).limits.max_body == 4096
