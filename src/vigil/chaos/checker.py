"""The chaos checker: the safety and liveness properties of issue #4, checked
over what a run recorded. Pure: `check()` takes plain records; `load()`
reads them from a lab.

Evidence:
- leadership records of every agent (vigil.agent.history), from which the
  leadership intervals follow;
- the actuator gateway's history: every write attempt, accepted or not, in
  the order the gateway serialised them (one lock), with the value read back;
- every controller's acknowledged writes (what a leader was told was done);
- the register's value read from the PLC after the run;
- per healed fault, the seconds until a leader existed again (None: never).

Properties; each violation is one sentence naming its evidence:
- tokens accepted by the actuator never go back: once a token is accepted,
  no lower token is (a stale write accepted is exactly this);
- every accepted token was granted by an election, to one node only, and
  only that node's writes carry it;
- no two leaderships of different tokens overlap in time;
- after every healed fault a leader existed within `heal_bound` seconds;
- no acknowledged write is lost: each acknowledged write is in the
  gateway's accepted history, each accepted write read back its own value,
  and the register ends holding the last accepted value.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vigil.agent.history import read_jsonl, read_records
from vigil.core.history import intervals, overlaps


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "violations": self.violations, "stats": self.stats}


def check(leadership: list[dict[str, Any]], writes: list[dict[str, Any]], acks: list[dict[str, Any]],
          final: dict[int, int] | None = None, recoveries: list[float | None] = (),
          heal_bound: float = 15.0) -> Verdict:
    """Every property over one run's records; `final`: register -> value at the end."""
    v = Verdict()
    holders = _token_holders(leadership, v)
    _no_overlap(leadership, v)
    _tokens_never_go_back(writes, holders, v)
    _acks_not_lost(writes, acks, holders, final or {}, v)
    for i, took in enumerate(recoveries):
        if took is None or took > heal_bound:
            v.violations.append(f"fault {i + 1}: no leader within {heal_bound:g} s after healing "
                                f"({'never' if took is None else f'{took:.2f} s'})")
    accepted = [w for w in writes if w["accepted"]]
    v.stats = {"leaderships": len(holders), "writes_accepted": len(accepted),
               "writes_rejected": len(writes) - len(accepted), "acks": len(acks),
               "tokens_accepted": sorted({w["token"] for w in accepted})}
    return v


def _token_holders(records: list[dict[str, Any]], v: Verdict) -> dict[int, str]:
    nodes: dict[int, set[str]] = {}
    for r in records:
        if r["event"] == "start":
            nodes.setdefault(r["token"], set()).add(r["node"])
    for token, who in sorted(nodes.items()):
        if len(who) > 1:
            v.violations.append(f"token {token} was held by {len(who)} nodes: {', '.join(sorted(who))}")
    return {t: sorted(who)[0] for t, who in nodes.items()}


def _no_overlap(records: list[dict[str, Any]], v: Verdict) -> None:
    for a, b in overlaps(intervals(records)):
        v.violations.append(f"leaderships overlap: {a.node} (token {a.token}, {a.start:.3f}-{a.end:.3f}) "
                            f"and {b.node} (token {b.token}, {b.start:.3f}-{b.end:.3f})")


def _tokens_never_go_back(writes: list[dict[str, Any]], holders: dict[int, str], v: Verdict) -> None:
    highest = 0
    for w in writes:
        if not w["accepted"]:
            continue
        if w["token"] < highest:
            v.violations.append(f"stale write accepted at {w['at']:.3f}: token {w['token']} after "
                                f"token {highest} (value {w['value']})")
        if w["token"] not in holders:
            v.violations.append(f"write accepted at {w['at']:.3f} with token {w['token']}, "
                                "which no election granted")
        highest = max(highest, w["token"])


def _acks_not_lost(writes: list[dict[str, Any]], acks: list[dict[str, Any]], holders: dict[int, str],
                   final: dict[int, int], v: Verdict) -> None:
    accepted = [w for w in writes if w["accepted"]]
    have = Counter((w["token"], w["register"], w["value"]) for w in accepted)
    for a in acks:
        key = (a["token"], a["register"], a["value"])
        if have[key] <= 0:
            v.violations.append(f"acknowledged write lost: {a['node']} token {a['token']} register "
                                f"{a['register']} value {a['value']} at {a['at']:.3f} is not in the "
                                "actuator's history")
        have[key] -= 1
        if holders.get(a["token"], a["node"]) != a["node"]:
            v.violations.append(f"{a['node']} wrote with token {a['token']}, which "
                                f"{holders[a['token']]} holds")
    for w in accepted:
        if w.get("readback") is not None and w["readback"] != w["value"]:
            v.violations.append(f"write at {w['at']:.3f} (token {w['token']}) read back {w['readback']}, "
                                f"not its value {w['value']}")
    last: dict[int, int] = {}
    for w in accepted:
        last[w["register"]] = w["value"]
    for register, value in final.items():
        if register in last and last[register] != value:
            v.violations.append(f"register {register} ends at {value}, not the last accepted value "
                                f"{last[register]}")


def load(lab: Any) -> tuple[list[dict], list[dict], list[dict]]:
    """(leadership records, actuator writes, acknowledged writes) of a lab."""
    acks = [a for n in lab.nodes for name in ("actuator-acks.jsonl.1", "actuator-acks.jsonl")
            for a in read_jsonl(Path(n.data_dir) / name)]
    writes = read_jsonl(lab.fencing.history) if lab.fencing else []
    return read_records(lab.history_files()), writes, sorted(acks, key=lambda a: a["at"])
