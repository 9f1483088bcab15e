"""Typed node configuration: one YAML file per node, validated on load.

Every problem raises ConfigError naming the field, the value and the fix;
`vigil agent` turns it into exit status 2 before anything starts. Defaults
are documented in docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from vigil.core.topology import DEFAULT_DOMAIN, TopologySettings
from vigil.core.timing import WATCHDOG_MODES, WATCHDOG_REQUIRED, Timing, fitting_timeout, validate_timing
from vigil.errors import ConfigError, VigilError
from vigil.etcd_config import EtcdConfig, parse_etcd
from vigil.fields import (check_address, check_addresses, check_int, check_mapping, check_name,
                          check_port)
from vigil.stonith.config import FencingConfig, parse_fencing
from vigil.files import check_secret, read_yaml
from vigil.probes.config import HealthConfig, parse_health
from vigil.realtime import RealtimeSettings, problems as realtime_problems
from vigil.heartbeat_keys import HeartbeatKeys, parse_heartbeat_keys, ring_covers
from vigil.resources.signed import gateway_name
from vigil.resources.vip import VipConfig, parse_vips

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_PORT = 694  # the Linux-HA heartbeat port


@dataclass(frozen=True)
class Peer:
    name: str
    addresses: tuple[str, ...]
    port: int
    failure_domain: str = DEFAULT_DOMAIN  # its rack, power feed or NVLink domain


@dataclass(frozen=True)
class Observer:
    """A router (or monitor) that receives this node's heartbeats but sends none."""

    address: str
    port: int


@dataclass(frozen=True)
class InferenceConfig:
    """The node's inference server: started and restarted by the agent when
    `command` is set, otherwise only watched at `url` (e.g. a user's vLLM)."""

    url: str
    command: tuple[str, ...] = ()
    user: str | None = None  # run `command` as this user (never as root, when set)
    canary_path: str = "/v1/embeddings"
    canary_body: str = '{"input": "vigil canary"}'
    canary_interval: float = 1.0
    canary_timeout: float = 2.0
    rise: int = 1
    fall: int = 2
    # Busy is not hung (vigil.core.engine): the engine's own progress report.
    load_format: str = "vigil"  # vigil (GET /v2/load JSON) | vllm (Prometheus /metrics) | none
    load_path: str = "/v2/load"
    load_interval: float = 0.2
    silence_window: float = 1.0  # load probe unanswered this long: hung
    stall_window: float = 10.0  # work pending, nothing completed this long: hung
    batch_jobs: bool = True  # take a share of batch jobs (vigil.agent.jobs)


@dataclass(frozen=True)
class WatchdogConfig:
    mode: str = "automatic"  # off | automatic | required (vigil.agent.watchdog)
    device: str = "/dev/watchdog"
    timeout: int | None = None  # whole seconds; None when none fits the timing


@dataclass(frozen=True)
class NodeConfig:
    cluster: str
    node: str
    etcd: EtcdConfig
    keys: HeartbeatKeys
    addresses: tuple[str, ...] = ("127.0.0.1",)
    heartbeat_port: int = DEFAULT_HEARTBEAT_PORT
    peers: tuple[Peer, ...] = ()
    observers: tuple[Observer, ...] = ()
    priority: int = 100
    api_host: str = "127.0.0.1"
    api_port: int = 8008
    api_tls: tuple[str, str] | None = None  # (cert_file, key_file): serve the API over https
    api_tokens: dict[str, str] | None = field(default=None, repr=False)  # name -> bearer token
    data_dir: str = "/var/lib/vigil"
    timing: Timing = field(default_factory=Timing)
    log_level: str = "info"
    inference: InferenceConfig | None = None
    fencing: FencingConfig | None = None
    controller: dict[str, Any] | None = None  # {gateway, register, interval}: the leader's actuator
    watchdog: WatchdogConfig = field(default_factory=lambda: WatchdogConfig())
    vips: tuple[VipConfig, ...] = ()  # held by the leader (vigil.agent.vips)
    router_config: str | None = None  # the node's router, run and restarted by the agent
    health: HealthConfig = field(default_factory=HealthConfig)  # probes, policy, requirements
    failure_domain: str = DEFAULT_DOMAIN  # this node's rack, power feed or NVLink domain
    topology: TopologySettings = field(default_factory=TopologySettings)  # who watches whom
    # The heartbeat thread's scheduling (vigil.realtime); None: heartbeats on the agent's loop.
    realtime: RealtimeSettings | None = None

    def domains(self) -> dict[str, str]:
        """Every configured member's failure domain, this node's included."""
        return {self.node: self.failure_domain, **{p.name: p.failure_domain for p in self.peers}}

    @property
    def api_url(self) -> str:
        return f"{'https' if self.api_tls else 'http'}://{self.api_host}:{self.api_port}"


