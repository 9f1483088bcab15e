"""Bounded logs: no file an installed agent, router or gateway appends to
grows without bound (a full disk stops the fencing guard and the agent's
own state files).

- `BoundedLog(path, max_bytes)`: JSON lines (or any lines) appended by this
  process. Once the file reaches `max_bytes` it is renamed to `<path>.1`
  (replacing the previous one) and a new file starts: at most about
  2 x `max_bytes` on disk, the newest records always kept.
- `cap(path, max_bytes)`: the same bound for a file another process appends
  to with O_APPEND (a child's output): copied to `<path>.1`, then truncated
  in place, so the writer's next append lands at the new end. Lines written
  between the copy and the truncation are lost; that is acceptable for
  diagnostic output, which is all this is used for.
- `with_rotated(path)`: the files holding a log's lines, oldest first (the
  readers of records, e.g. the chaos checker, read both).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

LOG_MAX_BYTES = 16 * 1024 * 1024  # per file; with the rotated one, 32 MiB per log at most


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def with_rotated(path: Path) -> list[Path]:
    """The rotated file (if any), then the current one (if any)."""
    return [p for p in (rotated(path), path) if p.exists()]


class BoundedLog:
    """Append-only lines in `path`, rotated to `path.1` past `max_bytes`. Thread-safe."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.path, self.max_bytes = path, max_bytes
        self.rotations = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<BoundedLog {self.path} max={self.max_bytes} rotations={self.rotations}>"

    def append(self, line: str) -> None:
        """Write `line` and a newline; no fsync (a killed process loses nothing written).
        A full file is rotated first, so `path` exists after every append."""
        with self._lock:
            try:
                full = self.path.stat().st_size >= self.max_bytes
            except FileNotFoundError:
                full = False
            if full:
                _fsync(self.path)  # its last records are durable before it stops being the one synced
                os.replace(self.path, rotated(self.path))
                self.rotations += 1
            with open(self.path, "a") as f:
                f.write(line + "\n")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cap(path: Path, max_bytes: int = LOG_MAX_BYTES) -> bool:
    """Rotate `path` (another process's O_APPEND output) if it passed `max_bytes`:
    copy to `path.1`, truncate in place. Returns whether it did. Raises OSError."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    shutil.copyfile(path, rotated(path))
    os.truncate(path, 0)
    return True
