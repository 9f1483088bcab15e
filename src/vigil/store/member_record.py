"""The member record: what an agent publishes about its node under its lease
(`/vigil/<cluster>/members/<node>`), written and read through one type.

Contract:
- `MemberRecord.to_json()` is what the agent writes; `parse_member()` is how
  every reader (registry, router membership, status, haproxy) takes it. The
  JSON keys are the ones in DESIGN.md; fields a reader does not know are
  ignored, missing ones take their defaults (an older agent's sparse record
  still counts).
- `parse_member()` never raises: a record that is not what agents write
  (bad JSON, a priority that is not an integer, a number no float holds,
  a string or nesting past vigil.core.records' bounds, a key that is not a
  node name, ...) comes back as a `BadRecord` naming the problem in one
  line. One bad record must never stop a decision loop, a router or a
  command. Every number of a record let through is finite and in range.
"""

from __future__ import annotations

import math

import functools
import json
from dataclasses import dataclass, field
import re
from typing import Any
from urllib.parse import urlsplit

from vigil.core.compat import NUMBER_KEYS, VERSION_KEYS, parse_requirement
from vigil.core.records import BadRecord, decode_object, integer, node_name, number, snippet, strings, unix_time

__all__ = ["BadRecord", "MemberRecord", "parse_member", "member_from", "member_problem", "NO_VERDICT"]

NO_VERDICT = "unknown"


@dataclass(frozen=True)
class MemberRecord:
    name: str
    api_url: str = ""
    priority: int = 100
    heartbeat_addresses: tuple[str, ...] = ()
    heartbeat_port: int = 0
    # {verdict, reasons, actions, alarms, probes, requires, may_lead} (vigil.agent.health)
    health: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] | None = None  # {url, ready, reason, ...} of the node's model server
    router: dict[str, Any] | None = None
    fences: dict[str, list[str]] = field(default_factory=dict)  # node -> device types it can fence
    suspects: tuple[str, ...] = ()  # peers its detector suspects now
    incarnation: int = 0
    started_at: float = 0.0
    version: str = ""
    pid: int = 0
    heartbeat_key_id: int = 0  # the key it signs with: peers make our pair key with it (0: not said)

    # -- what readers ask of it ------------------------------------------------
    @property
    def verdict(self) -> str:
        return str(self.health.get("verdict", NO_VERDICT))

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(self.health.get("reasons") or ())

    @property
    def drain_deferred(self) -> bool:
        """Its own verdict is a drain that waits for the drain budget (vigil.core.drain_budget)."""
        return self.health.get("drain") == "deferred"

    @property
    def drain_since(self) -> float:
        """Since when (wall time) its drain waits; infinity where the record does not say."""
        v = self.health.get("drain_since")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e11 else math.inf

    @property
    def may_lead(self) -> bool:
        """Its node may lead: `may_lead` since issue 12; before it, a verdict of
        "healthy" said the same."""
        if "may_lead" in self.health:
            return self.health["may_lead"] is True
        return self.health.get("verdict") in ("healthy", "ready")

    @property
    def requires(self) -> dict[str, Any]:
        return dict(self.health.get("requires") or {})

    @property
    def inference_url(self) -> str:
        return str((self.inference or {}).get("url") or "")

    # -- the wire form -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "api_url": self.api_url, "priority": self.priority,
                "heartbeat": {"addresses": list(self.heartbeat_addresses), "port": self.heartbeat_port,
                              "key_id": self.heartbeat_key_id},
                "health": self.health, "fingerprint": self.fingerprint, "inference": self.inference,
                "router": self.router, "fences": self.fences, "suspects": list(self.suspects),
                "incarnation": self.incarnation, "started_at": self.started_at,
                "version": self.version, "pid": self.pid}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


_HOST = re.compile(r"[A-Za-z0-9._:-]{1,253}")
CACHED_TEXT = 16 * 1024  # longer records are parsed each time: the cache must stay small


def parse_member(name: str, text: str) -> MemberRecord | BadRecord:
    """The record stored under `name`'s key (`members/<name>`), or what is wrong
    with it. A value read again (every decision cycle reads every member's record,
    and records change rarely) is parsed once: readers share the result and never
    change it."""
    if isinstance(text, str) and len(text) <= CACHED_TEXT:
        return _parse_cached(name, text)
    return _parse(name, text)


@functools.lru_cache(maxsize=512)
def _parse_cached(name: str, text: str) -> MemberRecord | BadRecord:
    return _parse(name, text)


def _parse(name: str, text: str) -> MemberRecord | BadRecord:
    key = f"members/{name[:80]}"
    if not node_name(name):
        return BadRecord(key, f"the key ends in {snippet(name, 40)}, not a node name")
    rec = decode_object(key, text)
    return rec if isinstance(rec, BadRecord) else member_from(name, rec)


