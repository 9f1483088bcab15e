import pytest

from vigil.errors import ConfigError
from vigil.router.config import load_router_config, parse_router_config
from vigil.testing.keys import shared_keys

BASE = {"cluster": "prod", "etcd": {"endpoints": ["http://127.0.0.1:2379"]}, "heartbeat": shared_keys("n1")["ring"]}


def test_defaults():
    c = parse_router_config(BASE)
    assert c.listen_port == 8080 and c.heartbeat_port == 695
    assert c.retry.max_attempts == 3 and c.retry.idempotent_paths == ("/v1/embeddings",)


@pytest.mark.parametrize("over, field", [
    ({"retry": {"max_attempts": 0}}, "retry.max_attempts"),
    ({"retry": {"per_try_timeout": -1}}, "retry.per_try_timeout"),
    ({"retry": {"idempotent_paths": ["v1/x"]}}, "retry.idempotent_paths"),
    ({"retry": {"retries": 3}}, "retry.retries"),
    ({"listen": {"port": 0}}, "listen.port"),
])
def test_bad_router_values(over, field):
    with pytest.raises(ConfigError) as e:
        parse_router_config({**BASE, **over})
    assert e.value.field == field


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_router_config(tmp_path / "missing.yaml")
    assert "cannot be read" in str(e.value)


def test_admission_and_deadlines_are_validated():
    import pytest as _pytest

    from vigil.errors import ConfigError
    from vigil.router.config import parse_router_config
    base = {"cluster": "c", "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
            "heartbeat": shared_keys("n1")["ring"]}
    cfg = parse_router_config({**base, "retry": {"first_byte_timeout": 4, "idle_timeout": 20},
                               "admission": {"initial_limit": 8, "queue_wait": 0.5, "panic_threshold": 0.3}})
    assert cfg.retry.per_try_timeout == 4.0 and cfg.retry.idle_timeout == 20.0
    assert cfg.admission.initial_limit == 8.0 and cfg.admission.panic_threshold == 0.3
    for bad, field in (({"admission": {"panic_threshold": 2}}, "admission.panic_threshold"),
                       ({"admission": {"min_limit": 5, "initial_limit": 2}}, "admission.initial_limit"),
                       ({"admission": {"queue_wait": -1}}, "admission.queue_wait"),
                       ({"admission": {"limit": 3}}, "admission"),
                       ({"retry": {"idle_timeout": "soon"}}, "retry.idle_timeout")):
        with _pytest.raises(ConfigError) as e:
            parse_router_config({**base, **bad})
        assert e.value.field.startswith(field), (bad, e.value.field)


@pytest.mark.parametrize("over, field", [
    ({"limits": {"max_connections": 0}}, "limits.max_connections"),
    ({"limits": {"max_body": 10}}, "limits.max_body"),
    ({"limits": {"client_idle_timeout": -1}}, "limits.client_idle_timeout"),
    ({"limits": {"max_conns": 5}}, "limits.max_conns"),
    ({"listen": {"port": 9000}, "admin": {"port": 9000}}, "admin.port"),
])
def test_limits_and_admin_listener_are_validated(over, field):
    with pytest.raises(ConfigError) as e:
        parse_router_config({**BASE, **over})
    assert e.value.field == field


def test_limits_defaults_and_overrides():
    c = parse_router_config({**BASE, "limits": {"max_body": 1 << 20, "max_inflight": 100}})
    assert c.max_body == 1 << 20 and c.limits.max_inflight == 100 and c.limits.max_connections == 10_000
    assert (c.admin_host, c.admin_port) == ("127.0.0.1", 8081)


def test_aiohttp_has_no_known_request_smuggling_parser_bugs():
    """Issue 9 #6: CVE-2024-52304 (fixed 3.10.11) and CVE-2025-53643 (fixed
    3.12.14) are in aiohttp's HTTP parser; the agent API, the actuator gateway
    and the model server still parse requests with it."""
    import aiohttp
    assert tuple(int(x) for x in aiohttp.__version__.split(".")[:3]) >= (3, 12, 14)
