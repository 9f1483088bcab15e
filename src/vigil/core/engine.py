"""Is the inference engine ready, busy, hung or dead? A verdict from progress,
not from the latency of one request.

Inputs (each with `now`):
- `load(reading)`: the engine answered its load probe with work pending
  (accepted, not yet answered) and a counter of work completed;
- `silent(detail)`: the load probe got no answer in time;
- `refused(detail)`: nothing listens on the engine's port (dead);
- `stopped(detail)`: the engine's process is frozen (SIGSTOP, state T);
- `canary(ok, detail)`: a real inference sent while the engine was idle;
- `down(cause)`: the supervised process exited;
- `tick()`: time passed with no news.

Verdicts:
- `busy`  : work pending and completions advancing (or pending for less than
  `stall_window`): still ready, and saying so with its queue depth.
- `ready` : nothing pending; an idle engine is proved by canaries.
- `hung`  : work pending and nothing completed for `stall_window`; or the
  load probe silent for `silence_window`; or the process frozen.
- `dead`  : the process exited or its port refuses connections.
- `failing`: `fall` canaries in a row failed on an idle engine.
- `starting`: no proof of work yet.

Readiness (`ready` property) is `ready` or `busy`. Leaving a bad verdict
takes `rise` good signals in a row: a canary that answered, or completions
that advanced. A canary that failed while completions advanced is ignored
(the engine was busy, not broken). Every change of verdict is returned once
as an `EngineChange` carrying its cause.
"""

from __future__ import annotations

from dataclasses import dataclass

from vigil.core.payloads import Payload

GOOD = frozenset({"ready", "busy"})


@dataclass(frozen=True)
class LoadReading:
    pending: int  # accepted and not yet answered (waiting + running)
    completed: int  # monotone count of finished work (requests, or tokens)
    payloads: tuple[Payload, ...] = ()  # the long-running work it lists


@dataclass(frozen=True)
class EngineChange:
    verdict: str
    ready: bool
    at: float
    cause: str


class EngineJudge:
    def __init__(self, stall_window: float = 10.0, silence_window: float = 1.0, rise: int = 1,
                 fall: int = 2):
        self.stall_window, self.silence_window = stall_window, silence_window
        self.rise, self.fall = rise, fall
        self.verdict = "starting"
        self.reason = "no proof of work yet"
        self.pending = 0
        self.completed: int | None = None
        self._progress_at: float | None = None  # last time completions advanced or nothing pended
        self._answered_at: float | None = None
        self._good = 0
        self._bad_canaries = 0
        self._canary_from: int | None = None

    def __repr__(self) -> str:
        return f"<EngineJudge {self.verdict} pending={self.pending} {self.reason!r}>"

    @property
    def ready(self) -> bool:
        return self.verdict in GOOD

    def idle(self) -> bool:
        """True when a canary is the only proof of work to be had."""
        return self.pending == 0

    # -- inputs ------------------------------------------------------------------
    def load(self, now: float, r: LoadReading) -> EngineChange | None:
        advanced = self.completed is not None and r.completed > self.completed
        if r.completed < (self.completed or 0):
            advanced = False  # the engine restarted: its counter began again
            self._progress_at = now
        self._answered_at = now
        if advanced or r.pending == 0 or self._progress_at is None:
            self._progress_at = now
        self.pending, self.completed = r.pending, r.completed
        if advanced:
            self._bad_canaries = 0
            change = self._good_signal(now, f"{r.pending} pending, completions advancing")
            if change or self.verdict not in GOOD:
                return change
        if self.ready:
            return self._settle(now)
        return self.tick(now)

    def silent(self, now: float, detail: str) -> EngineChange | None:
        if self._answered_at is None:
            self._answered_at = now
        return self.tick(now, detail)

    def refused(self, now: float, detail: str) -> EngineChange | None:
        return self._bad(now, "dead", f"nothing listens on the engine's port ({detail})")

    def stopped(self, now: float, detail: str) -> EngineChange | None:
        return self._bad(now, "hung", detail)

    def down(self, now: float, cause: str) -> EngineChange | None:
        self.completed, self.pending = None, 0
        self._progress_at = self._answered_at = None
        return self._bad(now, "dead", cause)

    def canary_sent(self) -> None:
        self._canary_from = self.completed

    def canary(self, now: float, ok: bool, detail: str) -> EngineChange | None:
        if ok:
            self._bad_canaries = 0
            return self._good_signal(now, detail)
        if self.completed is not None and self._canary_from is not None \
                and self.completed > self._canary_from:
            return None  # other work completed meanwhile: busy, not broken
        self._bad_canaries += 1
        self._good = 0
        if self.verdict in GOOD and self._bad_canaries >= self.fall:
            return self._move(now, "failing", f"{self._bad_canaries} canaries failed in a row on an "
                                              f"idle engine; last: {detail}")
        if self.verdict not in GOOD:
            self.reason = detail
        return None

    def tick(self, now: float, detail: str = "") -> EngineChange | None:
        if self._answered_at is not None and now - self._answered_at >= self.silence_window:
            return self._bad(now, "hung", f"load probe unanswered for {now - self._answered_at:.2f} s"
                                          + (f" ({detail})" if detail else "") + " (hung engine?)")
        if self.pending and self._progress_at is not None and now - self._progress_at >= self.stall_window:
            return self._bad(now, "hung", f"{self.pending} pending and nothing completed for "
                                          f"{now - self._progress_at:.1f} s")
        return None

    # -- transitions -------------------------------------------------------------
    def _settle(self, now: float) -> EngineChange | None:
        bad = self.tick(now)
        if bad:
            return bad
        want = "busy" if self.pending else "ready"
        if want != self.verdict:
            return self._move(now, want, f"{self.pending} pending" if self.pending else "idle")
        return None

    def _good_signal(self, now: float, detail: str) -> EngineChange | None:
        if self.verdict in GOOD:
            return self._settle(now)
        self._good += 1
        if self._good < self.rise:
            return None
        self._answered_at = self._answered_at or now
        self._progress_at = now
        return self._move(now, "busy" if self.pending else "ready", detail)

    def _bad(self, now: float, verdict: str, cause: str) -> EngineChange | None:
        self._good = 0
        if self.verdict == verdict:
            self.reason = cause
            return None
        return self._move(now, verdict, cause)

    def _move(self, now: float, verdict: str, cause: str) -> EngineChange:
        self.verdict = verdict
        self.reason = "" if verdict in GOOD else cause
        return EngineChange(verdict, verdict in GOOD, now, cause)