_TOP = {"cluster", "node", "failure_domain", "priority", "data_dir", "api", "etcd", "heartbeat", "timing", "log_level",
        "inference", "fencing", "controller", "watchdog", "vips", "router", "health"}


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate one node's YAML file. Raises ConfigError."""
    return parse_config(read_yaml(path), base_dir=Path(path).parent)


def parse_config(raw: Any, base_dir: Path = Path(".")) -> NodeConfig:
    d = check_mapping(raw, "(top level)", _TOP)
    cluster = check_name(d, "cluster")
    node = check_name(d, "node")
    api = check_mapping(d.get("api", {}), "api", {"host", "port", "cert_file", "key_file", "tokens_file"})
    hb = check_mapping(d.get("heartbeat"), "heartbeat", {"addresses", "port", "key", "key_file", "peers",
                                                    "observers", "signing_key_file", "keyring_file",
                                                    "max_clock_skew", "topology", "realtime"})
    peers = _peers(hb.get("peers", []), node)
    keys = parse_heartbeat_keys(hb, base_dir, node)
    ring_covers(keys, [p.name for p in peers])
    timing = _timing(d.get("timing", {}))
    level = str(d.get("log_level", "info")).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level", level, "use one of debug, info, warning, error")
    etcd = parse_etcd(d.get("etcd"), base_dir)
    if etcd.user is not None and etcd.user != node:
        raise ConfigError("etcd.user", etcd.user, f"an agent's etcd user is its node name ({node}): only "
                          f"that user holds the role that may write members/{node} "
                          "(`vigil etcd-auth init` makes one per node)")
    return NodeConfig(
        cluster=cluster, node=node, etcd=etcd, keys=keys,
        addresses=check_addresses(hb.get("addresses", ["127.0.0.1"]), "heartbeat.addresses"),
        heartbeat_port=check_port(hb.get("port", DEFAULT_HEARTBEAT_PORT), "heartbeat.port"),
        peers=peers, observers=_observers(hb.get("observers", [])), priority=check_int(d.get("priority", 100), "priority", 0, 1000),
        api_host=check_address(api.get("host", "127.0.0.1"), "api.host"),
        api_port=check_port(api.get("port", 8008), "api.port"), **_api_security(api, base_dir),
        data_dir=str(d.get("data_dir", "/var/lib/vigil")), timing=timing, log_level=level,
        inference=_inference(d.get("inference")), fencing=parse_fencing(d.get("fencing"), base_dir),
        controller=_controller(d.get("controller")), watchdog=_watchdog(d.get("watchdog"), timing),
        vips=parse_vips(d.get("vips", [])), router_config=_router(d.get("router"), base_dir),
        health=parse_health(d.get("health")), failure_domain=_domain(d, "failure_domain"),
        topology=_topology(hb.get("topology", {})), realtime=_realtime(hb.get("realtime")))


def _router(v: Any, base: Path) -> str | None:
    """`router: {config: FILE}`: the agent runs `vigil router --config FILE` (checked at start)."""
    path = None if v is None else check_mapping(v, "router", {"config"}).get("config")
    if v is not None and not (isinstance(path, str) and (base / path).is_file()):
        raise ConfigError("router.config", path, "must name the router's YAML file (see `vigil router`)")
    return str((base / path).resolve()) if v is not None else None


def _api_security(api: dict[str, Any], base: Path, where: str = "api") -> dict[str, Any]:
    """TLS for an HTTP API (both files or neither) and its bearer tokens."""
    from vigil.web import load_tokens

    if ("cert_file" in api) != ("key_file" in api):
        raise ConfigError(f"{where}.cert_file", api.get("cert_file"), f"give both {where}.cert_file and "
                                                                      f"{where}.key_file (https), or neither")
    tls = (str(base / str(api["cert_file"])), str(base / str(api["key_file"]))) if "cert_file" in api else None
    for f in tls or ():
        if not Path(f).is_file():
            raise ConfigError(f"{where}.cert_file", f, "file not found; make one with `vigil certs issue`")
    if tls:
        check_secret(tls[1], f"{where}.key_file")
    tokens = load_tokens(str(base / str(api["tokens_file"])), f"{where}.tokens_file") \
        if "tokens_file" in api else None
    for warning in exposure_warnings(str(api.get("host", "127.0.0.1")), tokens is not None, tls is not None, where):
        log.warning("%s", warning)
    return {"api_tls": tls, "api_tokens": tokens}


