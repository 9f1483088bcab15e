"""Fence devices: power a node off and *prove* it is off.

Contract of every FenceDevice:
- `status()` returns "on" or "off", or raises FencingFailed when the device
  cannot say (never a guess).
- `fence()` powers the node off and then polls `status()` until it reads
  "off" within `verify_timeout`; only then does it return. Anything else
  raises FencingFailed: the caller must treat the node as possibly alive
  (roles stay blocked until an operator confirms it is off).
- NullDevice cannot power anything off; it says so in every answer, and
  `fence()` always fails: it exists so a development cluster can be
  configured and loudly reported, never to pretend.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import re

import aiohttp

from vigil.errors import FencingFailed
from vigil.stonith.ipmi_shell import IpmiShell

log = logging.getLogger(__name__)

__all__ = ["FencingFailed", "FenceDevice", "IpmiDevice", "NullDevice", "RedfishDevice", "make_device"]


class FenceDevice(abc.ABC):
    name = "device"
    verify_timeout = 10.0

    @abc.abstractmethod
    async def status(self) -> str: ...

    @abc.abstractmethod
    async def power_off(self) -> None: ...

    @abc.abstractmethod
    async def power_on(self) -> None: ...

    async def open_session(self) -> None:
        """Prepare what a fence needs ahead of time; raises FencingFailed when the
        device cannot be reached. Devices without sessions have nothing to do."""

    async def close(self) -> None:
        """Release what `open_session` holds."""

    async def fence(self) -> None:
        """Power the node off and verify it reads off (within `verify_timeout`).
        Raises FencingFailed. A refused power-off of a node that already reads off
        is a fence done: another standby fenced it a moment before (two may, when
        their views differ), and some BMCs refuse ForceOff of a node that is off."""
        try:
            await self.power_off()
        except FencingFailed:
            try:
                off = await self.status() == "off"
            except FencingFailed:
                off = False
            if not off:
                raise
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.verify_timeout
        while True:
            if await self.status() == "off":
                return
            if loop.time() >= deadline:
                raise FencingFailed(f"{self.name}: power off was sent but the node still reads 'on' "
                                    f"after {self.verify_timeout:g} s")
            await asyncio.sleep(0.05)


class NullDevice(FenceDevice):
    name = "null (no fencing device configured)"

    async def status(self) -> str:
        raise FencingFailed("no fencing device is configured: the node's power state is unknown")

    async def power_off(self) -> None:
        raise FencingFailed("no fencing device is configured: power it off by hand, then run "
                            "`vigil fence NODE --confirm-off`")

    async def power_on(self) -> None:
        raise FencingFailed("no fencing device is configured")


class IpmiDevice(FenceDevice):
    """IPMI over LAN through ipmitool (`-I lanplus -C 3`: ipmi_sim and most BMCs)."""

    def __init__(self, host: str, port: int, user: str, password: str, timeout: float = 5.0,
                 ipmitool: str = "ipmitool", cipher: int = 3):
        self.host, self.port, self.user, self.password = host, port, user, password
        self.timeout, self.ipmitool, self.cipher = timeout, ipmitool, cipher
        self.name = f"ipmi {host}:{port}"
        self._shell: IpmiShell | None = None

    def _argv(self) -> list[str]:
        return [self.ipmitool, "-I", "lanplus", "-C", str(self.cipher), "-H", self.host,
                "-p", str(self.port), "-U", self.user, "-E", "-N", "1", "-R", "2"]

    def _env(self) -> dict[str, str]:
        return {"IPMI_PASSWORD": self.password, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}

    async def open_session(self) -> None:
        """Open (or keep) the BMC session a fence will use: an `ipmitool shell`
        whose session is established now, not on the takeover's critical path."""
        if self._shell is None or not self._shell.is_open:
            shell = IpmiShell(self._argv(), self._env(), self.name, self.timeout)
            await shell.open()
            self._shell = shell

    async def close(self) -> None:
        if self._shell is not None:
            await self._shell.close()
            self._shell = None

    async def _shell_command(self, *lines: str) -> str | None:
        """The output of `lines` over the open session; None when there is none
        or it failed (the caller then runs a one-shot ipmitool)."""
        if self._shell is None or not self._shell.is_open:
            return None
        try:
            return "".join([await self._shell.command(line) for line in lines])
        except FencingFailed as e:
            log.info("%s: open session failed, using a new one: %s", self.name, e)
            return None

    async def _run(self, *args: str, stdin: bytes | None = None) -> str:
        cmd = [*self._argv(), *args]
        # `exec /dev/stdin` must open its stdin by path: a real pipe, not asyncio's socket.
        r, w = os.pipe() if stdin else (asyncio.subprocess.DEVNULL, -1)
        if stdin:
            os.write(w, stdin)  # a few bytes: within the pipe's buffer
            os.close(w)
        try:
            p = await asyncio.create_subprocess_exec(
                *cmd, stdin=r, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=self._env())
        except OSError as e:
            raise FencingFailed(f"{self.name}: cannot run {self.ipmitool}: {e.strerror} "
                                "(apt-get install ipmitool)") from None
        finally:
            if stdin:
                os.close(r)
        try:
            out, err = await asyncio.wait_for(p.communicate(), self.timeout)
        except asyncio.TimeoutError:
            p.kill()
            await p.wait()
            raise FencingFailed(f"{self.name}: no answer within {self.timeout:g} s") from None
        if p.returncode != 0:
            msg = (err or out).decode(errors="replace").strip().splitlines()
            raise FencingFailed(f"{self.name}: ipmitool {' '.join(args)} failed: "
                                f"{msg[-1] if msg else 'exit ' + str(p.returncode)}")
        return out.decode(errors="replace")

    async def status(self) -> str:
        out = await self._shell_command("chassis power status")
        return self._power(out if out is not None else await self._run("chassis", "power", "status"))

    def _power(self, out: str) -> str:
        m = re.findall(r"Chassis Power is (on|off)", out)
        if not m:
            raise FencingFailed(f"{self.name}: unexpected power status answer {out.strip()!r}")
        return m[-1]

    async def fence(self) -> None:
        """Power off and read the status back in one IPMI session (one RMCP+
        handshake, not two: the fence is on the takeover's critical path);
        a BMC that still reads "on" is then polled as every device is. With a
        session opened ahead (`open_session`) not even that handshake is paid."""
        out = await self._shell_command("chassis power off", "chassis power status")
        if out is None or "Chassis Power is" not in out:
            out = await self._run("exec", "/dev/stdin", stdin=b"chassis power off\nchassis power status\n")
        if self._power(out) != "off":
            await super().fence()

    async def power_off(self) -> None:
        await self._run("chassis", "power", "off")

    async def power_on(self) -> None:
        await self._run("chassis", "power", "on")


