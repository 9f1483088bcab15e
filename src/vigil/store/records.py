"""One total parser per etcd key family: the only way etcd bytes become values.

Contract:
- Every parser takes `(key, text)` (the full etcd key and its value) and
  returns a typed record or a `BadRecord(key, problem)`; it NEVER raises,
  whatever the text holds (non-JSON, bytes that are not UTF-8, a 400-digit
  integer, NaN, 1e999, a 100,000-deep list, a megabyte string). Decoding is
  bounded by vigil.core.records; every number of a record let through is
  finite and in its range, every string and list bounded.
- `FAMILIES` lists every key family Vigil reads, with its parser; `family_of`
  finds a key's family; `parse_record` dispatches, and is the last line of
  defence: a parser bug becomes a BadRecord there, not a failed cycle. A
  test enumerates `vigil.store.keys.Keys` so that a key family added
  without a parser fails it.
- Per-node families (members, state, fencing, held) take the node from the
  key: a key whose tail is not a node name (vigil.fields.NAME_RE) is bad,
  and one with more segments below the family's prefix is in no family (so
  each node has at most one key per family).

Readers: the registry's snapshot (leader, members, states, fencing, held,
switchover) decides on these; the router's membership, `vigil status`,
`vigil events`, `vigil payloads` and `vigil job` show them; routers read the
Idempotency-Key markers (vigil.store.idem).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable

from vigil.core.jobs import (ChunkRecord, JobRecordError, JobSpec, Progress, chunk_inputs, parse_spec, progress_record,
                             result_from, shard_of)
from vigil.core.payloads import PayloadRecord, parse_payload_record
from vigil.core.records import BadRecord, decode_object, node_name, snippet, unix_time
from vigil.core.view import NODE_STATES, Switchover
from vigil.store.idem import BadMarker, Marker, parse_marker
from vigil.store.keys import Keys
from vigil.store.member_record import MemberRecord, parse_member

log = logging.getLogger(__name__)

__all__ = ["BadRecord", "FAMILIES", "Family", "FenceMarker", "Hold", "family_of", "parse_record",
           "parse_leader", "parse_member_kv", "parse_state", "parse_fencing", "parse_hold", "parse_switchover",
           "parse_payload", "parse_event", "parse_config", "parse_job_spec", "parse_job_progress",
           "parse_job_input", "parse_job_result", "parse_idem_marker", "parse_as", "node_of"]

FENCE_STATES = ("in_progress", "failed")
MAX_REASON = 1024  # characters of a reason or cause kept from a record


@dataclass(frozen=True)
class FenceMarker:
    """fencing/<node>: fencing of `node` in flight (under the fencer's lease) or failed."""
    node: str
    state: str  # in_progress | failed
    by: str
    reason: str


@dataclass(frozen=True)
class Hold:
    """held/<node>: flap damping holds `node` out until the Unix time `until`."""
    node: str
    until: float
    why: str


def node_of(key: str) -> str:
    """The last segment of a key: the node of a per-node family."""
    return key.rsplit("/", 1)[-1]


def _node_key(key: str) -> str | BadRecord:
    node = node_of(key)
    return node if node_name(node) else BadRecord(key, f"the key ends in {snippet(node, 40)}, not a node name")


def parse_leader(key: str, text: str) -> str | BadRecord:
    """leader: the leader's node name (its lease and create revision are the key's)."""
    return text if node_name(text) else BadRecord(key, f"holds {snippet(str(text), 40)}, not a node name")


def parse_member_kv(key: str, text: str) -> MemberRecord | BadRecord:
    """members/<node>: the member record (vigil.store.member_record)."""
    rec = parse_member(node_of(key), text)
    return BadRecord(key, rec.problem) if isinstance(rec, BadRecord) else rec


def parse_state(key: str, text: str) -> str | BadRecord:
    """state/<node>: one of vigil.core.view.NODE_STATES."""
    node = _node_key(key)
    if isinstance(node, BadRecord):
        return node
    if text not in NODE_STATES:
        return BadRecord(key, f"state {snippet(str(text), 40)} is not one of {', '.join(NODE_STATES)}")
    return text


def parse_fencing(key: str, text: str) -> FenceMarker | BadRecord:
    """fencing/<node>: {state: in_progress|failed, by: node, reason: str, at: time}."""
    node = _node_key(key)
    d = node if isinstance(node, BadRecord) else decode_object(key, text)
    if isinstance(d, BadRecord):
        return d
    state, by, reason = d.get("state"), d.get("by"), d.get("reason")
    if state not in FENCE_STATES or not isinstance(reason, str) or not node_name(by):
        return BadRecord(key, f"not {{state: in_progress|failed, by: node, reason: str}}: {snippet(text)}")
    return FenceMarker(node, state, by, reason[:MAX_REASON])


def parse_hold(key: str, text: str) -> Hold | BadRecord:
    """held/<node>: {until: Unix time, why: str}."""
    node = _node_key(key)
    d = node if isinstance(node, BadRecord) else decode_object(key, text)
    if isinstance(d, BadRecord):
        return d
    if not unix_time(d.get("until")) or not isinstance(d.get("why", ""), str):
        return BadRecord(key, f"not {{until: Unix time, why: str}}: {snippet(text)}")
    return Hold(node, float(d["until"]), d.get("why", "")[:MAX_REASON])


@dataclass(frozen=True)
class DrainClaim:
    """drain/<node>: `node` holds a place of the drain budget (vigil.store.drain_places)."""
    node: str
    since: float  # Unix time it began to wait for the place


def parse_drain_claim(key: str, text: str) -> DrainClaim | BadRecord:
    """drain/<node>: {since: Unix time}."""
    node = _node_key(key)
    d = node if isinstance(node, BadRecord) else decode_object(key, text)
    if isinstance(d, BadRecord):
        return d
    if not unix_time(d.get("since")):
        return BadRecord(key, f"not {{since: Unix time}}: {snippet(text)}")
    return DrainClaim(node, float(d["since"]))


def parse_drain_epoch(key: str, text: str) -> dict[str, Any] | BadRecord:
    """drain-epoch: {by: node}, moved by every claim of a drain place (only its revision counts)."""
    return decode_object(key, text)


def parse_switchover(key: str, text: str) -> Switchover | BadRecord:
    """switchover: {to: node, by: who asked}."""
    d = decode_object(key, text)
    if isinstance(d, BadRecord):
        return d
    if not node_name(d.get("to")) or not isinstance(d.get("by", ""), str):
        return BadRecord(key, f"not {{to: node, by: str}}: {snippet(text)}")
    return Switchover(d["to"], d.get("by", "")[:256])


def parse_payload(key: str, text: str) -> PayloadRecord | BadRecord:
    """payloads/<id>: who works on a long request or job shard (vigil.core.payloads)."""
    return parse_payload_record(key, text)


def parse_event(key: str, text: str) -> dict[str, Any] | BadRecord:
    """events/<id>: {at, node, kind, cause, ...details} (vigil.store.events)."""
    d = decode_object(key, text)
    if isinstance(d, BadRecord):
        return d
    if not unix_time(d.get("at")) or not all(isinstance(d.get(f), str) for f in ("node", "kind", "cause")):
        return BadRecord(key, f"not {{at: Unix time, node, kind, cause: str, ...}}: {snippet(text)}")
    return d


def parse_config(key: str, text: str) -> dict[str, Any] | BadRecord:
    """config: dynamic cluster settings, a JSON object (no reader acts on it yet)."""
    return decode_object(key, text)


def _job(parse: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
    def total(key: str, text: str) -> Any:
        try:
            return parse(key, text)
        except JobRecordError as e:
            return BadRecord(key, str(e))
    total.__doc__, total.__name__ = parse.__doc__, parse.__name__
    return total


@_job
def parse_job_spec(key: str, text: str) -> JobSpec | BadRecord:
    """spec/<job>: a job's spec (vigil.core.jobs.JobSpec)."""
    return parse_spec(text, key)


@_job
def parse_job_progress(key: str, text: str) -> Progress | BadRecord:
    """progress/<job>/<shard>: a shard's checkpoint, each field bounded (its spec's
    bounds are checked by vigil.core.jobs.parse_progress, which needs the spec)."""
    if shard_of(node_of(key)) is None:
        return BadRecord(key, f"the key ends in {snippet(node_of(key), 20)}, not a shard number")
    return progress_record(text, key)


@_job
def parse_job_input(key: str, text: str) -> list[str] | BadRecord:
    """input/<job>/<chunk>: a chunk of inputs, a list of strings."""
    return chunk_inputs(text, key)


@_job
def parse_job_result(key: str, text: str) -> ChunkRecord | BadRecord:
    """result/<job>/<chunk>: a committed chunk's embeddings."""
    return result_from(text, key)


def parse_idem_marker(key: str, text: str) -> Marker | BadRecord:
    """<root>-idem/<cluster>/<digest>: an Idempotency-Key marker (vigil.store.idem)."""
    m = parse_marker(text)
    return BadRecord(key, m.reason) if isinstance(m, BadMarker) else m


@dataclass(frozen=True)
class Family:
    name: str
    path: Callable[[Keys], str]  # the key (exact) or the prefix of the family's keys
    exact: bool
    parse: Callable[[str, str], Any]
    per_node: bool = False  # <path><node>: one key per node, the node's name one segment


FAMILIES: tuple[Family, ...] = (
    Family("leader", lambda k: k.leader, True, parse_leader),
    Family("members", lambda k: k.members, False, parse_member_kv, True),
    Family("state", lambda k: k.states, False, parse_state, True),
    Family("fencing", lambda k: k.fencing, False, parse_fencing, True),
    Family("held", lambda k: k.holds, False, parse_hold, True),
    Family("switchover", lambda k: k.switchover, True, parse_switchover),
    Family("drain", lambda k: k.drain_claims, False, parse_drain_claim, True),
    Family("drain epoch", lambda k: k.drain_epoch, True, parse_drain_epoch),
    Family("payloads", lambda k: k.payloads, False, parse_payload),
    Family("events", lambda k: k.events, False, parse_event),
    Family("config", lambda k: k.config, True, parse_config),
    Family("job spec", lambda k: k.job_specs, False, parse_job_spec),
    Family("job progress", lambda k: k.job_progresses(), False, parse_job_progress),
    Family("job input", lambda k: k.jobs + "input/", False, parse_job_input),
    Family("job result", lambda k: k.jobs + "result/", False, parse_job_result),
    Family("idempotency", lambda k: k.idempotency, False, parse_idem_marker),
)


def family_of(keys: Keys, key: str) -> Family | None:
    """The family `key` belongs to, or None for a key Vigil never writes. A key
    below a per-node family's prefix with more than one segment (`members/x/n1`)
    is in none: it would speak for the node its last segment names."""
    f, nested = _match(keys, key)
    return None if nested else f


def nested_in(keys: Keys, key: str) -> Family | None:
    """The per-node family `key` is below with more than one segment (`members/x/n1`), or None."""
    f, nested = _match(keys, key)
    return f if nested else None


def _match(keys: Keys, key: str) -> tuple[Family | None, bool]:
    """The family whose key or prefix `key` matches, and whether it is nested below a per-node one."""
    for path, exact, f in _paths(keys):
        if key == path if exact else key.startswith(path) and len(key) > len(path):
            return f, f.per_node and "/" in key[len(path):]
    return None, False


@functools.lru_cache(maxsize=64)
def _paths(keys: Keys) -> tuple[tuple[str, bool, Family], ...]:
    return tuple((f.path(keys), f.exact, f) for f in FAMILIES)


def parse_record(keys: Keys, key: str, text: str) -> Any:
    """`key`'s value through its family's parser; a BadRecord for a key of no
    family, or if a parser ever raised (logged: that is a bug to fix)."""
    f = family_of(keys, key)
    return BadRecord(key, "not a key Vigil writes") if f is None else parse_as(f, key, text)


def parse_as(f: Family, key: str, text: str) -> Any:
    """`f.parse(key, text)`, a BadRecord if it ever raised (the last line of defence;
    the fuzz targets keep it unused)."""
    try:
        return f.parse(key, text)
    except Exception as e:  # noqa: BLE001 - one record must never stop a reader
        log.exception("the %s parser raised on %s", f.name, key)
        return BadRecord(key, f"unreadable ({type(e).__name__})")
