"""The host's side of vigil.testing.machines: each machine's own cgroup (nspawn and
everything its machine runs are in it, so a machine is killed whole even before
its init is known), `ip` and /proc look-ups, and `sweep_stale`, which removes
what a killed run left (machines, namespaces, bridges, work directories), by the
owner PID encoded in every name."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from vigil.testing.rootfs import MachineError, _unmount_under, wait_for


def _status(pid: int | str) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _pidns(pid: int | str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and r.returncode:
        raise MachineError(f"ip {' '.join(args)} -> {r.returncode}: {r.stderr.strip()}")
    return r


class _Cgroup:
    """A machine's own cgroup in the hierarchies systemd uses (name=systemd + unified on this
    hybrid host, /sys/fs/cgroup on a pure v2 one): nspawn and its whole machine run in it."""

    def __init__(self, key: str):
        v1 = [Path("/sys/fs/cgroup", h) for h in ("systemd", "unified")
              if os.path.ismount(f"/sys/fs/cgroup/{h}")]
        self.dirs = [p / "vigil-test" / key for p in (v1 or [Path("/sys/fs/cgroup")])]

    def create(self) -> list[str]:
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> list[int]:
        pids: list[int] = []
        for d, _, _ in os.walk(self.dirs[0]):
            with contextlib.suppress(OSError):  # a sub-cgroup went away while we read
                pids += map(int, Path(d, "cgroup.procs").read_text().split())
        return pids

    def kill(self) -> None:
        """SIGKILL everything in it (cgroup.kill where the kernel has it)."""
        if (kill := self.dirs[-1] / "cgroup.kill").exists():
            kill.write_text("1")
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        wait_for(lambda: not self.pids(), 30, f"cgroup {self.dirs[0]} to empty", 0.02)
        for d in self.dirs:
            for sub, _, _ in os.walk(d, topdown=False):
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(sub)


def _dead(tag: str) -> bool:
    """Whether the process that made resources tagged `tag` (hex PID + a letter) is gone."""
    try:
        return not os.path.exists(f"/proc/{int(tag[:-1], 16)}")
    except ValueError:
        return False


def sweep_stale() -> None:
    """Remove what a killed run (its PID gone) left: machines, netns, bridges, default workdirs.
    Only where this process sees every PID (it is in the initial PID namespace)."""
    if _pidns("self") != "pid:[4026531836]":  # the kernel's initial PID namespace (fixed inode)
        return
    for d in _Cgroup("-").dirs[0].parent.glob("*.*"):
        if d.is_dir() and _dead(d.name.split(".")[0]):
            (cg := _Cgroup(d.name)).kill()
            cg.remove()
    for work in Path(tempfile.gettempdir()).glob("vigil-machines-*-*"):
        if _dead(work.name.split("-")[2]):
            _unmount_under(work)
            shutil.rmtree(work, ignore_errors=True)
    for ns in _ip("netns", "list").stdout.split():
        if ns.startswith("vg-") and _dead(ns.rsplit("-", 1)[1]):
            _ip("netns", "del", ns, check=False)
    links = _ip("-o", "link", "show").stdout
    # A client's host-side veth goes with its namespace, but the kernel frees that
    # namespace asynchronously: delete it by name, as Client.close does.
    for veth, tag in re.findall(r"^\d+: (vgc([0-9a-f]+[g-z])\d+)[@:]", links, re.M):
        if _dead(tag):
            _ip("link", "del", veth, check=False)
    for br in re.findall(r"^\d+: (vgbr\w+)", links, re.M):
        if _dead(br[4:]):
            _ip("link", "del", br, check=False)
