"""Real systemd machines for deployment tests: systemd-nspawn containers that
boot Debian 12's systemd on a host bridge, each on its own persistent overlay.

Contract:
- `ensure_rootfs(cache, packages)`: a bookworm root made once by `debootstrap
  --variant=minbase --include=...` (mirror: $VIGIL_DEBIAN_MIRROR or the host's
  apt sources, read at run time) in a temp dir under `cache`, configured
  (NO_AUTOSTART units disabled, systemd-networkd enabled, no machine-id, no apt
  cache) and renamed to `bookworm-<hash of recipe and packages>`: only a finished
  root has that name. An flock (inherited by debootstrap) serialises builders.
  A cached root is returned at once and is never written afterwards.
- `Machines(root, subnet, workdir)`, a context manager: a host bridge with
  `<subnet>.254/24`; `boot(name, index)` / `boot_all([(name, index), ...])`
  mount an overlay (lower: root; upper: `workdir/<name>/`, kept across power-offs
  and crashes), write the machine-id (once), hostname, /etc/hosts (every machine)
  and a systemd-networkd file giving host0 `<subnet>.<index>/24` (so the address
  is up before network-online.target, on every boot), run `systemd-nspawn --boot`
  on it, and return when `systemctl is-system-running` says running or degraded
  (`Machine.failed_units` then names the failures). `client()`: a network
  namespace on the bridge. Closing (also on exceptions and at interpreter exit)
  SIGKILLs every machine's init, waits for nspawn, unmounts, and deletes the
  clients, bridge, veths, cgroups and layers. A run killed before it could close
  is swept by the next `Machines()` (`sweep_stale`), found by its dead PID.

What makes nspawn work here (PID 1 is not systemd; cgroup v1 with the systemd
hierarchies name=systemd and a cgroup2 at /sys/fs/cgroup/unified; systemd 252):
- `--register=no --keep-unit` (no machined, no host bus); nsenter, not machinectl;
- each nspawn is moved, before exec, into its own cgroup `vigil-test/<tag>.<name>`
  in both systemd hierarchies. With --keep-unit nspawn uses its caller's cgroup:
  without this every machine's systemd shares /payload/init.scope and
  /system.slice (measured: they saw each other's units, one came up degraded)
  and nspawn leaves /payload and /supervisor in the host's root cgroup. nspawn
  picks the hybrid layout itself; no SYSTEMD_NSPAWN_UNIFIED_HIERARCHY needed.
  The cgroup is also the kill switch (cgroup.kill) when init is not known yet;
- the nspawn machine name is `<name>-<tag>`, so the host veth `vb-<name>-<tag>`
  never collides with another run's (nspawn hashes long ones); `--hostname=<name>`;
- killing only nspawn leaves the machine's systemd running, orphaned: every stop
  signals init (SIGRTMIN+4 poweroff, SIGKILL crash).
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)
from vigil.testing.machine_host import _Cgroup, _ip, _pidns, _status, sweep_stale
from vigil.testing.rootfs import (DEFAULT_PACKAGES, MachineError, _sh, _tool, _unmount_under, debian_mirror,
                                 ensure_rootfs, wait_for)

# the root file system's part lives in vigil.testing.rootfs; callers import it from here too
__all__ = ["DEFAULT_PACKAGES", "Client", "Machine", "MachineError", "Machines", "debian_mirror", "ensure_rootfs",
           "sweep_stale", "wait_for"]

ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}


def _as_argv(cmd: str | Sequence[str]) -> list[str]:
    return ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)


def _completed(argv: list[str], r: subprocess.CompletedProcess, check: bool, where: str):
    out = subprocess.CompletedProcess(argv, r.returncode, r.stdout.decode(errors="replace"),
                                      r.stderr.decode(errors="replace"))
    if check and r.returncode:
        raise MachineError(f"{where}: {argv!r} exited {r.returncode}\n"
                           f"--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}")
    return out


class Machine:
    """One machine of a Machines; its persistent layer is `workdir/<name>/{upper,work}`."""

    def __init__(self, owner: Machines, name: str, index: int):
        self.owner, self.name, self.index = owner, name, index
        self.address = f"{owner.subnet}.{index}"
        self.layer = owner.workdir / name
        self.mountpoint = self.layer / "root"
        self.cgroup = _Cgroup(f"{owner.tag}.{name}")
        self.proc: subprocess.Popen | None = None
        self.init_pid, self.pidns, self.state = 0, "", "off"
        self.failed_units: list[str] = []

    @property
    def nspawn_pid(self) -> int:
        return self.proc.pid if self.proc else 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run(self, cmd: str | Sequence[str], timeout: float = 60, check: bool = True,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        """`cmd` in all the machine's namespaces (str: `sh -c`); stdout/stderr decoded."""
        if not (self.running and self.init_pid):
            raise MachineError(f"{self.name} is not running")
        argv = _as_argv(cmd)
        r = subprocess.run([self.owner.nsenter, "-t", str(self.init_pid), "-a", *argv], env=ENV,
                           input=input, capture_output=True, timeout=timeout)
        return _completed(argv, r, check, self.name)

    def net_run(self, cmd: Sequence[str], timeout: float = 5) -> subprocess.CompletedProcess | None:
        """A host program in the machine's network namespace only (None if it cannot run
        now). For polling a machine that may be shutting down: a process that entered
        its mount and PID namespaces (`run`) can hang there and hold its shutdown up."""
        if not (self.running and self.init_pid):
            return None
        try:
            return subprocess.run([self.owner.nsenter, "-t", str(self.init_pid), "-n", *cmd], env=ENV,
                                  capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            return None

    def put(self, path: str, data: bytes, mode: int = 0o600, owner: str = "root") -> None:
        """Write `data` to `path` in the machine (parents made; replaced atomically)."""
        script = ('set -e; mkdir -p "$(dirname "$1")"; t="$1.vigil-put"; cat > "$t"; '
                  'chmod "$2" "$t"; chown "$3" "$t"; mv -f "$t" "$1"')
        self.run(["sh", "-c", script, "put", path, format(mode, "o"), owner], input=data)

    def copy_in(self, host_path: str | Path, path: str, mode: int = 0o600,
                owner: str = "root") -> None:
        self.put(path, Path(host_path).read_bytes(), mode, owner)

    def journal(self, unit: str, lines: int = 200) -> str:
        return self.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager",
                         "-o", "short-precise"], check=False).stdout

    def processes(self) -> list[int]:
        """Host PIDs of the processes in this machine's PID namespace (of its last boot)."""
        if not self.pidns:
            return []
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and _pidns(p) == self.pidns]

    def pid_of(self, unit: str) -> int:
        """The host PID of `unit`'s main process (e.g. to SIGSTOP it from the host)."""
        main = self.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()
        if main in ("", "0"):
            raise MachineError(f"{unit} has no main process in {self.name}")
        for pid in self.processes():
            if _status(pid).get("NSpid", "").split()[-1:] == [main]:
                return pid
        raise MachineError(f"{unit}'s PID {main} in {self.name} not found on the host")

    def poweroff(self, wait: bool = True, timeout: float = 60) -> None:
        """systemd's poweroff (SIGRTMIN+4 to its init); with `wait`, until nspawn exits."""
        if self.running:
            if not (pid := self.init_pid or self._find_init()):
                raise MachineError(f"{self.name} has no init yet")
            os.kill(pid, signal.SIGRTMIN + 4)
        if wait and self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.crash()
                raise MachineError(f"{self.name} did not power off in {timeout:g} s; killed it")
            self._stopped()

    def crash(self) -> None:
        """SIGKILL the machine's init: every process in it dies at once; nspawn then exits."""
        if self.running:
            if pid := self.init_pid or self._find_init():
                os.kill(pid, signal.SIGKILL)
            else:  # nspawn is still setting up: kill its whole cgroup
                self.cgroup.kill()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.cgroup.kill()
                self.proc.wait(30)
        self._stopped()

    def _stopped(self) -> None:
        self.cgroup.kill()  # nspawn has exited: anything left in its cgroup is an orphan
        self.cgroup.remove()
        self.init_pid, self.state = 0, "off"
        _unmount_under(self.mountpoint)

    def _prepare_layer(self) -> None:
        """Mount the overlay (lower: the cached root) and write what every boot needs."""
        for d in ("upper", "work", "root"):
            (self.layer / d).mkdir(parents=True, exist_ok=True)
        _sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={self.owner.root},upperdir="
            f"{self.layer / 'upper'},workdir={self.layer / 'work'}", str(self.mountpoint))
        etc = self.mountpoint / "etc"
        if not (etc / "machine-id").exists():
            (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
        (etc / "hostname").write_text(self.name + "\n")
        (etc / "hosts").write_text(self.owner.hosts_text())
        (etc / "systemd/network/10-vigil-host0.network").write_text(
            f"[Match]\nName=host0\n\n[Network]\nAddress={self.address}/24\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")

    def _start(self) -> None:
        if self.running:
            raise MachineError(f"{self.name} is already running")
        if self.proc is not None:
            self._stopped()  # powered off without waiting: tidy its last boot first
        self._prepare_layer()
        cmd = [self.owner.nspawn, "-q", "-D", str(self.mountpoint), "--boot", "--register=no",
               "--keep-unit", f"--machine={self.name}-{self.owner.tag}", f"--hostname={self.name}",
               f"--network-bridge={self.owner.bridge}", "--link-journal=no",
               "--resolv-conf=off", "--timezone=off", "--console=read-only"]
        procs = self.cgroup.create()
        with open(self.layer / "console.log", "ab") as console:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=lambda: [Path(f).write_text(str(os.getpid()))
                                                             for f in procs])
        self.init_pid, self.pidns, self.state, self.failed_units = 0, "", "starting", []

    def _find_init(self) -> int:
        """The container's PID 1: nspawn's child whose PID in its namespace is 1."""
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            st = _status(pid)
            if st.get("PPid") == str(self.proc.pid) and st.get("NSpid", "").split()[1:] == ["1"]:
                return int(pid)
        return 0

    def _system_state(self) -> str:
        if not self.running:
            raise MachineError(f"{self.name}: systemd-nspawn exited {self.proc.returncode} while "
                               f"booting\n{self.console_tail()}")
        if not self.init_pid and (pid := self._find_init()):
            self.init_pid, self.pidns = pid, _pidns(pid)
        if self.init_pid:  # "offline" until systemd listens; "starting" until boot is done
            self.state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
        if self.state in ("maintenance", "stopping"):
            raise MachineError(f"{self.name} is {self.state}\n{self.console_tail()}")
        return self.state if self.state in ("running", "degraded") else ""

    def _wait_running(self, timeout: float) -> None:
        try:
            wait_for(self._system_state, timeout, f"{self.name} to boot", 0.05)
        except MachineError as e:
            jobs = self.run("systemctl list-jobs --no-pager", check=False).stdout \
                if self.running and self.init_pid else ""
            raise MachineError(f"{e} (state {self.state!r})\n{jobs}\n{self.console_tail()}") from None
        if self.state == "degraded":
            failed = self.run("systemctl --failed --plain --no-legend --no-pager").stdout
            self.failed_units = [line.split()[0] for line in failed.splitlines() if line.strip()]
            why = {u: self.run(["journalctl", "-u", u, "-b", "-n", "25", "--no-pager", "-o", "cat"],
                               check=False).stdout[-2500:] for u in self.failed_units[:3]}
            log.warning("%s is degraded: failed units %s; their journals: %s", self.name, self.failed_units,
                        why)

    def console_tail(self, chars: int = 4000) -> str:
        """The end of the machine's console (all its boots, colours removed)."""
        try:
            text = (self.layer / "console.log").read_text(errors="replace")
        except OSError:
            return ""
        return re.sub(r"\x1b\[[0-9;]*m|\r", "", text)[-chars:]


