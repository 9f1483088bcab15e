"""HAProxy as the data plane, driven by Vigil.

- `render(members, ...)`: a complete haproxy.cfg: the inference backend (one
  server per member, named as the node, health-checked against its agent's
  `/ready`), a Patroni-style `vigil_leader` backend checked against
  `/leader`, and the stats socket at admin level for the runtime API.
- `HaproxyDriver`: follows the cluster as a router does (etcd watch plus its
  own heartbeat detector, vigil.router.membership) and sets each server
  `ready`, `drain` or `maint` through HAProxy's runtime API the moment Vigil
  suspects, drains or readmits its node (a round trip is ~0.1 ms), so
  HAProxy never waits for its own check interval. Vigil owns the admin
  state; HAProxy's own checks stay on as a second opinion (they can only
  take a server down, never bring a `maint` one back).

Errors: `RuntimeApiError` when the socket refuses a command; the driver logs
it and applies the whole desired state again on the next pass (every
`resync` seconds), so a restarted HAProxy converges.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from vigil.clock import SystemClock, woken
from vigil.core.routing import RoutingTable
from vigil.errors import VigilError
from vigil.router.config import RouterConfig
from vigil.store.base import Store
from vigil.store.member_record import MemberRecord
from vigil.tasks import cancel_and_wait

log = logging.getLogger(__name__)

BACKEND = "vigil_inference"

CONFIG = """# haproxy.cfg for Vigil cluster {cluster}, rendered by `vigil haproxy config`.
# Server states are driven by `vigil haproxy drive --socket {socket}`.
global
    maxconn 4096
    stats socket {socket} mode 600 level admin
defaults
    mode http
    timeout connect 500ms
    timeout client 60s
    timeout server 60s
    timeout check 1s
    retries 3
    option redispatch
    retry-on conn-failure empty-response response-timeout 502 503 504
    option http-buffer-request
frontend vigil
    bind {bind}
    default_backend {backend}
backend {backend}
    balance leastconn
    option httpchk GET /ready
    http-check expect status 200
{servers}
backend vigil_leader
    option httpchk GET /leader
    http-check expect status 200
{leader_servers}
"""


def render(cluster: str, members: dict[str, MemberRecord], socket: str, bind: str) -> str:
    """haproxy.cfg for these member records (name -> record, as in etcd)."""
    lines, leader = [], []
    for name, rec in sorted(members.items()):
        inf, api = urlsplit(rec.inference_url), urlsplit(rec.api_url)
        if not inf.hostname or not api.port:
            continue
        tls = " check-ssl verify none" if api.scheme == "https" else ""
        server = f"    server {name} {inf.hostname}:{inf.port} check port {api.port} inter 2s fall 3 rise 2{tls}"
        lines.append(server)
        leader.append(server)
    return CONFIG.format(cluster=cluster, socket=socket, bind=bind, backend=BACKEND,
                         servers="\n".join(lines) or "    # no member with an inference server yet",
                         leader_servers="\n".join(leader) or "    # none")


class RuntimeApiError(VigilError):
    """HAProxy's runtime API refused a command or could not be reached."""


async def runtime(socket: str, command: str, timeout: float = 1.0) -> str:
    """One command on HAProxy's stats socket; its answer. Raises RuntimeApiError."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(socket), timeout)
        writer.write(command.encode() + b"\n")
        await writer.drain()
        answer = (await asyncio.wait_for(reader.read(), timeout)).decode(errors="replace")
        writer.close()
    except (OSError, asyncio.TimeoutError) as e:
        raise RuntimeApiError(f"HAProxy runtime API at {socket}: {type(e).__name__} {e}") from None
    if command.startswith("set ") and answer.strip():  # a set answers nothing when it worked
        raise RuntimeApiError(f"HAProxy refused {command!r}: {answer.strip()}")
    return answer


def desired(table: RoutingTable, name: str, now: float) -> str:
    """The admin state a node's server should have: ready, drain or maint."""
    b = table.backend(name)
    if b.state in ("draining",):
        return "drain"
    return "ready" if b.why_not(now, ignore_inhibition=True) is None else "maint"


class HaproxyDriver:
    def __init__(self, cfg: RouterConfig, store: Store, socket: str, resync: float = 5.0):
        from vigil.router.membership import Membership

        self.socket, self.resync = socket, resync
        self.clock = SystemClock()
        self.table = RoutingTable()
        self.applied: dict[str, str] = {}  # server -> the state HAProxy last accepted
        self.changes: list[tuple[float, str, str]] = []  # (wall time, server, state), for tests
        self._wake = asyncio.Event()
        self.membership = Membership(cfg, store, self.table, self.clock, self._changed, self._changed)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.membership.start()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.membership.stop()

    def _changed(self, name: str, _cause: str) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            # on no wake for `resync`: re-apply everything, HAProxy may have restarted
            full = not await woken(self._wake, self.resync)
            self._wake.clear()
            await self.apply(full)

    async def apply(self, full: bool = False) -> None:
        now = self.clock.now()
        for name in sorted(self.table.backends):
            state = desired(self.table, name, now)
            if not full and self.applied.get(name) == state:
                continue
            try:
                await runtime(self.socket, f"set server {BACKEND}/{name} state {state}")
            except RuntimeApiError as e:
                log.warning("%s", e)
                self.applied.pop(name, None)
                continue
            if self.applied.get(name) != state:
                log.info("haproxy %s/%s -> %s", BACKEND, name, state)
                self.changes.append((self.clock.wall(), name, state))
            self.applied[name] = state
