"""ChildProcess: a process the agent keeps running on its node (the
inference server, the node's router).

Contract:
- `start()` first stops a process left by an earlier incarnation of the
  agent (a SIGKILLed agent leaves its children running): by the PID in
  `<data_dir>/<name>.pid`, and only if that PID's command line still names
  the command (a recycled PID is left alone). It then runs the command in
  its own session, output appended to `<data_dir>/<name>.log` (kept under
  16 MiB plus one rotated `.log.1`, checked every `log_check` seconds and at
  each start: vigil.logfile.cap), and restarts
  it with back-off (0.5 s doubling to 30 s, reset after 60 s up) whenever it
  exits. Each start and exit is an event (`<name>_started`, `<name>_exited`)
  and calls `on_exit(cause)` on exit or on a failed start.
- `stop()` stops it: SIGCONT (a frozen process cannot act on SIGTERM), then
  SIGTERM, then SIGKILL after `grace` seconds; the PID file is removed.
- The child's environment names the fencing-token file
  (`VIGIL_FENCING_TOKEN_FILE`): a process acting for the leader sends the
  current token with every command (vigil.resources.guard).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Callable

from vigil import procs
from vigil.clock import Clock
from vigil.core.readiness import Backoff
from vigil.logfile import LOG_MAX_BYTES, cap
from vigil.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class ChildProcess:
    def __init__(self, name: str, label: str, command: list[str], data_dir: Path, clock: Clock,
                 on_event: Callable[..., None], on_exit: Callable[[str], None] = lambda cause: None,
                 user: str | None = None, grace: float = 5.0, log_max: int = LOG_MAX_BYTES,
                 log_check: float = 10.0, ignore: tuple[int, ...] = ()):
        """`ignore`: signals the child starts with ignored, until it installs its own
        handlers (the router's SIGHUP and SIGUSR1: their default action would end a
        router the agent signals in the second it takes to start)."""
        self.name, self.label, self.command = name, label, list(command)
        self.log_path, self.log_max, self.log_check = data_dir / f"{name}.log", log_max, log_check
        self.data_dir, self.clock, self.user, self.grace = data_dir, clock, user, grace
        self.on_event, self.on_exit, self.ignore = on_event, on_exit, ignore
        self.backoff = Backoff()
        self.proc: asyncio.subprocess.Process | None = None
        self.pid_file = data_dir / f"{name}.pid"
        self._task: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.returncode is None else None

    def describe(self) -> dict:
        return {"pid": self.pid, "restarts": self.backoff.restarts}

    def start(self) -> None:
        self._stop_orphan()
        self._task = asyncio.get_running_loop().create_task(self._run_loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), self.grace)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.pid_file.unlink(missing_ok=True)

    def _marker(self) -> str:
        return " ".join(self.command[1:]) or self.command[0]

    def _stop_orphan(self) -> None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return
        if procs.owns(pid, self._marker()):
            log.warning("stopping %s %d left by an earlier agent", self.label, pid)
            procs.stop(pid, self._marker(), grace=3.0)

    async def _run_loop(self) -> None:
        while True:
            try:
                self.proc = await self._spawn()
            except Exception as e:  # noqa: BLE001 - any failure to spawn is retried, never the end
                log.error("cannot start the %s: %s: %s", self.label, type(e).__name__, e)
                self.on_exit(f"cannot start: {type(e).__name__}: {e}")
                await asyncio.sleep(self.backoff.next_delay(self.clock.now()))
                continue
            self.pid_file.write_text(str(self.proc.pid))
            self.backoff.started(self.clock.now())
            self.on_event(f"{self.name}_started", f"{self.label} started (pid {self.proc.pid})",
                          pid=self.proc.pid)
            code = await self._wait_capping_log(self.proc)
            cause = f"{self.label} exited with status {code}"
            self.on_exit(cause)
            delay = self.backoff.next_delay(self.clock.now())
            self.on_event(f"{self.name}_exited", f"{cause}; restarting in {delay:g} s", status=code,
                          restart_in=delay)
            await asyncio.sleep(delay)

    async def _wait_capping_log(self, proc: asyncio.subprocess.Process) -> int:
        """`proc`'s exit status; meanwhile its output file stays bounded (a chatty or
        looping server must not fill the disk the agent keeps its state on)."""
        done = asyncio.ensure_future(proc.wait())
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(done), self.log_check)
                except asyncio.TimeoutError:
                    self._cap_log()
        finally:
            done.cancel()

    def _cap_log(self) -> None:
        try:
            if cap(self.log_path, self.log_max):
                log.info("%s rotated to %s.1 (over %d bytes)", self.log_path, self.log_path.name, self.log_max)
        except OSError as e:
            log.warning("cannot rotate %s: %s", self.log_path, e)

    async def _spawn(self) -> asyncio.subprocess.Process:
        self._cap_log()
        with open(self.log_path, "ab") as log_file:
            env = {**os.environ, "VIGIL_FENCING_TOKEN_FILE": str(self.data_dir / "fencing-token")}
            return await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True, env=env,
                **procs.run_as(self.user, self.ignore))


def child_pid(data_dir: Path, name: str) -> int | None:
    """PID of the node's `name` child now, from its PID file (None: not running)."""
    try:
        pid = int((data_dir / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if procs.alive(pid) else None
