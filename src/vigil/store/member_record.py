"""The member record: what an agent publishes about its node under its lease
(`/vigil/<cluster>/members/<node>`), written and read through one type.

Contract:
- `MemberRecord.to_json()` is what the agent writes; `parse_member()` is how
  every reader (registry, router membership, status, haproxy) takes it. The
  JSON keys are the ones in DESIGN.md; fields a reader does not know are
  ignored, missing ones take their defaults (an older agent's sparse record
  still counts).
- `parse_member()` never raises: a record that is not what agents write
  (bad JSON, a priority that is not an integer, ...) comes back as a
  `BadRecord` naming the problem in one line. One bad record must never
  stop a decision loop, a router or a command.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

NO_VERDICT = "unknown"


@dataclass(frozen=True)
class BadRecord:
    """A member record no agent wrote: left out of every decision, named in events."""

    problem: str


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

    # -- what readers ask of it ------------------------------------------------
    @property
    def verdict(self) -> str:
        return str(self.health.get("verdict", NO_VERDICT))

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(self.health.get("reasons") or ())

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
                "heartbeat": {"addresses": list(self.heartbeat_addresses), "port": self.heartbeat_port},
                "health": self.health, "fingerprint": self.fingerprint, "inference": self.inference,
                "router": self.router, "fences": self.fences, "suspects": list(self.suspects),
                "incarnation": self.incarnation, "started_at": self.started_at,
                "version": self.version, "pid": self.pid}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@functools.lru_cache(maxsize=4096)
def parse_member(name: str, text: str) -> MemberRecord | BadRecord:
    """The record stored under `name`'s key, or what is wrong with it. A value
    read again (every decision cycle reads every member's record, and records
    change rarely) is parsed once: readers share the result and never change it."""
    try:
        rec = json.loads(text)
    except ValueError:
        rec = None
    if not isinstance(rec, dict):
        return BadRecord(f"not a JSON object: {text[:60]!r}")
    return member_from(name, rec)


def member_from(name: str, rec: dict[str, Any]) -> MemberRecord | BadRecord:
    problem = member_problem(rec)
    if problem:
        return BadRecord(problem)
    hb = rec.get("heartbeat") or {}
    port, inc, started, pid = hb.get("port"), rec.get("incarnation"), rec.get("started_at"), rec.get("pid")
    return MemberRecord(
        name, str(rec.get("api_url") or ""), rec.get("priority", 100), tuple(hb.get("addresses", [])),
        port if _int(port) else 0, dict(rec.get("health") or {}), dict(rec.get("fingerprint") or {}),
        rec.get("inference"), rec.get("router") if isinstance(rec.get("router"), dict) else None,
        _fences(rec.get("fences")), tuple(rec.get("suspects") or ()), inc if _int(inc) else 0,
        float(started) if _number(started) else 0.0, str(rec.get("version") or ""), pid if _int(pid) else 0)


def member_problem(rec: dict[str, Any]) -> str | None:
    """None for a record as agents write it; else what is wrong, in one line."""
    prio = rec.get("priority", 100)
    if isinstance(prio, bool) or not isinstance(prio, int) or not 0 <= prio <= 1000:
        return f"priority {prio!r} is not an integer from 0 to 1000"
    health = rec.get("health", {})
    if not isinstance(health, dict) or not isinstance(health.get("verdict", ""), str) \
            or not _strings(health.get("reasons", [])) or not isinstance(health.get("may_lead", False), bool) \
            or not isinstance(health.get("requires") or {}, dict):
        return f"health {str(health)[:120]!r} is not {{verdict: str, reasons: [str], may_lead: bool}}"
    if not isinstance(rec.get("fingerprint") or {}, dict):
        return f"fingerprint {str(rec.get('fingerprint'))[:80]!r} is not a mapping"
    if not _strings(rec.get("suspects") or []):
        return f"suspects {rec.get('suspects')!r} is not a list of node names"
    hb = rec.get("heartbeat", {})
    if not isinstance(hb, dict) or not _strings(hb.get("addresses", [])):
        return f"heartbeat {str(hb)[:80]!r} is not {{addresses: [str], port: int}}"
    if not isinstance(rec.get("api_url", ""), str):
        return f"api_url {rec.get('api_url')!r} is not a URL"
    return inference_problem(rec.get("inference"))


def inference_problem(inf: Any) -> str | None:
    """None for a missing or well-formed `inference` block of a member record."""
    if inf is None:
        return None
    if not isinstance(inf, dict) or not isinstance(inf.get("url", ""), str) \
            or not isinstance(inf.get("ready", False), bool):
        return f"inference {str(inf)[:80]!r} is not {{url: str, ready: bool, ...}}"
    return None


def _fences(v: Any) -> dict[str, list[str]]:
    if not isinstance(v, dict):
        return {}
    return {str(n): [str(t) for t in types] for n, types in v.items() if isinstance(types, list)}


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
