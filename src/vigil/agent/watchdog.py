"""The Linux watchdog for the leader (Patroni's modes: off, automatic, required).

While this node leads, the watchdog device is armed and pet on every
acknowledged keep-alive. If the agent hangs (a stuck event loop, a frozen
process, a kernel stall) the device resets the machine `timeout` seconds
after the last pet: before the lease can expire, so nothing on a hung
leader's machine can act once a successor holds the role. A healthy agent
that merely loses etcd demotes itself first (demote_after < timeout) and
disarms the device, so a standby is never reset. Disarming is the magic
close: write "V", then close.

Contract of the timeout (whole seconds, as the kernel takes it):
demote_after < timeout <= lease_ttl - etcd_timeout; `vigil.core.timing.fitting_timeout()`
finds it, config validation enforces it.

Modes:
- off: the device is never opened.
- automatic: armed when the device can be; otherwise the node leads
  without it, and `/status` and the event log say why.
- required: a node whose device is missing or cannot be armed is unhealthy:
  it never campaigns, and a leader that cannot arm it resigns.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
from typing import Any, Callable

from vigil.core.timing import WATCHDOG_AUTOMATIC, WATCHDOG_MODES, WATCHDOG_OFF, WATCHDOG_REQUIRED
from vigil.errors import VigilError

log = logging.getLogger(__name__)

OFF, AUTOMATIC, REQUIRED, MODES = WATCHDOG_OFF, WATCHDOG_AUTOMATIC, WATCHDOG_REQUIRED, WATCHDOG_MODES
WDIOC_SETTIMEOUT = 0xC0045706  # _IOWR('W', 6, int)


class WatchdogError(VigilError):
    """The watchdog device could not be armed, pet or disarmed."""


class LinuxWatchdogDevice:
    """/dev/watchdog through the kernel's watchdog API."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def usable(self) -> str | None:
        """Why the device cannot be used, without opening (opening arms it)."""
        if not os.path.exists(self.path):
            return f"{self.path} does not exist: load a watchdog driver (a hardware one, or softdog)"
        if not stat.S_ISCHR(os.stat(self.path).st_mode):
            return (f"{self.path} is not a character device: point watchdog.device at the "
                    "watchdog driver's node (/dev/watchdog or /dev/watchdogN)")
        if not os.access(self.path, os.W_OK):
            return f"{self.path} is not writable by this user: run the agent as root or grant access"
        return None

    def arm(self, timeout: int) -> int:
        """Open (which starts the countdown) and set `timeout`; the timeout the driver set."""
        try:
            self._fd = os.open(self.path, os.O_WRONLY)
        except OSError as e:
            raise WatchdogError(f"cannot open {self.path}: {e.strerror}") from None
        try:
            got = fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", timeout))
        except OSError as e:
            self.disarm()
            why = "not a watchdog device" if e.errno == errno.ENOTTY else e.strerror
            raise WatchdogError(f"cannot set the timeout of {self.path}: {why}") from None
        return struct.unpack("i", got)[0]

    def keepalive(self) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, b"1")
        except OSError as e:
            raise WatchdogError(f"cannot pet {self.path}: {e.strerror}") from None

    def disarm(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.write(fd, b"V")  # the magic close: stop the countdown when we close
        except OSError as e:
            log.error("watchdog %s: magic close failed (%s); it may reset this machine", self.path,
                      e.strerror)
        finally:
            os.close(fd)


class Watchdog:
    """The agent's use of one device; `record(kind, cause)` reports to the event log."""

    def __init__(self, mode: str, device: Any, timeout: int | None,
                 record: Callable[..., None] = lambda *a, **k: None):
        self.mode, self.device, self.timeout, self.record = mode, device, timeout, record
        self.armed = False
        self.problem: str | None = None

    def health_reasons(self) -> tuple[str, ...]:
        """Why this node may not lead: only in required mode, only when unusable."""
        if self.mode != REQUIRED:
            return ()
        problem = self.problem or self.device.usable()
        return (f"watchdog required but unusable: {problem} (fix it and restart the agent, or set "
                "watchdog.mode: automatic)",) if problem else ()

    def arm(self) -> bool:
        """On acquiring leadership. False: unusable (the node must resign if required)."""
        if self.mode == OFF or self.armed:
            return True
        try:
            if self.timeout is None:
                raise WatchdogError("no whole-second timeout fits between timing.demote_after and "
                                    "timing.lease_ttl - timing.etcd_timeout; lengthen lease_ttl")
            problem = self.device.usable()
            if problem:
                raise WatchdogError(problem)
            got = self.device.arm(self.timeout)
            if got > self.timeout:
                self.device.disarm()
                raise WatchdogError(f"the driver set a {got} s timeout, longer than the "
                                    f"{self.timeout} s that fits inside the lease")
        except WatchdogError as e:
            self.problem = str(e)
            self.record("watchdog_unavailable", f"{e} (mode {self.mode}: "
                        + ("this node may not lead)" if self.mode == REQUIRED else "leading without it)"))
            return self.mode != REQUIRED
        self.armed, self.problem = True, None
        self.record("watchdog_armed", f"watchdog armed: resets this machine {got} s after the last "
                    "acknowledged keep-alive", timeout=got)
        return True

    def pet(self) -> None:
        if not self.armed:
            return
        try:
            self.device.keepalive()
        except WatchdogError as e:
            self.problem = str(e)
            log.error("%s", e)

    def disarm(self) -> None:
        if self.armed:
            self.device.disarm()
            self.armed = False
            self.record("watchdog_disarmed", "watchdog disarmed: not leading")

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "device": getattr(self.device, "path", None), "timeout": self.timeout,
                "armed": self.armed, "problem": self.problem or (
                    self.device.usable() if self.mode != OFF else None)}
