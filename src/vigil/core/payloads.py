"""Payload ownership: which node is working on which long-running request.

A model server lists the generations it is working on in its load report
(`payloads`: id, model, kind, started, tokens). The node's agent registers
each one that has run for `min_age` seconds in etcd at
`/vigil/<cluster>/payloads/<id>` under its own lease, so when the node dies
the record goes with the lease, and removes it when the work ends. Progress
(tokens) is rewritten at most every `every` seconds: etcd holds who works
on what, not a token counter.

`PayloadBook` is the sans-IO part: fed what the server reports and what was
written, it returns what to put and what to delete. A record is created
only where absent and then changed or deleted only while it is the one this
node created (its create revision): a stream continued on another node keeps
its id, and that node's record is never overwritten or removed by the node
the stream left (paused, then running again). Such an id is FOREIGN here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vigil.core.records import BadRecord, decode_object, integer, node_name, snippet, unix_time

ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
FOREIGN = -1  # create revision of a record another node holds
KINDS = ("stream", "completion", "job")


@dataclass(frozen=True)
class Payload:
    id: str
    model: str
    kind: str
    started: float  # Unix time
    progress: int  # tokens generated, or inputs done

    def record(self, node: str) -> dict[str, str | float | int]:
        return {"id": self.id, "node": node, "model": self.model, "kind": self.kind,
                "started": self.started, "progress": self.progress}


MAX_PAYLOADS = 4096  # entries of one load report taken; the rest are counted as bad


def payload_from(p: object) -> Payload | None:
    """One load-report entry or payload record, every field bounded; None if it is not one.
    Never raises, whatever `p` holds (an int too large for a float included)."""
    if not isinstance(p, dict):
        return None
    pid, model, kind, started = p.get("id"), p.get("model"), p.get("kind"), p.get("started")
    progress = p.get("tokens", p.get("progress", 0))
    if (isinstance(pid, str) and ID.fullmatch(pid) is not None and isinstance(model, str) and 0 < len(model) <= 128
            and isinstance(kind, str) and kind in KINDS and unix_time(started) and integer(progress, 0, 2**62)):
        return Payload(pid, model, kind, float(started), progress)
    return None


def parse_payloads(raw: object) -> tuple[list[Payload], int]:
    """The well-formed entries of a load report's `payloads` list, and how many were not."""
    if not isinstance(raw, list):
        return [], 0 if raw is None else 1
    good = [p for p in map(payload_from, raw[:MAX_PAYLOADS]) if p is not None]
    return good, len(raw) - len(good)


@dataclass(frozen=True)
class PayloadRecord:
    """What `/vigil/<cluster>/payloads/<id>` holds: who works on which payload."""
    node: str
    payload: Payload


def parse_payload_record(key: str, text: str) -> PayloadRecord | BadRecord:
    """A payload record as agents write it (`Payload.record`), or what is wrong with it.
    Never raises."""
    d = decode_object(key, text)
    if isinstance(d, BadRecord):
        return d
    p = payload_from(d)
    if p is None:
        return BadRecord(key, f"not {{id, node, model, kind, started, progress}} as agents write it: "
                              f"{snippet(text)}")
    node = d.get("node")
    if not node_name(node):
        return BadRecord(key, f"node {snippet(str(node), 40)} is not a node name")
    return PayloadRecord(node, p)


class PayloadBook:
    def __init__(self, min_age: float = 1.0, every: float = 2.0):
        self.min_age, self.every = min_age, every
        self.written: dict[str, tuple[Payload, float, int]] = {}  # id -> (as written, when, create revision)
        self.lease = 0

    def plan(self, reported: list[Payload], now: float, lease: int) -> tuple[list[Payload], list[str]]:
        """(records to put, ids to delete) to make etcd say what the server reports.
        A new lease (a new session: the old records went with the old lease) writes all again."""
        if lease != self.lease:
            self.written, self.lease = {}, lease
        current = {p.id: p for p in reported if now - p.started >= self.min_age}
        puts = [p for pid, p in current.items()
                if pid not in self.written or (p != self.written[pid][0] and now - self.written[pid][1] >= self.every
                                               and self.written[pid][2] != FOREIGN)]
        deletes = [pid for pid in self.written if pid not in current]
        return puts, deletes

    def put(self, p: Payload, now: float, create_revision: int) -> None:
        """`p` was written (created at `create_revision`), or found held by another node (FOREIGN)."""
        self.written[p.id] = (p, now, create_revision)

    def create_revision(self, pid: str) -> int:
        """The revision this node created the record at; 0: not written; FOREIGN: not ours."""
        return self.written[pid][2] if pid in self.written else 0

    def deleted(self, pid: str) -> None:
        self.written.pop(pid, None)