class RedfishDevice(FenceDevice):
    """Redfish `ComputerSystem.Reset` (ForceOff / On) and `PowerState`."""

    def __init__(self, base_url: str, system: str, user: str = "", password: str = "",
                 timeout: float = 5.0, verify_timeout: float = 15.0):
        self.base, self.system, self.timeout = base_url.rstrip("/"), system, timeout
        self.verify_timeout = verify_timeout  # BMCs apply power changes seconds later
        self.auth = aiohttp.BasicAuth(user, password) if user else None
        self.name = f"redfish {self.base}/redfish/v1/Systems/{system}"

    async def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        url = f"{self.base}/redfish/v1/Systems/{self.system}{path}"
        try:
            async with aiohttp.ClientSession(auth=self.auth) as http:
                async with http.request(method, url, json=body,
                                        timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                    text = await r.text()
                    if r.status >= 300:
                        raise FencingFailed(f"{self.name}: {method} {path or '/'} answered HTTP "
                                            f"{r.status}: {text[:200]}")
                    doc = await r.json(content_type=None) if text.strip() else {}
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, RecursionError) as e:
            raise FencingFailed(f"{self.name}: {type(e).__name__}: {e}") from None
        if not isinstance(doc, dict):  # a BMC's answer is untrusted: a list would fail later, unnamed
            raise FencingFailed(f"{self.name}: {method} {path or '/'} answered {type(doc).__name__}, "
                                "not a JSON object")
        return doc

    async def status(self) -> str:
        state = (await self._request("GET", "")).get("PowerState")
        if state not in ("On", "Off"):
            raise FencingFailed(f"{self.name}: PowerState is {state!r}, neither On nor Off")
        return state.lower()

    async def power_off(self) -> None:
        await self._request("POST", "/Actions/ComputerSystem.Reset", {"ResetType": "ForceOff"})

    async def power_on(self) -> None:
        await self._request("POST", "/Actions/ComputerSystem.Reset", {"ResetType": "On"})


def make_device(spec: dict) -> FenceDevice:
    """A device from one validated `fencing.topology` entry."""
    kind = spec["type"]
    if kind == "ipmi":
        return IpmiDevice(spec["host"], spec["port"], spec["user"], str(spec.get("password", "")),
                          timeout=float(spec.get("timeout", 5.0)))
    if kind == "redfish":
        return RedfishDevice(spec["url"], str(spec.get("system", "1")), str(spec.get("user", "")),
                             str(spec.get("password", "")), timeout=float(spec.get("timeout", 5.0)))
    return NullDevice()
