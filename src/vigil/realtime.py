"""Real-time scheduling for the heartbeat thread (the seed's `chrt -f 99`,
done per thread instead of per process; docs/architecture.md, "Real-time
heartbeats").

`heartbeat.realtime: {priority: P, lock_memory: true}` in a node's config
puts heartbeat sending and receiving and the role's deadline check on a
thread of their own (vigil.net.pacer) at SCHED_FIFO priority P, and locks
the agent's memory so that a page fault under memory pressure cannot stall
that thread. Everything else stays at normal priority: verification, the
detectors and every decision run on the agent's loop, so a flood of packets
costs the real-time thread one recvfrom per packet, never the machine.

Why DEFAULT_PRIORITY is 10, not 99: any SCHED_FIFO priority runs before
every normal task (the model server, a runaway batch, stress-ng), which is
all the heartbeat needs. It must stay below the threaded interrupt handlers
(SCHED_FIFO 50 on PREEMPT_RT kernels) that deliver our packets, and far
below the kernel's per-CPU migration, watchdog and RCU threads at 99, which
a busy-looping thread at 99 would starve. 10 also leaves room above it for
what an operator ranks higher (a PTP daemon, a PLC gateway).

Contract: `apply(settings)` changes the calling thread's policy (Linux
schedules threads, so the rest of the process keeps its own) and, when asked,
locks every current and future page of the process. It never raises: each
thing the kernel refuses comes back as a problem naming the fix, and the
thread then runs at normal priority.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

DEFAULT_PRIORITY = 10
MAX_PRIORITY = 98  # 99 is the kernel's own (migration, watchdog)
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4


@dataclass(frozen=True)
class RealtimeSettings:
    priority: int = DEFAULT_PRIORITY  # SCHED_FIFO priority; 0: its own thread, at normal priority
    lock_memory: bool = True


@dataclass(frozen=True)
class Applied:
    """What the kernel granted the heartbeat thread."""
    policy: str  # "SCHED_FIFO" or "SCHED_OTHER"
    priority: int
    memory_locked: bool
    problems: tuple[str, ...] = ()

    def describe(self) -> dict[str, object]:
        return {"policy": self.policy, "priority": self.priority, "memory_locked": self.memory_locked,
                "problems": list(self.problems)}


def apply(settings: RealtimeSettings) -> Applied:
    """Give the calling thread `settings` (see the module's contract)."""
    problems = []
    if settings.priority:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(settings.priority))
        except OSError as e:
            fix = (f"run the agent as root, or give its unit AmbientCapabilities=CAP_SYS_NICE and "
                   f"LimitRTPRIO={settings.priority}" if e.errno == errno.EPERM else
                   "check the kernel's real-time settings (sched_rt_runtime_us, cgroup cpu.rt_runtime_us)")
            problems.append(f"cannot run the heartbeat thread at SCHED_FIFO {settings.priority}: "
                            f"{e.strerror}; {fix}")
    locked = False
    if settings.lock_memory:
        why = _lock_all()
        locked = why is None
        if why:
            problems.append(f"cannot lock the agent's memory: {why}; run the agent as root, or give its unit "
                            "AmbientCapabilities=CAP_IPC_LOCK and LimitMEMLOCK=infinity")
    fifo = os.sched_getscheduler(0) == os.SCHED_FIFO
    return Applied("SCHED_FIFO" if fifo else "SCHED_OTHER", os.sched_getparam(0).sched_priority if fifo else 0,
                   locked, tuple(problems))


def _lock_all() -> str | None:
    """mlockall, touching pages only as they are used (MCL_ONFAULT, Linux 4.4):
    thread stacks and arenas reserved but never touched stay unbacked."""
    libc = ctypes.CDLL(None, use_errno=True)
    for flags in (MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT, MCL_CURRENT | MCL_FUTURE):
        if libc.mlockall(flags) == 0:
            return None
        err = ctypes.get_errno()
        if err != errno.EINVAL:  # EINVAL: a kernel without MCL_ONFAULT; try without it
            return os.strerror(err)
    return os.strerror(errno.EINVAL)


def problems(priority: object, lock_memory: object) -> list[tuple[str, object, str]]:
    """(field, value, fix) for each setting out of range; [] when valid."""
    out: list[tuple[str, object, str]] = []
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        out.append(("priority", priority, f"must be 0..{MAX_PRIORITY}: a SCHED_FIFO priority ({DEFAULT_PRIORITY} "
                    "is above every normal task; 99 would starve the kernel's own threads), or 0 for a "
                    "thread of its own at normal priority"))
    if not isinstance(lock_memory, bool):
        out.append(("lock_memory", lock_memory, "must be true or false"))
    return out
