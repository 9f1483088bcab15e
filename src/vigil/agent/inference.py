"""InferenceSupervisor: the node's inference server as a resource.

- With `command`, the agent starts the server (its own session, output to
  `<data_dir>/inference.log`, PID in `<data_dir>/inference.pid`), restarts it
  with back-off when it exits, and stops it when the agent stops. A server
  left behind by an earlier incarnation of the agent (SIGKILLed agent) is
  stopped first, by the PID in the file and only if its command line still
  matches.
- Readiness is deep: every `canary_interval` a real inference request with a
  `canary_timeout`; a hung engine (SIGSTOPped server, deadlocked GPU) fails
  its canaries and is marked not ready even though its process lives.
- Each readiness change calls `on_change(ready, cause)`.
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
from vigil.core.readiness import Backoff, ReadinessTracker
from vigil import procs

log = logging.getLogger(__name__)


class InferenceSupervisor:
    def __init__(self, cfg: InferenceConfig, data_dir: Path, clock: Clock,
                 on_change: Callable[[bool, str], None], on_event: Callable[..., None]):
        self.cfg, self.data_dir, self.clock = cfg, data_dir, clock
        self.on_change, self.on_event = on_change, on_event
        self.tracker = ReadinessTracker(cfg.rise, cfg.fall)
        self.backoff = Backoff()
        self.proc: asyncio.subprocess.Process | None = None
        self.pid_file = data_dir / "inference.pid"
        self._tasks: list[asyncio.Task] = []
        self._http: aiohttp.ClientSession | None = None

    @property
    def ready(self) -> bool:
        return self.tracker.ready

    def describe(self) -> dict:
        return {"url": self.cfg.url, "ready": self.tracker.ready,
                "reason": self.tracker.reason or None, "managed": bool(self.cfg.command),
                "pid": self.proc.pid if self.proc and self.proc.returncode is None else None,
                "restarts": self.backoff.restarts}

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        if self.cfg.command:
            self._stop_orphan()
            self._tasks.append(loop.create_task(self._run_loop()))
        self._tasks.append(loop.create_task(self._canary_loop()))

    async def stop(self) -> None:
        for t in self._tasks:
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
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True, env=env)
            except OSError as e:
                log_file.close()
                self._changed(self.tracker.down(self.clock.now(), f"cannot start: {e}"))
                await asyncio.sleep(self.backoff.next_delay(self.clock.now()))
                continue
            log_file.close()
            self.pid_file.write_text(str(self.proc.pid))
            self.backoff.started(self.clock.now())
            self.on_event("inference_started", f"inference server started (pid {self.proc.pid})",
                          pid=self.proc.pid)
            code = await self.proc.wait()
            cause = f"inference server exited with status {code}"
            self._changed(self.tracker.down(self.clock.now(), cause))
            delay = self.backoff.next_delay(self.clock.now())
            self.on_event("inference_exited", f"{cause}; restarting in {delay:g} s", status=code,
                          restart_in=delay)
            await asyncio.sleep(delay)

    async def _canary_loop(self) -> None:
        while True:
            ok, detail = await self._canary()
            self._changed(self.tracker.canary(ok, self.clock.now(), detail))
            await asyncio.sleep(self.cfg.canary_interval)

    async def _canary(self) -> tuple[bool, str]:
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

    def _changed(self, change) -> None:
        if change is not None:
            self.on_change(change.ready, change.cause)


def server_pid(data_dir: Path) -> int | None:
    try:
        pid = int((data_dir / "inference.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if procs.alive(pid) else None



