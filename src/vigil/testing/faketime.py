"""Step one process's wall clock while it runs, as an NTP step or a VM resume
does, with libfaketime (Debian `faketime`, scripts/install.sh).

The process reads its offset from a file at most once a second
(FAKETIME_CACHE_DURATION; reading it on every clock call, FAKETIME_NO_CACHE,
costs an open and a read per call and slowed a lab's agents into missing
heartbeats), so rewriting the file steps it within a second. Only the wall
clock moves: CLOCK_MONOTONIC stays real (FAKETIME_DONT_FAKE_MONOTONIC), as
with a real step. Children inherit the offset (the agent's model server).
"""

from __future__ import annotations

import os
from pathlib import Path

from vigil.errors import VigilError

LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1", "/usr/local/lib/faketime/libfaketime.so.1")


def library() -> str:
    """The libfaketime shared object. Raises VigilError naming the fix."""
    for lib in LIBS:
        if Path(lib).exists():
            return lib
    raise VigilError("libfaketime not found: install it (`apt-get install faketime`, or scripts/install.sh)")


class SteppedClock:
    """The wall-clock offset of the processes started with `env()`."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0.0
        self.step_to(0.0)

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": library(), "FAKETIME_TIMESTAMP_FILE": str(self.path), "FAKETIME_CACHE_DURATION": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    def step_to(self, offset: float) -> None:
        """Wall clock = real time + `offset` seconds, within a second."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{offset:+g}\n")
        os.replace(tmp, self.path)  # never a half-written offset
        self.offset = offset
