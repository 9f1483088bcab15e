"""A long-lived `ipmitool shell` to one BMC: the RMCP+ session is opened once,
ahead of need, so a fence costs two commands on an open session (power off,
power status: 15 ms on ipmi_sim here) instead of a process start and a
four-message handshake (55-110 ms), which sat on the takeover's critical path.

Contract:
- `open()` starts ipmitool and proves the session works with one status read;
  it raises FencingFailed (and leaves nothing running) when it does not.
- `command()` runs one command and returns its output. Any failure (no answer
  within the timeout, ipmitool gone, a BMC that dropped the session) closes
  the shell and raises FencingFailed: the caller falls back to a fresh
  one-shot ipmitool, so a stale session can cost time but never a wrong answer
  (every command it runs is idempotent: power off, power status).
- ipmitool dies with the agent, even a SIGKILLed one: it runs under
  `setpriv --pdeathsig KILL` (util-linux). It must: an `ipmitool shell` whose
  stdin reaches EOF does not exit but spins at ~40 % of a core (measured
  here), so EOF alone would leave one spinning process per dead agent.
  `close()` sends `exit`, then kills it if it is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil

from vigil.errors import FencingFailed

PROMPT = b"ipmitool> "


class IpmiShell:
    def __init__(self, argv: list[str], env: dict[str, str], name: str, timeout: float):
        self.argv, self.env, self.name, self.timeout = argv, env, name, timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def open(self) -> None:
        setpriv = shutil.which("setpriv", path=self.env.get("PATH"))
        if setpriv is None:
            raise FencingFailed(f"{self.name}: setpriv (util-linux) is missing: a kept BMC session "
                                "needs it to die with the agent; fences use one-shot ipmitool")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                setpriv, "--pdeathsig", "KILL", "--", *self.argv, "shell", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env)
        except OSError as e:
            raise FencingFailed(f"{self.name}: cannot run {self.argv[0]}: {e.strerror} "
                                "(apt-get install ipmitool)") from None
        await self._until_prompt("start")
        out = await self.command("chassis power status")
        if "Chassis Power is" not in out:
            await self.close()
            raise FencingFailed(f"{self.name}: the BMC session did not open: {_last_line(out)}")

    async def command(self, line: str) -> str:
        """The output of one command (its echo and the prompt removed)."""
        async with self._lock:
            if not self.is_open:
                raise FencingFailed(f"{self.name}: no open BMC session")
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write(line.encode() + b"\n")
                await self._proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                await self.close()
                raise FencingFailed(f"{self.name}: ipmitool shell exited") from None
            out = await self._until_prompt(line)
        echo, _, rest = out.partition("\n")
        return rest if echo.strip() == line else out

    async def _until_prompt(self, what: str) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            data = await asyncio.wait_for(self._proc.stdout.readuntil(PROMPT), self.timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise FencingFailed(f"{self.name}: no answer to {what!r} within {self.timeout:g} s") from None
        except asyncio.IncompleteReadError as e:
            await self.close()
            raise FencingFailed(f"{self.name}: ipmitool shell exited during {what!r}: "
                                f"{_last_line(e.partial.decode(errors='replace'))}") from None
        return data[:-len(PROMPT)].decode(errors="replace")

    async def close(self) -> None:
        """Stop ipmitool (`exit` first, so it closes the BMC session; then SIGKILL)."""
        p, self._proc = self._proc, None
        if p is None or p.returncode is not None:
            return
        with contextlib.suppress(Exception):
            p.stdin.write(b"exit\n")
            p.stdin.close()
        try:
            await asyncio.wait_for(p.wait(), 1.0)
        except asyncio.TimeoutError:
            p.kill()
            await p.wait()


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"
