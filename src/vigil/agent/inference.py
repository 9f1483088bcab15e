"""InferenceSupervisor: the node's inference server as a resource.

- With `command`, the agent starts the server (its own session, output to
  `<data_dir>/inference.log`, PID in `<data_dir>/inference.pid`), restarts it
  with back-off when it exits, and stops it when the agent stops. A server
  left behind by an earlier incarnation of the agent (SIGKILLed agent) is
  stopped first, by the PID in the file and only if its command line still
  matches.
- Readiness judges progress, not the latency of one request
  (vigil.core.engine): every `load_interval` the engine's own load report
  (work pending, work completed); a managed process frozen by the kernel
  (state T) is hung at once, a report unanswered for `silence_window` or
  pending work with no completion for `stall_window` is hung, a refused port
  is dead, and an engine with work pending and completions advancing is
  busy: still ready. While the engine is idle, a real inference (the canary,
  every `canary_interval`, `canary_timeout`) proves it works. An engine
  without a load report (404) is judged by canaries alone, and says so.
- Each readiness change calls `on_change(ready, cause)`; each change of
  verdict (ready, busy, hung, dead, failing) is an event.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

import aiohttp

from vigil.clock import Clock
from vigil.config import InferenceConfig
from vigil.core.engine import EngineChange, EngineJudge
from vigil import procs
from vigil.agent.child import ChildProcess, child_pid
from vigil.errors import ProbeError
from vigil.probes.engine import read_load
from vigil.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class InferenceSupervisor:
    def __init__(self, cfg: InferenceConfig, data_dir: Path, clock: Clock,
                 on_change: Callable[[bool, str], None], on_event: Callable[..., None],
                 on_payloads: Callable[[tuple], None] = lambda payloads: None):
        """`on_payloads` gets the long-running work each load report lists."""
        self.cfg, self.data_dir, self.clock = cfg, data_dir, clock
        self.on_change, self.on_event, self.on_payloads = on_change, on_event, on_payloads
        self.judge = EngineJudge(cfg.stall_window, cfg.silence_window, cfg.rise, cfg.fall)
        self.load_supported = cfg.load_format != "none"
        self._last_canary = float("-inf")
        self._was_ready = False
        self._canary: asyncio.Task | None = None
        self.child = (ChildProcess("inference", "inference server", cfg.command, data_dir, clock,
                                   on_event, self._exited, cfg.user) if cfg.command else None)
        self._tasks: list[asyncio.Task] = []
        self._http: aiohttp.ClientSession | None = None

    @property
    def ready(self) -> bool:
        return self.judge.ready

    def describe(self) -> dict:
        j = self.judge
        return {"url": self.cfg.url, "ready": j.ready, "verdict": j.verdict,
                "reason": j.reason or None, "pending": j.pending,
                "load_report": self.load_supported, "managed": bool(self.cfg.command),
                "pid": self.child.pid if self.child else None,
                "restarts": self.child.backoff.restarts if self.child else 0}

    @property
    def proc(self) -> asyncio.subprocess.Process | None:
        return self.child.proc if self.child else None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        if self.child:
            self.child.start()
        self._tasks.append(loop.create_task(self._watch_loop()))
        if self.cfg.command:  # a look at the report may wait a whole silence window: not this one
            self._tasks.append(loop.create_task(self._freeze_watch()))

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks, self._canary)
        if self.child:
            await self.child.stop()
        if self._http:
            await self._http.close()

    def _exited(self, cause: str) -> None:
        self._changed(self.judge.down(self.clock.now(), cause))

    async def _watch_loop(self) -> None:
        while True:
            await self._observe()
            now = self.clock.now()
            if self.judge.idle() and now - self._last_canary >= self.cfg.canary_interval \
                    and not (self._canary and not self._canary.done()):
                self._last_canary = now
                self.judge.canary_sent()
                self._canary = asyncio.get_running_loop().create_task(self._canary_round())
            await asyncio.sleep(self.cfg.load_interval if self.load_supported else
                                min(self.cfg.load_interval, self.cfg.canary_interval))

    async def _observe(self) -> None:
        """One look at the engine: its process (managed), then its load report."""
        assert self._http is not None
        if self._frozen():
            return
        if not self.load_supported:
            self._changed(self.judge.tick(self.clock.now()))
            return
        try:
            reading = await read_load(self._http, self.cfg.url + self.cfg.load_path,
                                      self.cfg.load_format, self.cfg.silence_window)
        except ProbeError as e:
            self._probe_failed(e)
            return
        self.on_payloads(reading.payloads)
        self._changed(self.judge.load(self.clock.now(), reading))

    async def _freeze_watch(self) -> None:
        while True:
            self._frozen()
            await asyncio.sleep(self.cfg.load_interval)

    def _frozen(self) -> bool:
        """A managed process the kernel stopped is hung at once, whatever its port says."""
        if self.proc is None or self.proc.returncode is not None:
            return False
        st = procs.state(self.proc.pid)
        if st not in ("T", "t"):
            return False
        self._changed(self.judge.stopped(self.clock.now(), f"engine process {self.proc.pid} is stopped "
                                                           f"(state {st}: SIGSTOP or a debugger)"))
        return True

    def _probe_failed(self, e: ProbeError) -> None:
        now = self.clock.now()
        if e.kind == "silent" and self._frozen():  # the likeliest reason it said nothing
            return
        if e.kind == "unsupported":
            self.load_supported = False
            self.on_event("inference_load_unsupported", f"{e}; judging the engine by canaries alone "
                          f"(set inference.load_format: none to say so)")
        elif e.kind == "refused":
            self._changed(self.judge.refused(now, str(e)))
        else:  # silent, or an answer that is not a reading: no proof either way
            self._changed(self.judge.silent(now, str(e)))

    async def _canary_round(self) -> None:
        ok, detail = await self._canary_request()
        self._changed(self.judge.canary(self.clock.now(), ok, detail))

    async def _canary_request(self) -> tuple[bool, str]:
        assert self._http is not None
        t0 = self.clock.now()
        try:
            async with self._http.post(self.cfg.url + self.cfg.canary_path, data=self.cfg.canary_body,
                                       headers={"Content-Type": "application/json",
                                                "X-Vigil-Canary": "1"},
                                       timeout=aiohttp.ClientTimeout(total=self.cfg.canary_timeout)) as r:
                await r.read()
                if r.status != 200:
                    return False, f"canary answered HTTP {r.status}"
        except asyncio.TimeoutError:
            return False, f"canary timed out after {self.cfg.canary_timeout:g} s (hung engine?)"
        except (aiohttp.ClientError, OSError) as e:
            return False, f"canary failed: {type(e).__name__}"
        return True, f"canary answered in {(self.clock.now() - t0) * 1000:.0f} ms"

    def _changed(self, change: EngineChange | None) -> None:
        if change is None:
            return
        if change.verdict in ("ready", "busy") and self._was_ready:
            return  # ready <-> busy is load, not an event: /status and /metrics show it
        self._was_ready = change.ready
        self.on_change(change.ready, f"{change.verdict}: {change.cause}")


def server_pid(data_dir: Path) -> int | None:
    return child_pid(data_dir, "inference")
