"""The router's YAML configuration, validated like a node's (field, value, fix)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vigil.config import _api_security, _timing
from vigil.etcd_config import EtcdConfig, parse_etcd
from vigil.heartbeat_keys import HeartbeatKeys, parse_heartbeat_keys
from vigil.core.allowlist import BackendAllowlist
from vigil.core.timing import Timing
from vigil.errors import ConfigError
from vigil.router.tracing import TracingConfig, parse_tracing
from vigil.fields import check_address, check_int, check_mapping, check_name, check_port
from vigil.files import read_yaml


@dataclass(frozen=True)
class RetryConfig:
    """Per-attempt deadlines fit inference: on the time to the first byte of
    the answer and on silence between chunks, never on total duration (a 60 s
    generation that keeps producing passes)."""

    max_attempts: int = 3
    per_try_timeout: float = 10.0  # first byte: headers and the first body chunk
    idle_timeout: float = 30.0  # silence between two chunks of an answer
    connect_timeout: float = 0.5
    budget_ratio: float = 0.2
    idempotent_paths: tuple[str, ...] = ("/v1/embeddings",)
    idempotency_window: float = 600.0
    # A streamed generation whose node dies, hangs or is ejected mid-stream is
    # continued on another node from the token ids already delivered
    # (vigil.router.resume), at most `max_resumes` times per stream.
    resume_streams: bool = True
    max_resumes: int = 2
    # The cluster's continuation key (retry.continue_key_file): continuations are signed
    # with it, and model servers given it honour no other (vigil.router.continue_sign).
    continue_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AdmissionConfig:
    """Adaptive per-node concurrency limits and the router's queue (vigil.core.admission)."""

    initial_limit: float = 4.0
    min_limit: float = 1.0
    max_limit: float = 256.0
    tolerance: float = 2.0
    queue_wait: float = 2.0
    max_queue: int = 1024
    panic_threshold: float = 0.5


@dataclass(frozen=True)
class LimitsConfig:
    """What one router holds at most (HAProxy's maxconn, nginx's client
    timeouts): past a cap the client is told (503 for a connection, 429 for
    a request), never left hanging."""

    max_connections: int = 10_000
    max_inflight: int = 4096  # requests being handled, queued ones included
    max_body: int = 16 * 1024 * 1024  # bytes; larger requests get 413
    client_idle_timeout: float = 75.0  # an idle keep-alive client connection closes (nginx)
    client_header_timeout: float = 60.0  # one request's line and headers must arrive in this, in total
    client_body_rate: float = 4096.0  # bytes/s a body must average once client_header_timeout passed
    max_pipeline: int = 16  # requests queued on one connection; past it the client is not read
    upstream_idle_per_backend: int = 64  # idle keep-alive connections kept per backend