def exposure_warnings(host: str, tokens: bool, tls: bool, where: str) -> list[str]:
    """What an operator should know about an HTTP API listening on `host`: tokens in
    cleartext, or no tokens at all, on an address other hosts can reach."""
    if _loopback(host):
        return []
    if not tokens:
        return [f"{where}.host is {host} and {where}.tokens_file is not set: anyone who can reach it may "
                f"use every endpoint (drain, maintenance, switchover); give {where}.tokens_file"]
    if not tls:
        return [f"{where}.tokens_file without {where}.cert_file: bearer tokens cross the network to {host} "
                f"in cleartext; give {where}.cert_file and {where}.key_file (`vigil certs issue`)"]
    return []


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _peers(v: Any, me: str) -> tuple[Peer, ...]:
    if not isinstance(v, list):
        raise ConfigError("heartbeat.peers", v, "must be a list of {name, addresses, port}")
    out, seen = [], set()
    for i, p in enumerate(v):
        where = f"heartbeat.peers[{i}]"
        p = check_mapping(p, where, {"name", "addresses", "port", "failure_domain"})
        name = check_name(p, "name", f"{where}.name")
        if name == me or name in seen:
            raise ConfigError(f"{where}.name", name, "must be unique and differ from this node's name")
        seen.add(name)
        out.append(Peer(name, check_addresses(p.get("addresses"), f"{where}.addresses"),
                        check_port(p.get("port", DEFAULT_HEARTBEAT_PORT), f"{where}.port"),
                        _domain(p, "failure_domain", f"{where}.failure_domain")))
    return tuple(out)


def _domain(d: dict[str, Any], key: str, where: str | None = None) -> str:
    return check_name(d, key, where) if key in d else DEFAULT_DOMAIN


def _topology(v: Any) -> TopologySettings:
    """heartbeat.topology: the same on every member, or they disagree on who
    watches whom (`vigil plan --check` compares them)."""
    d = check_mapping(v, "heartbeat.topology", {"observers", "agreement", "full_mesh_up_to",
                                                 "domain_mesh_up_to", "observer_every"})
    for k, x in d.items():
        check_int(x, f"heartbeat.topology.{k}", 1, 1000)
    t = TopologySettings(**d)
    for name, value, fix in t.problems():
        raise ConfigError(f"heartbeat.topology.{name}", value, fix)
    return t


def _realtime(v: Any) -> RealtimeSettings | None:
    """heartbeat.realtime: {priority, lock_memory}; absent: no heartbeat thread."""
    if v is None:
        return None
    d = check_mapping(v, "heartbeat.realtime", {"priority", "lock_memory"})
    s = RealtimeSettings(**d)
    for name, value, fix in realtime_problems(s.priority, s.lock_memory):
        raise ConfigError(f"heartbeat.realtime.{name}", value, fix)
    return s


def _observers(v: Any) -> tuple[Observer, ...]:
    if not isinstance(v, list):
        raise ConfigError("heartbeat.observers", v, "must be a list of {address, port} (routers)")
    out = []
    for i, o in enumerate(v):
        o = check_mapping(o, f"heartbeat.observers[{i}]", {"address", "port"})
        out.append(Observer(check_address(o.get("address"), f"heartbeat.observers[{i}].address"),
                            check_port(o.get("port"), f"heartbeat.observers[{i}].port")))
    return tuple(out)


def _timing(v: Any) -> Timing:
    names = {f.name for f in fields(Timing)}
    d = check_mapping(v, "timing", names)
    values: dict[str, Any] = {}
    for k, x in d.items():
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ConfigError(f"timing.{k}", x, "must be a number of seconds")
        values[k] = x
    t = Timing(**values)
    problems = validate_timing(t)
    if problems:
        p = problems[0]
        raise ConfigError(p.field, p.value, p.fix)
    return t


