"""Preflight checks of the machine itself: kernel, eBPF, sysctls, the clock,
capabilities, the heartbeat thread's real-time scheduling, heartbeat links, the watchdog device. Each reads its files
under `Host.root` ("/" on a node; a prepared tree in tests) and returns one
Outcome (vigil.preflight.outcome); none raises."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vigil.config import NodeConfig
from vigil.preflight.outcome import WARNING, Outcome, failed, passed, skipped

MIN_KERNEL = (5, 15)
RMEM_MAX = 16 * 1024 * 1024  # bytes; the seed's prerequisite
STA_UNSYNC = 0x0040  # adjtimex status: the kernel's clock is not synchronised
MAX_TIME_ERROR_US = 100_000  # an estimated error beyond 100 ms is not synchronised enough
CAP_NET_ADMIN, CAP_NET_RAW, CAP_IPC_LOCK, CAP_SYS_NICE = 12, 13, 14, 23


def _timex() -> tuple[int, int] | None:
    """(status, esterror in µs) from adjtimex(2), read-only (modes 0); None where unavailable."""
    class Timex(ctypes.Structure):  # struct timex: the fields before the padding are what we read
        _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                    ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                    ("pad", ctypes.c_byte * 200)]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        t = Timex()
        if libc.adjtimex(ctypes.byref(t)) < 0:
            return None
        return t.status, t.esterror
    except (OSError, AttributeError):
        return None


@dataclass
class Host:
    root: Path = Path("/")
    timex: Callable[[], tuple[int, int] | None] = field(default=_timex)

    def euid(self) -> int:
        return os.geteuid()

    def read(self, path: str) -> str | None:
        try:
            return (self.root / path.lstrip("/")).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def exists(self, path: str) -> bool:
        try:
            return (self.root / path.lstrip("/")).exists()
        except OSError:  # a directory on the way we may not search
            return False


def kernel(host: Host) -> Outcome:
    release = (host.read("/proc/sys/kernel/osrelease") or "").strip()
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        return skipped("KernelVersion", f"cannot read the kernel release ({release!r})")
    version = (int(m.group(1)), int(m.group(2)))
    if version >= MIN_KERNEL:
        return passed("KernelVersion", f"kernel {release}")
    return failed("KernelVersion", f"kernel {release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}",
                  "upgrade the kernel (Debian 12 ships 6.1: `apt install linux-image-amd64`, then reboot)",
                  "the namespaces, nftables and eBPF features Vigil's partition handling and firewall use")


def ebpf(host: Host) -> Outcome:
    if host.exists("/proc/sys/kernel/unprivileged_bpf_disabled") and host.exists("/sys/fs/bpf"):
        return passed("EBPF", "bpf(2) and the BPF filesystem are available")
    return failed("EBPF", "no bpf(2) syscall or no /sys/fs/bpf", "a kernel built with CONFIG_BPF_SYSCALL=y "
                  "(every Debian kernel), and `mount -t bpf bpf /sys/fs/bpf`",
                  "the seed's prerequisite for packet filtering and tracing on the heartbeat path",
                  result=WARNING)


def _sysctl(host: Host, name: str) -> int | None:
    words = (host.read("/proc/sys/" + name.replace(".", "/")) or "").split()
    try:
        return int(words[0]) if words else None
    except ValueError:
        return None


def sysctls(host: Host, cfg: NodeConfig | None) -> list[Outcome]:
    out = []
    rmem = _sysctl(host, "net.core.rmem_max")
    why = ("heartbeats from every watched peer arrive in bursts (two copies, a leader's stream); a small "
           "socket buffer drops them when the node is busy, and dropped heartbeats are false suspicions")
    if rmem is None:
        out.append(skipped("Sysctl-net.core.rmem_max", "cannot read net.core.rmem_max"))
    elif rmem >= RMEM_MAX:
        out.append(passed("Sysctl-net.core.rmem_max", f"net.core.rmem_max = {rmem}", why))
    else:
        out.append(failed("Sysctl-net.core.rmem_max", f"net.core.rmem_max = {rmem} < {RMEM_MAX}",
                          f"sysctl -w net.core.rmem_max={RMEM_MAX} && echo net.core.rmem_max={RMEM_MAX} "
                          ">> /etc/sysctl.d/90-vigil.conf", why))
    if cfg is not None and cfg.vips:
        for name, want in (("net.ipv4.conf.all.arp_ignore", 1), ("net.ipv4.conf.all.arp_announce", 2)):
            have = _sysctl(host, name)
            sid = f"Sysctl-{name}"
            why = ("a node with a VIP and several interfaces must answer ARP for an address only on its "
                   "interface, or clients cache the wrong MAC after a failover (ARP flux; keepalived's advice)")
            if have is not None and have >= want:
                out.append(passed(sid, f"{name} = {have}", why))
            else:
                out.append(failed(sid, f"{name} = {have}", f"sysctl -w {name}={want} && echo {name}={want} >> "
                                  "/etc/sysctl.d/90-vigil.conf", why, result=WARNING))
    return out


def clock(host: Host) -> Outcome:
    why = ("heartbeats carry send times and are refused outside heartbeat.max_clock_skew; events and "
           "fencing records are compared across nodes")
    t = host.timex()
    if t is None:
        return skipped("TimeSync", "adjtimex(2) is not available here")
    status, esterror = t
    if status & STA_UNSYNC:
        return failed("TimeSync", "the kernel clock is not synchronised (adjtimex: STA_UNSYNC)",
                      "apt install chrony && systemctl enable --now chrony (or systemd-timesyncd); "
                      "`chronyc tracking` shows the offset", why)
    if esterror > MAX_TIME_ERROR_US:
        return failed("TimeSync", f"synchronised, but the estimated error is {esterror / 1000:.0f} ms",
                      "check the time sources: `chronyc sources -v`", why, result=WARNING)
    return passed("TimeSync", f"synchronised, estimated error {esterror / 1000:.1f} ms", why)


def _caps(host: Host) -> int | None:
    m = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", host.read("/proc/self/status") or "", re.M)
    return int(m.group(1), 16) if m else None


def capabilities(host: Host, cfg: NodeConfig | None) -> Outcome:
    if cfg is None or not cfg.vips:
        return skipped("Capabilities", "no VIP configured: no capability beyond a plain process is needed")
    caps = _caps(host)
    if caps is None:
        return skipped("Capabilities", "cannot read CapEff from /proc/self/status")
    missing = [n for n, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_NET_RAW", CAP_NET_RAW))
               if not caps >> bit & 1]
    if not missing:
        return passed("Capabilities", "CAP_NET_ADMIN and CAP_NET_RAW (add the VIP, send gratuitous ARP)")
    # What is read is this process's set: run as the agent runs (root, as the packaged unit) to judge it.
    return failed("Capabilities", f"this process lacks {', '.join(missing)}", "run the agent as root (the "
                  "packaged vigil-agent.service does) or give it AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW; "
                  "run preflight as the agent runs",
                  "the leader adds the VIP to an interface and announces it with gratuitous ARP",
                  result="error" if host.euid() == 0 else WARNING)


def realtime(host: Host, cfg: NodeConfig | None) -> Outcome:
    why = ("on a busy node (a tokenizer, a batch job, memory reclaim) heartbeats sent from the agent's loop "
           "leave late and its peers suspect a healthy node; the heartbeat thread at SCHED_FIFO does not wait")
    if cfg is None:
        return skipped("Realtime", "no configuration given")
    rt = cfg.realtime
    if rt is None:
        return failed("Realtime", "heartbeat.realtime is not set: heartbeats run on the agent's loop",
                      "set heartbeat.realtime: {priority: 10, lock_memory: true} (what `vigil init` writes)",
                      why, result=WARNING)
    caps, budget = _caps(host), (host.read("/proc/sys/kernel/sched_rt_runtime_us") or "").strip()
    need = [("CAP_SYS_NICE", CAP_SYS_NICE)] if rt.priority else []
    need += [("CAP_IPC_LOCK", CAP_IPC_LOCK)] if rt.lock_memory else []
    missing = [n for n, bit in need if caps is not None and not caps >> bit & 1]
    if missing:
        return failed("Realtime", f"this process lacks {', '.join(missing)}: the heartbeat thread would run at "
                      "normal priority", "run the agent as root with the packaged vigil-agent.service (its "
                      "CapabilityBoundingSet holds CAP_SYS_NICE and CAP_IPC_LOCK); run preflight as the agent "
                      "runs", why, result=WARNING)
    if budget == "0":
        return failed("Realtime", "kernel.sched_rt_runtime_us is 0: real-time threads get no CPU at all",
                      "sysctl -w kernel.sched_rt_runtime_us=950000 (the kernel's default)", why)
    return passed("Realtime", f"heartbeat thread at SCHED_FIFO {rt.priority}" if rt.priority else
                  "heartbeat thread at normal priority (heartbeat.realtime.priority 0)", why)


def links(host: Host, cfg: NodeConfig | None) -> Outcome:
    why = "with one heartbeat link, one NIC, cable or switch port fault cuts the node off and it is fenced"
    if cfg is not None and len(cfg.addresses) >= 2:
        return passed("HeartbeatLinks", f"{len(cfg.addresses)} heartbeat addresses: {', '.join(cfg.addresses)}",
                      why)
    bonds = _bonds(host)
    lacp = [name for name, (mode, slaves) in bonds.items() if "802.3ad" in mode and slaves >= 2]
    if lacp:
        return passed("HeartbeatLinks", f"one heartbeat address on an 802.3ad bond of two or more ports "
                                        f"({', '.join(lacp)})", why)
    found = "one heartbeat address" + (f"; bonds not in 802.3ad mode with 2 ports: {', '.join(bonds)}"
                                       if bonds else " and no bond (/proc/net/bonding)")
    return failed("HeartbeatLinks", found, "give heartbeat.addresses a second address on another NIC, or "
                  "bond two ports in 802.3ad (LACP) mode", why, result=WARNING)


def _bonds(host: Host) -> dict[str, tuple[str, int]]:
    folder = host.root / "proc/net/bonding"
    out = {}
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return {}
    for name in names:
        text = host.read(f"/proc/net/bonding/{name}") or ""
        mode = re.search(r"^Bonding Mode:\s*(.+)$", text, re.M)
        out[name] = (mode.group(1) if mode else "?", len(re.findall(r"^Slave Interface:", text, re.M)))
    return out


def watchdog(host: Host, cfg: NodeConfig | None) -> Outcome:
    if cfg is None or cfg.watchdog.mode == "off":
        return skipped("Watchdog", "watchdog.mode is off")
    device = cfg.watchdog.device
    if host.exists(device):
        return passed("Watchdog", f"{device} exists (watchdog.mode {cfg.watchdog.mode})")
    return failed("Watchdog", f"no {device} (watchdog.mode {cfg.watchdog.mode})",
                  "load a hardware watchdog driver, or `modprobe softdog` (and list it in /etc/modules)",
                  "a frozen agent must not keep a leader's role: the watchdog resets the node",
                  result="error" if cfg.watchdog.mode == "required" else WARNING)


def checks(host: Host, cfg: NodeConfig | None) -> list[Outcome]:
    return [kernel(host), ebpf(host), *sysctls(host, cfg), clock(host), capabilities(host, cfg),
            realtime(host, cfg), links(host, cfg), watchdog(host, cfg)]
