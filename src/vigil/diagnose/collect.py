"""Gather diagnose's evidence: the cluster's events (the last `since`
seconds) and status from etcd and the agents, the kernel log (a file, or
`dmesg`), a corosync log, and agents' log files (a lab's, or those named).
What cannot be read is said in `missing`, never raised."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from vigil.diagnose.finding import Evidence, at
from vigil.errors import VigilError

MAX_LINES = 20_000  # per log: the newest; a diagnosis reads recent history
COROSYNC_LOGS = ("/var/log/cluster/corosync.log", "/var/log/corosync/corosync.log")


def tail(path: str | Path, lines: int = MAX_LINES) -> list[str]:
    """The last `lines` lines of a text file (undecodable bytes replaced). Raises OSError."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 16 * 1024 * 1024))  # at most the last 16 MiB
        return f.read().decode("utf-8", "replace").splitlines()[-lines:]


def kernel_log(path: str | None, missing: list[str]) -> list[str]:
    if path:
        try:
            return tail(path)
        except OSError as e:
            missing.append(f"kernel log {path}: {e.strerror}")
            return []
    try:
        p = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10, errors="replace")
    except (OSError, subprocess.TimeoutExpired) as e:
        missing.append(f"dmesg: {e}")
        return []
    if p.returncode != 0:
        missing.append(f"dmesg: {p.stderr.strip()[:200] or 'exit ' + str(p.returncode)} (run as root, or "
                       "give --kernel-log)")
        return []
    return p.stdout.splitlines()[-MAX_LINES:]


def corosync_log(path: str | None, missing: list[str]) -> list[str]:
    for candidate in ([path] if path else [p for p in COROSYNC_LOGS if Path(p).exists()]):
        try:
            return tail(candidate)
        except OSError as e:
            missing.append(f"corosync log {candidate}: {e.strerror}")
    return []


def agent_logs(paths: list[str], missing: list[str]) -> dict[str, list[str]]:
    out = {}
    for path in paths:
        try:
            out[path] = tail(path)
        except OSError as e:
            missing.append(f"agent log {path}: {e.strerror}")
    return out


def gather(target: Any, since: float, kernel: str | None, corosync: str | None,
           logs: list[str]) -> tuple[Evidence, list[str]]:
    """Evidence for `target` (vigil.cli.target.Target) and what could not be read."""
    from vigil.cluster_status import gather_status
    from vigil.store.events import read_events

    missing: list[str] = []
    ev = Evidence(now=time.time())
    try:
        ev.events = [e for e in target.run(lambda store: read_events(store, target.keys))
                     if at(e) >= ev.now - since or e.get("kind") == "corrupt"]  # a rogue writer, however old
        ev.status = target.run(lambda store: gather_status(store, target.keys, target.api))
    except VigilError as e:
        ev.status, ev.status_error = None, str(e)
        missing.append(f"etcd: {e}")
    ev.kernel = kernel_log(kernel, missing)
    ev.corosync = corosync_log(corosync, missing)
    ev.logs = agent_logs(logs, missing)
    return ev, missing