def _inference(v: Any) -> InferenceConfig | None:
    if v is None:
        return None
    d = check_mapping(v, "inference", {"url", "command", "user", "canary_path", "canary_body", "canary_interval",
                                  "canary_timeout", "rise", "fall", "load_format", "load_path",
                                  "load_interval", "silence_window", "stall_window", "batch_jobs"})
    u = urlparse(str(d.get("url", "")))
    if u.scheme not in ("http", "https") or not u.hostname or u.port is None:
        raise ConfigError("inference.url", d.get("url"), "must be http(s)://HOST:PORT of the inference server")
    cmd = d.get("command", [])
    if isinstance(cmd, str) or not isinstance(cmd, list) or not all(isinstance(c, str) for c in cmd):
        raise ConfigError("inference.command", cmd, "must be a list of strings (argv), or left out "
                                                    "to watch a server someone else runs")
    numbers = {}
    for k, lo, hi in (("canary_interval", 0.05, 3600), ("canary_timeout", 0.05, 600),
                      ("load_interval", 0.02, 60), ("silence_window", 0.1, 600),
                      ("stall_window", 0.5, 3600)):
        x = d.get(k, getattr(InferenceConfig, k))
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not lo <= x <= hi:
            raise ConfigError(f"inference.{k}", x, f"must be a number of seconds from {lo} to {hi}")
        numbers[k] = float(x)
    if numbers["silence_window"] <= numbers["load_interval"]:
        raise ConfigError("inference.silence_window", numbers["silence_window"],
                          "must be longer than inference.load_interval, or one late answer "
                          "would call a busy engine hung")
    fmt = d.get("load_format", InferenceConfig.load_format)
    if fmt not in ("vigil", "vllm", "none"):
        raise ConfigError("inference.load_format", fmt, "must be vigil (GET /v2/load), vllm "
                                                        "(Prometheus /metrics) or none (canaries only)")
    lp = d.get("load_path", "/metrics" if fmt == "vllm" else InferenceConfig.load_path)
    if not isinstance(lp, str) or not lp.startswith("/"):
        raise ConfigError("inference.load_path", lp, "must be a path such as /v2/load")
    for k in ("rise", "fall"):
        numbers[k] = check_int(d.get(k, getattr(InferenceConfig, k)), f"inference.{k}", 1, 100)
    jobs = d.get("batch_jobs", True)
    if not isinstance(jobs, bool):
        raise ConfigError("inference.batch_jobs", jobs, "must be true (this node takes batch jobs) or false")
    body = d.get("canary_body", InferenceConfig.canary_body)
    if not isinstance(body, str):
        import json
        body = json.dumps(body)
    return InferenceConfig(str(d["url"]).rstrip("/"), tuple(cmd), _user(d.get("user")),
                           str(d.get("canary_path", InferenceConfig.canary_path)), body,
                           load_format=fmt, load_path=lp, batch_jobs=jobs, **numbers)


def _user(v: Any) -> str | None:
    if v is None:
        return None
    import pwd

    try:
        pw = pwd.getpwnam(str(v))
    except KeyError:
        raise ConfigError("inference.user", v, "no such user on this machine: create it (`useradd "
                          "--system vigil-inference`) or name an existing one") from None
    if pw.pw_uid == 0:
        raise ConfigError("inference.user", v, "is root: name an unprivileged user, or leave "
                                                "inference.user out")
    return str(v)


def _controller(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    d = check_mapping(v, "controller", {"gateway", "register", "interval"})
    if not str(d.get("gateway", "")).startswith(("http://", "https://")):
        raise ConfigError("controller.gateway", d.get("gateway"), "must be the actuator gateway's URL")
    try:
        gateway_name(str(d["gateway"]))  # commands are signed for it (vigil.resources.signed)
    except VigilError as e:
        raise ConfigError("controller.gateway", d["gateway"], f"must be the actuator gateway's URL: {e}") from None
    interval = d.get("interval", 0.2)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0.01 <= interval <= 60:
        raise ConfigError("controller.interval", interval, "must be 0.01..60 seconds")
    return {"gateway": str(d["gateway"]).rstrip("/"),
            "register": check_int(d.get("register", 0), "controller.register", 0, 65535),
            "interval": float(interval)}


def _watchdog(v: Any, t: Timing) -> WatchdogConfig:
    d = check_mapping({} if v is None else v, "watchdog", {"mode", "device", "timeout"})
    mode = d.get("mode", "automatic")
    if mode is False:  # YAML reads a bare `off` as false
        mode = "off"
    if mode not in WATCHDOG_MODES:
        raise ConfigError("watchdog.mode", mode, f"must be one of {', '.join(WATCHDOG_MODES)}")
    fits = fitting_timeout(t.demote_after, t.lease_ttl, t.etcd_timeout)
    timeout = d.get("timeout", fits)
    if "timeout" in d:
        timeout = check_int(timeout, "watchdog.timeout", 1, 3600)
        if not t.demote_after < timeout <= t.lease_ttl - t.etcd_timeout:
            raise ConfigError("watchdog.timeout", timeout,
                              f"must be above timing.demote_after ({t.demote_after:g}) and at most "
                              f"timing.lease_ttl - timing.etcd_timeout ({t.lease_ttl - t.etcd_timeout:g})")
    elif fits is None and mode == WATCHDOG_REQUIRED:
        raise ConfigError("watchdog.mode", mode, "no whole-second watchdog timeout fits between "
                          f"timing.demote_after ({t.demote_after:g}) and timing.lease_ttl - "
                          f"timing.etcd_timeout ({t.lease_ttl - t.etcd_timeout:g}): lengthen "
                          "lease_ttl or shorten demote_after")
    device = d.get("device", "/dev/watchdog")
    if not isinstance(device, str) or not device.startswith("/"):
        raise ConfigError("watchdog.device", device, "must be an absolute path such as /dev/watchdog")
    return WatchdogConfig(mode, device, timeout)