def member_from(name: str, rec: dict[str, Any]) -> MemberRecord | BadRecord:
    problem = member_problem(rec)
    if problem:
        return BadRecord(f"members/{name[:80]}", problem)
    hb = rec.get("heartbeat") or {}
    port, inc, started, pid = hb.get("port"), rec.get("incarnation"), rec.get("started_at"), rec.get("pid")
    kid = hb.get("key_id")
    return MemberRecord(
        name, str(rec.get("api_url") or ""), rec.get("priority", 100), tuple(hb.get("addresses", [])),
        port if integer(port, 0, 65535) else 0, dict(rec.get("health") or {}), dict(rec.get("fingerprint") or {}),
        rec.get("inference"), rec.get("router") if isinstance(rec.get("router"), dict) else None,
        _fences(rec.get("fences")), tuple(rec.get("suspects") or ()), inc if integer(inc, 0, 2**62) else 0,
        float(started) if unix_time(started) else 0.0, str(rec.get("version") or "")[:128],
        pid if integer(pid, 0, 2**31) else 0, kid if integer(kid, 1, 65535) else 0)


def member_problem(rec: dict[str, Any]) -> str | None:
    """None for a record as agents write it; else what is wrong, in one line."""
    prio = rec.get("priority", 100)
    if isinstance(prio, bool) or not isinstance(prio, int) or not 0 <= prio <= 1000:
        return f"priority {_show(prio)} is not an integer from 0 to 1000"
    health = rec.get("health", {})
    if not isinstance(health, dict) or not isinstance(health.get("verdict", ""), str) \
            or not _strings(health.get("reasons", [])) or not isinstance(health.get("may_lead", False), bool) \
            or not isinstance(health.get("requires") or {}, dict):
        return f"health {_show(health, 120)} is not {{verdict: str, reasons: [str], may_lead: bool}}"
    if not isinstance(rec.get("fingerprint") or {}, dict):
        return f"fingerprint {_show(rec.get('fingerprint'), 80)} is not a mapping"
    if not _strings(rec.get("suspects") or []):
        return f"suspects {_show(rec.get('suspects'), 80)} is not a list of node names"
    hb = rec.get("heartbeat", {})
    if not isinstance(hb, dict) or not _strings(hb.get("addresses", [])):
        return f"heartbeat {_show(hb, 80)} is not {{addresses: [str], port: int}}"
    if url_problem(rec.get("api_url", "")):
        return f"api_url {_show(rec.get('api_url'))} is not a URL: {url_problem(rec.get('api_url', ''))}"
    return inference_problem(rec.get("inference")) or compat_problem(health.get("requires") or {},
                                                                    rec.get("fingerprint") or {})


def compat_problem(requires: dict[str, Any], fp: dict[str, Any]) -> str | None:
    """None when the compat gate (vigil.core.compat) can read the record's requirements
    and fingerprint: conditions it parses, short enough to compare; numbers where
    it compares numbers, flags as a list of strings."""
    try:
        parse_requirement(requires)
    except ValueError as e:
        return f"health.{str(e)[:120]}"
    if any(len(c) > 64 if isinstance(c, list) else len(str(c)) > 64 for c in requires.values()):
        return "health.requires: a condition longer than 64 characters (or a list of more than 64)"
    for key, v in fp.items():
        if v is None or isinstance(v, list) and key not in ("cpu_flags", "engines"):
            continue
        if key in NUMBER_KEYS and not number(v, 0, 2**53):
            return f"fingerprint {key} {_show(v)} is not a number"
        if key == "cpu_flags" and not strings(v, 4096):
            return f"fingerprint cpu_flags {_show(v)} is not a list of flags"
        if key in VERSION_KEYS | {"gpu_model"} and len(str(v)) > 256:
            return f"fingerprint {key} {_show(v)} is longer than 256 characters"
        if key == "engines" and not (isinstance(v, dict) and all(len(str(x)) <= 256 for x in v.values())):
            return f"fingerprint engines {_show(v)} is not {{package: version}}"
    return None


def inference_problem(inf: Any) -> str | None:
    """None for a missing or well-formed `inference` block of a member record."""
    if inf is None:
        return None
    if not isinstance(inf, dict) or not isinstance(inf.get("url", ""), str) \
            or not isinstance(inf.get("ready", False), bool):
        return f"inference {_show(inf, 80)} is not {{url: str, ready: bool, ...}}"
    problem = url_problem(inf.get("url", ""))
    return f"inference url {_show(inf.get('url'))} is not a URL: {problem}" if problem else None


def url_problem(u: Any) -> str | None:
    """None for "" or an http(s) URL every reader can take apart (urlsplit, .port)
    and put in a config line (vigil.router.haproxy): a host of letters, digits,
    '.', '-', '_' and ':' only."""
    if u == "":
        return None
    if not isinstance(u, str) or len(u) > 2048:
        return "not a string of at most 2048 characters"
    if any(c <= " " or c == "\x7f" for c in u):
        return "it holds a space or a control character"
    try:
        parts = urlsplit(u)
        parts.port  # raises for a port that is not one
    except ValueError as e:
        return str(e)[:80]
    if parts.scheme not in ("http", "https") or not parts.hostname or not _HOST.fullmatch(parts.hostname):
        return "not http(s)://host[:port] with a plain host name or address"
    return None


def _fences(v: Any) -> dict[str, list[str]]:
    if not isinstance(v, dict):
        return {}
    return {str(n): [str(t) for t in types] for n, types in v.items() if isinstance(types, list)}


_strings = strings


def _show(v: Any, n: int = 40) -> str:
    """`v` for a problem line: its repr, cut at `n` characters."""
    r = repr(v) if not isinstance(v, (dict, list)) else repr(str(v))
    return r if len(r) <= n else r[:n] + "..."
