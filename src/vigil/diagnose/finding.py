"""What diagnose reads (Evidence) and what it says (Finding), and the order
findings are told in: the most severe first, a cause before what it
explains, then the most recent."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

CRITICAL, ERROR, WARNING, INFO = "critical", "error", "warning", "info"
SEVERITIES = (CRITICAL, ERROR, WARNING, INFO)  # most severe first


@dataclass(frozen=True)
class Finding:
    severity: str  # one of SEVERITIES
    symptom: str  # what the operator sees
    cause: str  # why, as far as the evidence says
    fix: str  # what to run or do
    evidence: tuple[str, ...] = ()  # the lines it rests on, with their time and source
    subject: str = ""  # the node, VIP, device or domain it is about
    at: float = 0.0  # wall time of the newest evidence
    follows: bool = False  # a consequence another finding explains: told after it

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "evidence": list(self.evidence)}


@dataclass
class Evidence:
    events: list[dict[str, Any]] = field(default_factory=list)  # the cluster's event log, oldest first
    status: dict[str, Any] | None = None  # `vigil status --json`'s document; None: etcd did not answer
    status_error: str = ""  # why there is no status
    kernel: list[str] = field(default_factory=list)  # kernel log lines (dmesg)
    corosync: list[str] = field(default_factory=list)  # a corosync log's lines
    logs: dict[str, list[str]] = field(default_factory=dict)  # an agent's log lines, by source name
    now: float = field(default_factory=time.time)

    def last(self, match: Callable[[dict[str, Any]], bool]) -> tuple[int, dict[str, Any]] | None:
        """(index, event) of the newest event `match` accepts."""
        return next(((i, e) for i in range(len(self.events) - 1, -1, -1) if match(e := self.events[i])), None)

    def latest(self, kinds: Iterable[str], subject: str | None = None) -> dict[str, Any] | None:
        """The newest event of one of `kinds` (about `subject`, when given)."""
        wanted = set(kinds)
        found = self.last(lambda e: e.get("kind") in wanted and (subject is None or _subject(e) == subject))
        return found[1] if found else None

    def members(self) -> list[dict[str, Any]]:
        """The status's members that are mappings (the rest of an odd document ignored)."""
        found = (self.status or {}).get("members") if isinstance(self.status, dict) else None
        return [m for m in found if isinstance(m, dict)] if isinstance(found, list) else []

    def mapping(self, key: str) -> dict[str, Any]:
        found = self.status.get(key) if isinstance(self.status, dict) else None
        return found if isinstance(found, dict) else {}


def _subject(e: dict[str, Any]) -> str:
    return str(e.get("subject") or e.get("node") or "")


def at(e: dict[str, Any], default: float = 0.0) -> float:
    """An event's wall time; `default` where it has none that is a number."""
    v = e.get("at")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and \
        abs(v) < 1e11 else default


def line(e: dict[str, Any]) -> str:
    """One event as an evidence line: when, who recorded it, what."""
    when = time.strftime("%H:%M:%S", time.localtime(at(e)))
    return f"{when} event {e.get('kind')} from {e.get('node', '?')}: {str(e.get('cause', ''))[:300]}"


Rule = Callable[[Evidence], list[Finding]]


def ranked(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), f.follows, -f.at, f.symptom))


def diagnose(ev: Evidence, rules: Iterable[Rule]) -> list[Finding]:
    """Every rule's findings, ranked. A rule that fails on odd evidence is itself
    a finding, not the end of the diagnosis."""
    out = []
    for rule in rules:
        try:
            out += rule(ev)
        except Exception as e:  # noqa: BLE001 - evidence is untrusted; one rule must not hide the rest
            out.append(Finding(INFO, f"the {rule.__name__} rule could not read the evidence",
                               f"{type(e).__name__}: {e}", "a bug in diagnose: file it with the `--json` output"))
    return ranked(out)