class Client:
    """A network namespace on the bridge with `<subnet>.<index>/24` on its eth0."""

    def __init__(self, owner: Machines, name: str, index: int, n: int):
        self.name, self.address = name, f"{owner.subnet}.{index}"
        self.netns, self.veth = f"vg-{name}-{owner.tag}", f"vgc{owner.tag}{n}"
        try:
            _ip("netns", "add", self.netns)
            _ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
            _ip("link", "set", self.veth, "master", owner.bridge, "up")
            for args in (["addr", "add", f"{self.address}/24", "dev", "eth0"],
                         ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"]):
                _ip("-n", self.netns, *args)
        except BaseException:
            self.close()
            raise

    def _argv(self, cmd: str | Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *_as_argv(cmd)]

    def run(self, cmd: str | Sequence[str], timeout: float = 60, check: bool = True,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run(self._argv(cmd), input=input, capture_output=True, timeout=timeout)
        return _completed(_as_argv(cmd), r, check, self.name)

    def popen(self, cmd: str | Sequence[str], **kw) -> subprocess.Popen:
        """Started in the namespace; the caller stops it (before the Machines closes)."""
        return subprocess.Popen(self._argv(cmd), **kw)

    def close(self) -> None:
        _ip("netns", "del", self.netns, check=False)  # its veth pair goes with it
        _ip("link", "del", self.veth, check=False)


class Machines:
    """Machines on one host bridge `<subnet>.254/24`; see the module doc."""

    _count = 0

    def __init__(self, root: Path, subnet: str = "10.231.40", workdir: Path | None = None):
        Machines._count += 1
        self.root, self.subnet = Path(root), subnet
        self.tag = f"{os.getpid():x}{chr(ord('g') + Machines._count % 20)}"  # sweep_stale reads it
        self.bridge = f"vgbr{self.tag}"
        self.nspawn, self.nsenter = _tool("systemd-nspawn"), _tool("nsenter")
        self.machines: dict[str, Machine] = {}
        self.clients: list[Client] = []
        if not (self.root / "etc/vigil-rootfs.json").exists():
            raise MachineError(f"{root} is not a root made by ensure_rootfs")
        sweep_stale()
        if f" {subnet}." in _ip("-o", "-4", "addr", "show").stdout:
            raise MachineError(f"{subnet}.0/24 is already on a host interface (another run?)")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"vigil-machines-{self.tag}-"))
        atexit.register(self.close)
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{subnet}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Machines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def hosts_text(self) -> str:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        return "\n".join(lines + [f"{m.address}\t{m.name}" for m in self.machines.values()]) + "\n"

    def _register(self, name: str, index: int) -> Machine:
        if (m := self.machines.get(name)) is None:
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,19}", name) or not 0 < index < 254:
                raise MachineError(f"bad machine {name!r} {index}: [a-z][a-z0-9-]*, index 1..253")
            m = self.machines[name] = Machine(self, name, index)
        elif m.index != index:
            raise MachineError(f"{name} was booted as index {m.index}, not {index}")
        return m

    def boot(self, name: str, index: int, timeout: float = 60) -> Machine:
        """Boot `name` at `<subnet>.<index>` (again, with its layer, if it ran before)."""
        return self.boot_all([(name, index)], timeout)[0]

    def boot_all(self, specs: Sequence[tuple[str, int]], timeout: float = 60) -> list[Machine]:
        """Start every (name, index) at once, then wait until each is running or degraded."""
        started = [self._register(name, index) for name, index in specs]
        for m in started:
            m._start()
        for m in started:
            m._wait_running(timeout)
        hosts = self.hosts_text().encode()
        for m in self.machines.values():
            if m.running and m not in started:  # tell the others about the new names
                m.put("/etc/hosts", hosts, 0o644)
        return started

    def client(self, name: str = "client", index: int = 200) -> Client:
        self.clients.append(c := Client(self, name, index, len(self.clients)))
        return c

    def close(self) -> None:
        """Kill every machine, delete clients and bridge, unmount, remove layers (idempotent)."""
        atexit.unregister(self.close)
        errors = []
        for step in [*(m.crash for m in self.machines.values()), *(c.close for c in self.clients)]:
            try:
                step()
            except Exception as e:  # keep cleaning; report at the end
                errors.append(e)
        self.clients.clear()
        _ip("link", "del", self.bridge, check=False)
        if hasattr(self, "workdir"):
            _unmount_under(self.workdir)
            for m in self.machines.values():
                shutil.rmtree(m.layer, ignore_errors=True)
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise MachineError(f"cleaning up: {errors!r}")
