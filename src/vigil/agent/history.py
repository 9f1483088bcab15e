"""Leadership history: every (node, token, start, end) as this agent saw it.

One JSON line per record in `<data_dir>/leadership.jsonl` (bounded: past
16 MiB, some days of renewals, it becomes `leadership.jsonl.1`, replacing the
previous one; vigil.logfile; `read_records` reads both), handed to the
kernel synchronously, so a SIGKILL of the agent loses nothing already
decided, and made durable by an fsync on a background thread a few
milliseconds later: an fsync (5-40 ms on a busy disk) must not sit between
a won election and the VIP, nor stall the event loop on every keep-alive.
A power loss may cost the records of those last milliseconds:
- {"event": "start", token, at, valid_until}
- {"event": "renew", token, at, valid_until}   (each acknowledged keep-alive)
- {"event": "end",   token, at, kind, reason}
- {"event": "fenced", token, at}   written by the node that fenced this one
  (node names the fenced node): it was confirmed powered off at `at`
Times are Unix seconds. For a node killed while leading there is no "end":
its leadership ended no later than its last `valid_until`, because it never
acts past that instant. `vigil.core.history.intervals()` applies exactly that
rule to what `read_records` reads; tests and the chaos checker use it to prove
that no two leaderships overlap.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

from vigil.core.records import decode_json, integer, unix_time
from vigil.logfile import LOG_MAX_BYTES, BoundedLog, with_rotated


log = logging.getLogger(__name__)


class LeadershipHistory:
    def __init__(self, path: Path, node: str, max_bytes: int = LOG_MAX_BYTES):
        self.path, self.node = path, node
        path.parent.mkdir(parents=True, exist_ok=True)
        self._log = BoundedLog(path, max_bytes)
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-fsync")
        self._lock = threading.Lock()
        self._sync_queued = False

    def write(self, event: str, token: int, at: float, node: str | None = None, **extra: Any) -> None:
        line = json.dumps({"node": node or self.node, "event": event, "token": token, "at": at, **extra})
        self._log.append(line)
        with self._lock:  # one fsync queued at a time covers every write before it runs
            if self._sync_queued:
                return
            self._sync_queued = True
        self._syncer.submit(self._sync)

    def _sync(self) -> None:
        with self._lock:
            self._sync_queued = False
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("cannot fsync %s: %s", self.path, e)

    def flush(self) -> None:
        """Wait until every record written so far is durable (a clean stop)."""
        self._syncer.submit(self._sync).result()

    def abandon(self) -> None:
        """Stop the fsync thread without waiting for it: what a SIGKILL leaves (the
        simulation's kill, vigil.testing.sim_cluster). Nothing is written after."""
        self._syncer.shutdown(wait=False)


def read_jsonl(path: Path, keep: Callable[[Any], bool] = lambda rec: isinstance(rec, dict)) -> list[dict[str, Any]]:
    """The records of one JSON-lines file that `keep` accepts (default: every JSON
    object; the chaos checker reads the gateway's writes and the acks with it),
    none if it does not exist."""
    out = []
    if path.exists():
        for line in path.read_text(errors="surrogateescape").splitlines():
            rec = decode_json(str(path), line)
            if keep(rec):
                out.append(rec)  # else a line cut by SIGKILL mid-write: the previous records stand
    return out


def _well_formed(rec: Any) -> bool:
    """A record as `write` makes it: what `intervals` reads is there, bounded."""
    return (isinstance(rec, dict) and isinstance(rec.get("node"), str) and isinstance(rec.get("event"), str)
            and integer(rec.get("token"), 0, 2**62) and unix_time(rec.get("at"))
            and (rec.get("valid_until") is None or unix_time(rec["valid_until"])))


def read_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The leadership records of each history file and of its rotated predecessor."""
    return [r for p in paths for q in with_rotated(p) for r in read_jsonl(q, _well_formed)]