@dataclass(frozen=True)
class RouterConfig:
    cluster: str
    etcd: EtcdConfig
    keys: HeartbeatKeys
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    heartbeat_address: str = "127.0.0.1"
    heartbeat_port: int = 695
    name: str = "router"
    timing: Timing = field(default_factory=Timing)
    retry: RetryConfig = field(default_factory=RetryConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    backends: BackendAllowlist = field(default_factory=BackendAllowlist)
    # "heard": route only to key-ring members the router has heard at least once;
    # "etcd_only": member records alone (a setup whose agents do not list the router
    # among their observers), which then needs an explicit backends.allow.
    membership: str = "heard"
    admin_host: str = "127.0.0.1"  # /metrics and /_vigil/status: never on the public listener
    admin_port: int = 8081
    admin_tls: tuple[str, str] | None = None  # (cert_file, key_file): https
    admin_tokens: dict[str, str] | None = field(default=None, repr=False)  # name -> bearer token
    tracing: TracingConfig | None = None  # OpenTelemetry spans of the request path (vigil.router.tracing)

    @property
    def max_body(self) -> int:
        return self.limits.max_body


def load_router_config(path: str | Path) -> RouterConfig:
    """Read and validate the router's YAML file. Raises ConfigError."""
    return parse_router_config(read_yaml(path), Path(path).parent)


def parse_router_config(raw: Any, base_dir: Path = Path(".")) -> RouterConfig:
    d = check_mapping(raw, "(top level)", {"cluster", "name", "listen", "etcd", "heartbeat", "timing", "retry",
                                      "admission", "limits", "admin", "backends", "membership", "tracing"})
    listen = check_mapping(d.get("listen", {}), "listen", {"host", "port"})
    admin = check_mapping(d.get("admin", {}), "admin", {"host", "port", "cert_file", "key_file", "tokens_file"})
    hb = check_mapping(d.get("heartbeat"), "heartbeat", {"address", "port", "key", "key_file", "keyring_file",
                                                    "max_clock_skew"})
    cfg = RouterConfig(
        cluster=check_name(d, "cluster"), etcd=parse_etcd(d.get("etcd"), base_dir), keys=parse_heartbeat_keys(hb, base_dir, None),
        listen_host=check_address(listen.get("host", "127.0.0.1"), "listen.host"),
        listen_port=check_port(listen.get("port", 8080), "listen.port"),
        heartbeat_address=check_address(hb.get("address", "127.0.0.1"), "heartbeat.address"),
        heartbeat_port=check_port(hb.get("port", 695), "heartbeat.port"),
        name=str(d.get("name", "router")), timing=_timing(d.get("timing", {})),
        retry=_retry(d.get("retry", {}), base_dir), admission=_admission(d.get("admission", {})),
        limits=_limits(d.get("limits", {})), backends=_backends(d.get("backends", {})),
        admin_host=check_address(admin.get("host", "127.0.0.1"), "admin.host"),
        admin_port=check_port(admin.get("port", 8081), "admin.port"),
        membership=_membership(d.get("membership", "heard"), d.get("backends") or {}),
        tracing=parse_tracing(d.get("tracing")),
        **{f"admin_{k[4:]}": v for k, v in _api_security(admin, base_dir, "admin").items()})
    if cfg.admin_port == cfg.listen_port:
        raise ConfigError("admin.port", cfg.admin_port, "must differ from listen.port: the admin "
                          "endpoints (/metrics, /_vigil/status) never share the public listener")
    return cfg


def _retry(v: Any, base: Path = Path(".")) -> RetryConfig:
    d = check_mapping(v, "retry", {"max_attempts", "per_try_timeout", "first_byte_timeout", "idle_timeout",
                              "connect_timeout", "budget_ratio", "idempotent_paths", "idempotency_window",
                              "resume_streams", "max_resumes", "continue_key_file"})
    if "first_byte_timeout" in d:  # the clearer name; per_try_timeout stays accepted
        d = {**d, "per_try_timeout": d.pop("first_byte_timeout")}
    values: dict[str, Any] = {}
    if "max_attempts" in d:
        values["max_attempts"] = check_int(d["max_attempts"], "retry.max_attempts", 1, 10)
    if "max_resumes" in d:
        values["max_resumes"] = check_int(d["max_resumes"], "retry.max_resumes", 0, 10)
    if "resume_streams" in d:
        if not isinstance(d["resume_streams"], bool):
            raise ConfigError("retry.resume_streams", d["resume_streams"], "must be true or false")
        values["resume_streams"] = d["resume_streams"]
    for k, hi in (("per_try_timeout", 3600), ("idle_timeout", 3600), ("connect_timeout", 60),
                  ("budget_ratio", 1), ("idempotency_window", 86400)):
        if k in d:
            values[k] = _number(d[k], f"retry.{k}", 0, hi)
    if "idempotent_paths" in d:
        paths = d["idempotent_paths"]
        if not isinstance(paths, list) or not all(isinstance(x, str) and x.startswith("/") for x in paths):
            raise ConfigError("retry.idempotent_paths", paths, "must be a list of paths like /v1/embeddings")
        values["idempotent_paths"] = tuple(paths)
    if "continue_key_file" in d:
        from vigil.router.continue_sign import load_key
        values["continue_key"] = load_key(base / str(d["continue_key_file"]), "retry.continue_key_file")
    return RetryConfig(**values)


def _admission(v: Any) -> AdmissionConfig:
    d = check_mapping(v, "admission", {"initial_limit", "min_limit", "max_limit", "tolerance", "queue_wait",
                                  "max_queue", "panic_threshold"})
    values: dict[str, Any] = {}
    for k, hi in (("initial_limit", 100_000), ("min_limit", 100_000), ("max_limit", 100_000),
                  ("tolerance", 1000), ("queue_wait", 3600)):
        if k in d:
            values[k] = _number(d[k], f"admission.{k}", 0, hi)
    if "max_queue" in d:
        values["max_queue"] = check_int(d["max_queue"], "admission.max_queue", 0, 1_000_000)
    if "panic_threshold" in d:
        x = d["panic_threshold"]
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= 1:
            raise ConfigError("admission.panic_threshold", x, "must be a share from 0 (never panic) to 1")
        values["panic_threshold"] = float(x)
    a = AdmissionConfig(**values)
    if not a.min_limit <= a.initial_limit <= a.max_limit or a.min_limit < 1:
        raise ConfigError("admission.initial_limit", a.initial_limit,
                          f"needs 1 <= min_limit ({a.min_limit:g}) <= initial_limit <= max_limit "
                          f"({a.max_limit:g})")
    return a


def _backends(v: Any) -> BackendAllowlist:
    d = check_mapping(v, "backends", {"allow"})
    allow = d.get("allow")
    if allow is not None and (not isinstance(allow, list) or not all(isinstance(x, str) for x in allow)):
        raise ConfigError("backends.allow", allow, "must be a list of networks (10.0.0.0/8), addresses "
                                                   "or host names the router may send requests to")
    try:
        return BackendAllowlist(allow)
    except ValueError as e:
        raise ConfigError("backends.allow", allow, str(e)) from None


def _membership(v: Any, backends: Any) -> str:
    if v not in ("heard", "etcd_only"):
        raise ConfigError("membership", v, "must be heard (route only to key-ring members this router "
                          "hears, the default) or etcd_only (member records alone, for agents that do "
                          "not list the router among their heartbeat observers)")
    if v == "etcd_only" and not (isinstance(backends, dict) and "allow" in backends):
        raise ConfigError("membership", v, "etcd_only trusts member records alone, so give the "
                          "networks the router may send to in backends.allow (e.g. [10.0.0.0/24])")
    return v


def _limits(v: Any) -> LimitsConfig:
    d = check_mapping(v, "limits", {"max_connections", "max_inflight", "max_body", "client_idle_timeout",
                                    "client_header_timeout", "client_body_rate", "max_pipeline",
                                    "upstream_idle_per_backend"})
    values: dict[str, Any] = {}
    for k, lo, hi in (("max_connections", 1, 1_000_000), ("max_inflight", 1, 1_000_000),
                      ("max_body", 1024, 1 << 34), ("upstream_idle_per_backend", 0, 100_000),
                      ("max_pipeline", 1, 1024)):
        if k in d:
            values[k] = check_int(d[k], f"limits.{k}", lo, hi)
    for k in ("client_idle_timeout", "client_header_timeout"):
        if k in d:
            values[k] = _number(d[k], f"limits.{k}", 0, 3600)
    if "client_body_rate" in d:
        values["client_body_rate"] = _number(d["client_body_rate"], "limits.client_body_rate", 0, 1 << 34)
    return LimitsConfig(**values)


def _number(x: Any, name: str, lo: float, hi: float) -> float:
    """A number in (lo, hi]."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not lo < x <= hi:
        raise ConfigError(name, x, f"must be a number greater than {lo:g} and at most {hi:g}")
    return float(x)
