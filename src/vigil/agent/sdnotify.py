"""systemd's service notification protocol (sd_notify(3)) for the agent's
`Type=notify` unit (deploy/systemd/vigil-agent.service).

Contract:
- `READY=1` is sent once, when the agent holds its etcd session and has heard
  every configured peer, or `READY_WAIT` seconds after the session opened if
  some peer is still silent (a peer that is down must not keep a node out of
  service: its unit would time out and restart forever). `STATUS=` names the
  peers not heard then. Without an etcd session it is sent `NO_ETCD_WAIT` s
  after start all the same (well inside the unit's TimeoutStartSec): etcd
  being away must not make systemd kill and restart the node's router and
  model server, which serve without it; `STATUS=` says `no etcd session`.
- `STATUS=` carries the role, the token, the health verdict and the last
  decision; it is sent whenever that line changes.
- `WATCHDOG=1` is sent every quarter of `WATCHDOG_USEC`, and only while the
  decision loop and the role guard are alive (their tasks running, the
  decision loop making progress: `Agent.alive`). A hung event loop sends
  nothing at all, so systemd kills and restarts the agent after `WatchdogSec=`.
  This is recovery, not safety: the lease (and, on a leader, the hardware
  watchdog, vigil.agent.watchdog) has long ended the role of a hung leader by
  then; see docs/deployment.md.
- `STOPPING=1` at a graceful stop.
- Without `NOTIFY_SOCKET` (not under systemd) nothing is sent. A send never
  raises: a notification that cannot be delivered is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, Mapping

log = logging.getLogger(__name__)

READY_WAIT = 5.0  # s after the session opened: ready even if some peer is still silent
NO_ETCD_WAIT = 15.0  # s after start: ready without an etcd session
STATUS_PERIOD = 0.5  # s between looks at the status line when no watchdog is asked for


class Notifier:
    """A datagram to `$NOTIFY_SOCKET` ('@' names an abstract socket)."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        self.watchdog = _watchdog_interval(env, os.getpid() if pid is None else pid)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: Any) -> bool:
        """Send `KEY=value` lines; True if systemd got them. Never raises, never
        blocks: a receiver that does not read (its queue full) loses the datagram
        rather than stalling the agent's event loop."""
        if not self.address:
            return False
        text = "\n".join(f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as s:
                s.sendto(text.encode(), self.address)
            return True
        except OSError as e:
            if not self._warned:
                log.warning("cannot notify systemd at %r: %s", self.address, e)
                self._warned = True
            return False


def _watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """`WatchdogSec=` in seconds when it is meant for this process, else None."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        owner = int(env.get("WATCHDOG_PID", pid))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 and owner == pid else None


def status_line(agent: Any) -> str:
    """One line for `systemctl status`: role, token, verdict, decision."""
    role = f"leader (token {agent.role.token})" if agent.is_leader() else "standby"
    session = "" if agent.session_ok() else ", no etcd session"
    verdict = agent.health.verdict.state
    reasons = ", ".join(agent.health_reasons)
    return (f"{role}{session}; health {verdict}{f' ({reasons})' if reasons else ''}; "
            f"decision: {agent.reconciler.last}")[:400]


def ready_for_service(agent: Any, wait: float, running_for: float = 0.0) -> list[str] | None:
    """None while not ready; then the peers not heard yet ([] when all were): once
    the session is held and all peers were heard or `wait` s passed since it
    opened, or, without a session, once the agent has run NO_ETCD_WAIT s."""
    if not agent.session_ok() or agent.registration.opened_at is None:
        return sorted(agent.heartbeats.peers.unheard()) if running_for >= NO_ETCD_WAIT else None
    silent = sorted(agent.heartbeats.peers.unheard())
    if silent and agent.clock.now() - agent.registration.opened_at < wait:
        return None
    return silent


async def notify_loop(agent: Any, notifier: Notifier) -> None:
    """Tell systemd when the agent is ready, what it is doing, and that it lives."""
    period = notifier.watchdog / 4 if notifier.watchdog else STATUS_PERIOD
    period = min(period, STATUS_PERIOD)
    ready, last, started = False, "", agent.clock.now()
    while True:
        if not ready:
            silent = ready_for_service(agent, READY_WAIT, agent.clock.now() - started)
            if silent is not None:
                note = f"; not heard yet: {', '.join(silent)}" if silent else ""
                last = status_line(agent) + note
                notifier.send(READY=1, STATUS=last)
                ready = True
        line = status_line(agent)
        if ready and line != last:
            notifier.send(STATUS=line)
            last = line
        if notifier.watchdog and agent.alive():
            notifier.send(WATCHDOG=1)
        await asyncio.sleep(period)
