"""The result of one preflight check."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PASS, WARNING, ERROR, SKIPPED = "pass", "warning", "error", "skipped"
RESULTS = (PASS, WARNING, ERROR, SKIPPED)


@dataclass(frozen=True)
class Outcome:
    id: str  # stable across releases: what --ignore-preflight-errors names
    result: str  # one of RESULTS
    found: str  # what the check saw, one line
    fix: str = ""  # what to run (or change) to fix it; empty when it passed
    why: str = ""  # why Vigil needs it
    ignored: bool = False  # an error named in --ignore-preflight-errors

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", False)}


def passed(id: str, found: str, why: str = "") -> Outcome:
    return Outcome(id, PASS, found, why=why)


def failed(id: str, found: str, fix: str, why: str = "", result: str = ERROR) -> Outcome:
    return Outcome(id, result, found, fix, why)


def skipped(id: str, found: str) -> Outcome:
    return Outcome(id, SKIPPED, found)
