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
import os
import signal
from pathlib import Path
from typing import Callable

import aiohttp

from vigil.clock import Clock
from vigil.config import InferenceConfig
from vigil.core.engine import EngineChange, EngineJudge
from vigil.core.readiness import Backoff
from vigil import procs
from vigil.errors import ProbeError
from vigil.probes.engine import read_load

log = logging.getLogger(__name__)


class InferenceSupervisor:
    def __init__(self, cfg: InferenceConfig, data_dir: Path, clock: Clock,
                 on_change: Callable[[bool, str], None], on_event: Callable[..., None]):
        self.cfg, self.data_dir, self.clock = cfg, data_dir, clock
        self.on_change, self.on_event = on_change, on_event
        self.judge = EngineJudge(cfg.stall_window, cfg.silence_window, cfg.rise, cfg.fall)
        self.load_supported = cfg.load_format != "none"
        self._last_canary = float("-inf")
        self._was_ready = False
        self._canary: asyncio.Task | None = None
        self.backoff = Backoff()
        self.proc: asyncio.subprocess.Process | None = None
        self.pid_file = data_dir / "inference.pid"
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
                "pid": self.proc.pid if self.proc and self.proc.returncode is None else None,
                "restarts": self.backoff.restarts}

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        if self.cfg.command:
            self._stop_orphan()
            self._tasks.append(loop.create_task(self._run_loop()))
        self._tasks.append(loop.create_task(self._watch_loop()))
        if self.cfg.command:  # a look at the report may wait a whole silence window: not this one
            self._tasks.append(loop.create_task(self._freeze_watch()))

    async def stop(self) -> None:
        for t in self._tasks + ([self._canary] if self._canary else []):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.pid_file.unlink(missing_ok=True)
        if self._http:
            await self._http.close()

    def _stop_orphan(self) -> None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return
        marker = " ".join(self.cfg.command[1:]) or self.cfg.command[0]
        if procs.owns(pid, marker):
            log.warning("stopping inference server %d left by an earlier agent", pid)
            procs.stop(pid, marker, grace=3.0)

    async def _run_loop(self) -> None:
        while True:
            log_file = open(self.data_dir / "inference.log", "ab")
            try:
                # The file holds the current fencing token while this node leads; a process
                # that acts for the leader sends it with every command (vigil.fencing).
                env = {**os.environ, "VIGIL_FENCING_TOKEN_FILE": str(self.data_dir / "fencing-token")}
                self.proc = await asyncio.create_subprocess_exec(
                    *self.cfg.command, stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True, env=env,
                    **procs.run_as(self.cfg.user))
            except OSError as e:
                log_file.close()
                self._changed(self.judge.down(self.clock.now(), f"cannot start: {e}"))
                await asyncio.sleep(self.backoff.next_delay(self.clock.now()))
                continue
            log_file.close()
            self.pid_file.write_text(str(self.proc.pid))
            self.backoff.started(self.clock.now())
            self.on_event("inference_started", f"inference server started (pid {self.proc.pid})",
                          pid=self.proc.pid)
            code = await self.proc.wait()
            cause = f"inference server exited with status {code}"
            self._changed(self.judge.down(self.clock.now(), cause))
            delay = self.backoff.next_delay(self.clock.now())
            self.on_event("inference_exited", f"{cause}; restarting in {delay:g} s", status=code,
                          restart_in=delay)
            await asyncio.sleep(delay)

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
    try:
        pid = int((data_dir / "inference.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if procs.alive(pid) else None



