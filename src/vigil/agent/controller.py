"""Controller: the singleton resource a leader drives, here an actuator
behind a token-guarded gateway (vigil.resources.actuator).

While this node leads, it writes the register every `interval` seconds,
starting at once on acquisition, each write carrying the fencing token. It
follows the role through `on_change` (a Leadership.on_change hook): an
acquisition starts the writer with its token, any ending stops it. Each
write is attempted only after a fresh `is_leader()` check and is signed with
this node's key (vigil.resources.signed); a 409 from the gateway means a newer
leader exists, a 403 that etcd names another leader: either way this node
stops writing and says so. A 401 (signature refused) is reported as an
event: the gateway's key ring lacks this node's current key.

Every write the gateway acknowledged is appended to `acks` (JSON lines:
node, token, register, value, at): the operator's audit trail of what this
node commanded, and what the chaos checker holds the actuator to (no
acknowledged write may be missing from the actuator's own history). At 16 MiB
it is moved to `acks.1` (replacing the previous one) and started afresh.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, Callable

import aiohttp

from vigil.agent.leadership import Leadership
from vigil.clock import Clock
from vigil.core.leader import RoleChange
from vigil.resources.guard import TOKEN_HEADER
from vigil.resources.signed import gateway_name, sign_request
from vigil.identity import SigningKeys
from vigil.logfile import BoundedLog
from vigil.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ACKS_MAX_BYTES = 16 * 1024 * 1024


class Controller:
    def __init__(self, node: str, signing: Callable[[], SigningKeys], clock: Clock, record: Any,
                 leadership: Leadership, gateway: str, register: int, interval: float,
                 acks: Path | None = None):
        """`signing`: this node's current signing keys (they change on a key reload)."""
        self.node, self.signing, self.clock, self.record = node, signing, clock, record
        self.leadership, self.gateway, self.register, self.interval = leadership, gateway, register, interval
        self.acks = BoundedLog(acks, ACKS_MAX_BYTES) if acks is not None else None
        self.accepted = 0
        self.rejected = 0
        self._task: asyncio.Task | None = None

    def on_change(self, change: RoleChange) -> None:
        """Leadership's hook: drive the actuator with an acquisition's token; stop at its end."""
        if self._task and not self._task.done():
            self._task.cancel()
        if change.kind == "acquired":
            self._task = asyncio.get_running_loop().create_task(self._drive(change.token))

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _drive(self, token: int) -> None:
        lead = self.leadership
        value, unauthorised = 0, False
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http:
            # fresh each write, and still this term's token: the role's end cancels this
            # task too, but a writer that outlived a lost term never writes in the next
            while lead.is_leader() and lead.token == token:
                value = (value + 1) % 65536
                body = json.dumps({"register": self.register, "value": value, "token": token}).encode()
                headers = {TOKEN_HEADER: str(token), "Content-Type": "application/json",
                           **sign_request(self.signing(), gateway_name(self.gateway), "POST", "/write", body,
                                          self.clock.wall())}
                try:
                    async with http.post(self.gateway + "/write", headers=headers, data=body) as r:
                        if r.status == 200:
                            self.accepted += 1
                            self._acknowledged(token, value)
                        elif r.status in (401, 403, 409):
                            self.rejected += 1
                            doc = await r.json(content_type=None)
                            why = doc.get("error", "") if isinstance(doc, dict) else repr(doc)[:200]
                            if r.status != 401:
                                self.record("actuator_rejected", f"the actuator refused token "
                                                f"{token}: {why}; stopping", token=token, status=r.status)
                                return
                            if not unauthorised:  # once per leadership, not once per write
                                self.record("actuator_unauthorised", "the actuator refused this "
                                                f"node's signature: {why}", token=token)
                            unauthorised = True
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, RecursionError) as e:
                    log.warning("actuator write failed: %s", e)
                await asyncio.sleep(self.interval)

    def _acknowledged(self, token: int, value: int) -> None:
        if self.acks is None:
            return
        # the newest two files' worth: about a day at the default interval
        self.acks.append(json.dumps({"node": self.node, "token": token, "register": self.register,
                                     "value": value, "at": self.clock.wall()}))
