"""Leadership intervals from history records (vigil.agent.history writes and
reads them): pure, for the tests, the chaos checker, the lab and the
simulation to prove that no two leaderships overlap.

A record is {"node", "event": start|renew|end|fenced, "token", "at",
"valid_until"?, "kind"?} (Unix seconds). A leadership (node, token) starts at
its "start" and ends at its earliest "end" or "fenced", and no later than its
last `valid_until`: a node killed while leading never acts past that instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NotRequired, TypedDict


class LeadershipRecord(TypedDict):
    """One history record, as vigil.agent.history writes it (other keys, e.g. "by", are kept)."""

    node: str
    event: str  # start | renew | end | fenced
    token: int
    at: float
    valid_until: NotRequired[float]
    kind: NotRequired[str]  # why an "end" ended


class _Term(TypedDict):
    start: float | None
    valid_until: float | None
    end: float | None
    by: str


@dataclass(frozen=True)
class Interval:
    node: str
    token: int
    start: float
    end: float
    ended_by: str


def intervals(records: Iterable[LeadershipRecord]) -> list[Interval]:
    """Leadership intervals per (node, token), by start; see the module docstring."""
    acc: dict[tuple[str, int], _Term] = {}
    for r in records:
        k = (r["node"], r["token"])
        cur = acc.setdefault(k, {"start": None, "valid_until": None, "end": None, "by": "lease"})
        if r["event"] == "start":
            cur["start"] = r["at"]
        if "valid_until" in r:
            cur["valid_until"] = max(cur["valid_until"] or 0, r["valid_until"])
        if r["event"] in ("end", "fenced") and (cur["end"] is None or r["at"] < cur["end"]):
            cur["end"], cur["by"] = r["at"], r.get("kind", r["event"])
    out = []
    for (node, token), c in acc.items():
        if c["start"] is None:
            continue
        ends = [x for x in (c["end"], c["valid_until"]) if x is not None]
        out.append(Interval(node, token, c["start"], min(ends) if ends else c["start"], c["by"]))
    return sorted(out, key=lambda i: (i.start, i.token))


def overlaps(ivs: list[Interval]) -> list[tuple[Interval, Interval]]:
    """Pairs of intervals of different tokens that overlap in time."""
    bad = []
    for i, a in enumerate(ivs):
        for b in ivs[i + 1:]:
            if a.token != b.token and a.start < b.end and b.start < a.end:
                bad.append((a, b))
    return bad
