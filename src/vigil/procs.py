"""Process helpers for the agent and the lab: start detached, check liveness
(zombies count as dead), stop by PID with escalation. Only PIDs we started are ever signalled,
and only after checking that /proc/PID/cmdline still names what we started
(a recycled PID is left alone)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from vigil.errors import VigilError


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None, nice: int = 0) -> subprocess.Popen:
    """`cmd` in a session of its own, output to `log_path`; `nice`: at that CPU
    niceness (its children inherit it)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env,
                                preexec_fn=(lambda: os.nice(nice)) if nice else None)


def run_as(user: str | None, ignore: tuple[int, ...] = ()) -> dict[str, Any]:
    """subprocess keyword arguments that drop to `user` (its own primary group,
    no supplementary groups; None: run as we are) and start the child with the
    signals `ignore` ignored (kept across exec); {} when neither. A `preexec_fn`, not
    `user=`/`group=`/`extra_groups=`: the agent's event loop is uvloop, whose
    subprocess_exec refuses those (ValueError), and a spawn that raises that
    would leave the model server never started."""
    if user is None and not ignore:
        return {}
    ids = None
    if user is not None:
        import pwd

        pw = pwd.getpwnam(user)
        ids = (pw.pw_uid, pw.pw_gid)

    def prepare() -> None:  # in the child, between fork and exec: os and signal calls only
        for sig in ignore:
            signal.signal(sig, signal.SIG_IGN)
        if ids is not None:
            os.setgroups([])
            os.setgid(ids[1])
            os.setuid(ids[0])
    return {"preexec_fn": prepare}


def in_netns(netns: str, cmd: list[str]) -> list[str]:
    """`cmd` run inside a network namespace (`ip netns exec` execs: the PID stays the command's)."""
    return ["ip", "netns", "exec", netns, *cmd] if netns else cmd


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Field 3 is the state; a zombie has exited even though kill -0 succeeds on it.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def owns(pid: int, marker: str) -> bool:
    return bool(pid) and alive(pid) and marker in cmdline(pid)


def signal_pid(pid: int, sig: int, marker: str) -> bool:
    """Send `sig` to `pid` only if it is alive and its command line contains `marker`."""
    if not owns(pid, marker):
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(pid: int, marker: str, grace: float = 5.0) -> None:
    """SIGTERM (after SIGCONT, in case it is frozen), then SIGKILL after `grace`."""
    stop_all([(pid, marker)], grace)


def stop_all(targets: list[tuple[int, str]], grace: float = 5.0) -> None:
    """`stop` for each (pid, marker) at once: every one is sent SIGTERM first, so
    their graceful stops overlap; those still alive after `grace` get SIGKILL."""
    mine = []
    for pid, marker in targets:
        if not owns(pid, marker):
            reap(pid)
            continue
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:  # it exited since we looked: nothing left to stop
            reap(pid)
            continue
        mine.append((pid, marker))
    deadline = time.monotonic() + grace
    for pid, marker in mine:
        if not wait_dead(pid, max(0.0, deadline - time.monotonic())):
            signal_pid(pid, signal.SIGKILL, marker)
            wait_dead(pid, 5.0)


def wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap(pid)
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    """Poll `cond` until truthy (returned); VigilError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise VigilError(f"timed out after {timeout:g} s waiting for {what}")


_handed_out: set[int] = set()


def free_ports(n: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """`n` distinct ports free for both TCP and UDP on 127.0.0.1 right now, and
    never handed out before by this process (so separate calls cannot collide
    while the first ports are not bound yet)."""
    ports: list[int] = []
    held = []
    while len(ports) < n:
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if port in _handed_out:
            s.close()
            continue
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == socket.SOCK_STREAM
                              else socket.SOCK_STREAM)
        try:
            other.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            other.close()
            continue
        held += [s, other]
        ports.append(port)
    for s in held:
        s.close()
    _handed_out.update(ports)
    return ports


def state(pid: int) -> str | None:
    """The kernel's state letter for `pid` (R, S, D, T stopped, t traced, Z...), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]
