"""The probe port: every node-health signal (GPUs, the kernel's Xid log, later
thermals and facility sensors) is read through one shape, so a pure verdict
in core/ can judge readings it did not have to fetch.

Contract of a Probe: `read(now)` returns a Reading and never raises. A signal
that cannot be read says why in `problem` (`available=False`): a node without
the hardware is reported as such ("no GPU: NVML library not found"), never
given invented values. `read` may block briefly (a driver call); adapters on
an event loop run it in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from vigil.core.records import JSONable


@dataclass(frozen=True)
class Reading:
    source: str  # the probe's name: "gpu", "xid", ...
    at: float  # the `now` it was read at (monotonic seconds)
    available: bool  # False: the signal does not exist here, `problem` says why
    values: dict[str, JSONable] = field(default_factory=dict)
    problem: str = ""

    def to_json(self) -> dict[str, JSONable]:
        return {"source": self.source, "available": self.available, "values": self.values,
                **({"problem": self.problem} if self.problem else {})}


class Probe(Protocol):
    name: str

    def read(self, now: float) -> Reading: ...
