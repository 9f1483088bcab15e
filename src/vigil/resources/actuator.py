"""ActuatorGateway: the only path to a PLC's holding registers, fenced by token.

A PLC speaking Modbus/TCP cannot check fencing tokens itself, so every write
goes through this gateway: POST /write {"register", "value", "token"},
signed by the node that sends it (vigil.resources.signed). In order:
- a body that is not that JSON object: 400;
- a missing, wrong, stale or replayed signature: 401;
- a token that is neither the one this gateway already accepted from the
  same node, nor the create revision of the leader key in etcd held by the
  signing node: 403 (so nobody can push the guard to 2^63 and lock every
  future leader out); etcd not answering while that must be checked: 503;
- a token lower than the highest accepted (a deposed leader): 409, and the
  register is untouched;
- otherwise the value is written with pymodbus and read back (PLC error: 502).

Every signed attempt, accepted or not, is appended to a JSON-lines history
that the chaos checker reads (tokens accepted must never decrease; no stale
write is ever accepted); the history is bounded (vigil.logfile: 16 MiB, then
one rotated file). Unsigned or wrongly signed requests are only counted
(`/status` "unauthorised") and logged at most once a minute: a stranger's
requests must not fill the disk, after which the guard could not persist a
new token and no leader could write.

GET /read and GET /status take no signature: they change nothing (no PLC
write, no token), the gateway listens on a control network (127.0.0.1 by
default), and requiring a node's signing key for them would hand operators
and monitoring the keys that can command the PLC. /status names no secret.

Writes are serialised: the guard check and the PLC write happen under one
lock, so a stale command can never overtake a newer one between the two.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from vigil.errors import StoreError, VigilError
from vigil.logfile import LOG_MAX_BYTES, BoundedLog
from vigil.resources.guard import StaleToken, TokenGuard
from vigil.resources.signed import RequestVerifier, Unauthorised
from vigil.web import finish, route

LeaderOf = Callable[[], Awaitable[tuple[str, int] | None]]  # etcd's (leader, token), None if none
UNAUTHORISED_LOG_EVERY = 60.0  # s: refused signatures are logged at most this often, with their count

log = logging.getLogger(__name__)


class PlcError(VigilError):
    """The PLC did not accept or confirm a write."""


class ModbusPlc:
    """A holding-register PLC over Modbus/TCP (pymodbus)."""

    def __init__(self, host: str, port: int, device_id: int = 1, timeout: float = 1.0):
        self.host, self.port, self.device_id, self.timeout = host, port, device_id, timeout
        self._client = None

    async def _connected(self):
        from pymodbus.client import AsyncModbusTcpClient

        if self._client is None or not self._client.connected:
            self._client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout, retries=0)
            if not await self._client.connect():
                raise PlcError(f"cannot connect to the PLC at {self.host}:{self.port}")
        return self._client

    async def write(self, register: int, value: int) -> int:
        """Write one holding register and return the value read back."""
        try:
            c = await self._connected()
            w = await c.write_register(register, value, device_id=self.device_id)
            if w.isError():
                raise PlcError(f"PLC refused the write to register {register}: {w}")
            return await self.read(register)
        except PlcError:
            raise
        except Exception as e:  # noqa: BLE001 - the PLC boundary: whatever pymodbus raises on a
            # garbled answer (the fuzz target found RuntimeError from its transaction lock) is
            # a PLC error, never a crash of the gateway
            raise PlcError(f"PLC write failed: {type(e).__name__}: {e}") from None

    async def read(self, register: int) -> int:
        try:
            r = await (await self._connected()).read_holding_registers(register, count=1,
                                                                        device_id=self.device_id)
            if r.isError():
                raise PlcError(f"PLC refused the read of register {register}: {r}")
            value = r.registers[0]
        except PlcError:
            raise
        except Exception as e:  # noqa: BLE001 - the PLC boundary, as in write()
            raise PlcError(f"PLC read failed: {type(e).__name__}: {e}") from None
        if not isinstance(value, int) or not 0 <= value <= 65535:
            raise PlcError(f"PLC answered {value!r} for register {register}, not 0..65535")
        return value

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class Refused(VigilError):
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


class ActuatorGateway:
    def __init__(self, plc: ModbusPlc, guard: TokenGuard, history: Path, verifier: RequestVerifier,
                 leader_of: LeaderOf, clock: Callable[[], float] = time.time,
                 history_max_bytes: int = LOG_MAX_BYTES):
        self.plc, self.guard, self.history = plc, guard, BoundedLog(history, history_max_bytes)
        self.verifier, self.leader_of, self.clock = verifier, leader_of, clock
        self.owner: tuple[str, int] | None = None  # (node, token) confirmed with etcd
        self.unauthorised = 0  # requests refused for their signature: counted, never written to disk
        self._unauthorised_logged = (float("-inf"), 0)  # (when, count then)
        self._lock = asyncio.Lock()
        self.app = web.Application(client_max_size=64 * 1024)
        self.app.add_routes([route("POST", "/write", self.write), route("GET", "/read", self.read),
                             route("GET", "/status", self.status)])
        finish(self.app)

    async def write(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise VigilError(f"the body is {type(body).__name__}, not an object")
            register, value, token = _int(body, "register", 0, 65535), _int(body, "value", 0, 65535), \
                _int(body, "token", 1, 2**63)
        except (ValueError, VigilError, RecursionError) as e:
            return web.json_response({"error": f"bad write request: {e}; send JSON "
                                      '{"register": N, "value": V, "token": T}'}, status=400)
        try:
            node = self.verifier.verify(request.headers, request.method, request.path, raw, self.clock())
        except Unauthorised as e:
            self._refused_signature(e)
            return web.json_response({"error": f"unauthorised: {e}"}, status=401)
        async with self._lock:
            try:
                await self._authorise(node, token)
            except Refused as e:
                self._record(token, register, value, False, str(e), node=node)
                return web.json_response({"error": str(e)}, status=e.status)
            try:
                self.guard.admit(token)
            except StaleToken as e:
                self._record(token, register, value, False, str(e))
                return web.json_response({"error": str(e), "highest": e.highest}, status=409)
            try:
                readback = await self.plc.write(register, value)
            except PlcError as e:
                self._record(token, register, value, False, str(e))
                return web.json_response({"error": str(e)}, status=502)
            self._record(token, register, value, True, "written", readback, node)
        return web.json_response({"register": register, "value": readback, "token": token})

    async def _authorise(self, node: str, token: int) -> None:
        """Raises Refused unless `token` is `node`'s leadership token."""
        if self.owner == (node, token) or token < self.guard.highest:
            return  # accepted before; or stale, which the guard refuses with 409
        try:
            leader = await self.leader_of()
        except StoreError as e:
            raise Refused(503, f"cannot confirm token {token} with etcd ({e}); retry") from None
        if leader != (node, token):
            held = f"{leader[0]} holds token {leader[1]}" if leader else "no node leads"
            raise Refused(403, f"token {token} is not {node}'s leadership: in etcd {held}")
        self.owner = (node, token)

    async def read(self, request: web.Request) -> web.Response:
        try:
            register = int(request.query["register"])
            return web.json_response({"register": register, "value": await self.plc.read(register)})
        except (KeyError, ValueError):
            return web.json_response({"error": "give ?register=N"}, status=400)
        except PlcError as e:
            return web.json_response({"error": str(e)}, status=502)

    async def status(self, _: web.Request) -> web.Response:
        return web.json_response({"highest_token": self.guard.highest, "rejected": self.guard.rejected,
                                  "unauthorised": self.unauthorised,
                                  "owner": self.owner and {"node": self.owner[0], "token": self.owner[1]},
                                  "keyring": {n: sorted(ids) for n, ids in
                                              self.verifier.ring.members.items()}})

    def _record(self, token: int, register: int, value: int, accepted: bool, reason: str,
                readback: int | None = None, node: str | None = None) -> None:
        self.history.append(json.dumps({"at": time.time(), "token": token, "register": register, "value": value,
                                        "accepted": accepted, "reason": reason, "readback": readback,
                                        "node": node}))

    def _refused_signature(self, e: Unauthorised) -> None:
        self.unauthorised += 1
        now = self.clock()
        at, count = self._unauthorised_logged
        if now - at >= UNAUTHORISED_LOG_EVERY:
            log.warning("refused a request for its signature (%d since the last such warning, %d in all; "
                        "at most one warning a minute): %s", self.unauthorised - count, self.unauthorised, e)
            self._unauthorised_logged = (now, self.unauthorised)


def _int(body: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = body[key] if key in body else None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise VigilError(f"'{key}' must be an integer from {lo} to {hi}, got {v!r}")
    return v
