"""EtcdStore: the Store port over etcd's v3 JSON gateway (grpc-gateway on the
client port), with aiohttp.

Why the gateway and not aetcd (gRPC): see docs/architecture.md. In short,
one HTTP client for the whole product, failover across every cluster member
under our control, no protobuf/grpcio version pinning, and the watch is a
plain newline-delimited JSON stream we can resume ourselves.

Translation at this boundary: aiohttp/OS errors and etcd's "try again"
answers (no leader, leader changed, timeouts) become StoreUnavailable after
every endpoint was tried within the deadline; "lease not found" becomes
LeaseNotFound; a compacted watch becomes WatchCompacted.

With `user`/`password` (etcd auth enabled, docs/operations.md) the store
authenticates once, sends the token with every request, and authenticates
again when etcd says the token expired; wrong credentials are a StoreError
naming the user. The gateway ignores certificate common names, so a client
certificate gives TLS transport only and the user name is the identity.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, AsyncIterator

import aiohttp

from vigil.errors import LeaseNotFound, StoreError, StoreUnavailable
from vigil.store.base import Expect, KeyValue, Lease, Store, WatchEvent, prefix_end
from vigil.store.etcd_wire import TOKEN_GONE, WatchEnded, b64, kv_of, lease_answer, lines, watch_line

log = logging.getLogger(__name__)

REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}  # clientv3.WithRequireLeader via the gateway
_RETRYABLE = ("no leader", "leader changed", "timed out", "too many requests",
              "not capable", "unhealthy", "stopped", "server is stopping")
AUTH_TIMEOUT = 10.0  # s for one authentication, whatever the request waiting on it allows


class EtcdStore(Store):
    def __init__(self, endpoints: list[str], timeout: float = 1.0, ca: str | None = None,
                 cert: str | None = None, key: str | None = None, user: str | None = None,
                 password: str | None = None):
        if not endpoints:
            raise StoreError("no etcd endpoints configured")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.user, self._password, self._token = user, password, None
        self._logins: dict[str, asyncio.Future] = {}  # endpoint -> its authentication in flight
        self._current = 0
        # endpoint -> set when the store moves off it (a request or a watch there failed):
        # a watch there that must not resume silently ends, so it always streams from the
        # member the store's requests (the session's keep-alives) reach. A frozen or cut-off
        # member keeps a watch's TCP connection open and says nothing.
        self._failed: dict[str, asyncio.Event] = {}
        self._ssl = _ssl_context(ca, cert, key)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<EtcdStore {self.endpoints[self._current]} of {len(self.endpoints)}>"

    # -- transport ---------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No CA given: https endpoints are verified against the system CAs, never unverified.
            conn = aiohttp.TCPConnector(ssl=self._ssl or True, limit=0)
            self._session = aiohttp.ClientSession(connector=conn, read_bufsize=1 << 22)
        return self._session

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request to etcd's v3 JSON gateway (`path` such as "kv/range" or "auth/user/add"):
        POST to the current endpoint, failing over until the deadline. StoreError
        subclasses on failure (StoreUnavailable when no endpoint answered in time)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        last = "no endpoint tried"
        tried = 0
        while True:
            left = deadline - loop.time()
            if left <= 0 or tried >= 3 * len(self.endpoints):
                raise StoreUnavailable(f"etcd did not answer {path} within {self.timeout:g} s "
                                       f"({last})")
            ep = self.endpoints[self._current]
            tried += 1
            # etcd drops proposals made while it has no leader and lets the request hang
            # until its own timeout (~7 s): give each attempt a slice, then try again.
            attempt = min(left, max(0.25, self.timeout / 3))
            try:
                if self.user and self._token is None:
                    await self._login(ep, attempt)
                async with self._http().post(f"{ep}/v3/{path}", json=body, headers=self._auth(),
                                             timeout=aiohttp.ClientTimeout(total=attempt)) as r:
                    data = await r.json(content_type=None)
                    if r.status == 200:
                        return data
                    last = self._classify(ep, data)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, RecursionError) as e:
                last = f"{ep}: {type(e).__name__} {e}".strip()
            self._move_off(ep)
            await asyncio.sleep(min(0.02, max(0.0, deadline - loop.time())))

    def _move_off(self, ep: str) -> None:
        """Send later requests and watches to the next endpoint (unless one already
        did), and end the non-resuming watches on `ep`."""
        if self.endpoints[self._current] == ep:
            self._current = (self._current + 1) % len(self.endpoints)
        if ep in self._failed:
            self._failed[ep].set()

    async def call_member(self, url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One POST to the member at `url` (no failover: some requests, such as a raft
        leadership transfer, must reach one member). Raises StoreUnavailable or StoreError."""
        try:
            if self.user and self._token is None:
                await self._login(url.rstrip("/"), self.timeout)
            async with self._http().post(f"{url.rstrip('/')}/v3/{path}", json=body, headers=self._auth(),
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                data = await r.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, RecursionError) as e:
            raise StoreUnavailable(f"{url}: {type(e).__name__} {e}".strip()) from None
        if r.status != 200:
            raise StoreError(f"etcd {url} refused {path}: {self._classify(url, data)}")
        return data

    async def raft_status(self) -> tuple[str, dict[str, list[str]], dict[str, str]]:
        """(raft leader's member id, member id -> client URLs, member id -> name),
        as the member answering now sees them. Raises StoreError."""
        status = await self.call("maintenance/status", {})
        listed = await self.call("cluster/member/list", {})
        urls = {str(m["ID"]): [str(u) for u in m.get("clientURLs") or ()] for m in listed.get("members", [])}
        names = {str(m["ID"]): str(m.get("name", "")) for m in listed.get("members", [])}
        return str(status.get("leader", "")), urls, names

    async def version(self) -> str:
        """The etcd server version of the first member that answers GET /version."""
        for ep in self.endpoints:
            try:
                async with self._http().get(f"{ep}/version",
                                            timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                    return str((await r.json(content_type=None))["etcdserver"])
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError, TypeError,
                    RecursionError):
                continue
        raise StoreUnavailable("no etcd member answered GET /version")

    def _auth(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def _login(self, ep: str, budget: float) -> None:
        """Get a token from `ep`, one authentication at a time per endpoint: a request waits
        at most `budget` for the one in flight there, which runs on to AUTH_TIMEOUT when
        nobody waits. etcd checks the password with bcrypt (~60 ms idle, seconds on a loaded
        host): with each request authenticating within its own slice, a busy etcd saw every
        attempt abandoned and went on checking each one, and no client got a token. Per
        endpoint, because a request that gives up on a frozen member and fails over must
        not wait out that member's 10 s login: its lease would expire first."""
        task = self._logins.get(ep)
        if task is None or task.done():
            task = self._logins[ep] = asyncio.ensure_future(self._authenticate(ep, AUTH_TIMEOUT))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved by someone
        await asyncio.wait_for(asyncio.shield(task), budget)

    async def _authenticate(self, ep: str, timeout: float) -> None:
        async with self._http().post(f"{ep}/v3/auth/authenticate",
                                     json={"name": self.user, "password": self._password},
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            data = await r.json(content_type=None)
        if r.status == 200 and isinstance(data, dict) and data.get("token"):
            self._token = str(data["token"])
            return
        msg = str(data.get("error") or data.get("message") or data) if isinstance(data, dict) else str(data)
        if "authentication failed" in msg or "not enabled" in msg:
            raise StoreError(f"etcd {ep} refused user {self.user!r}: {msg}; check etcd.user and "
                             "etcd.password_file")
        raise aiohttp.ClientPayloadError(f"authenticate: {msg}")  # retried like any answer

    def _classify(self, ep: str, data: Any) -> str:
        msg = str(data.get("error") or data.get("message") or data) if isinstance(data, dict) else str(data)
        if any(t in msg for t in TOKEN_GONE) and self.user:
            self._token = None  # expired (simple tokens live 5 minutes idle): authenticate again
            return f"{ep}: {msg}"
        if "lease not found" in msg:
            raise LeaseNotFound(msg)
        if not any(r in msg for r in _RETRYABLE):
            raise StoreError(f"etcd {ep} refused the request: {msg}")
        return f"{ep}: {msg}"

    # -- Store -------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        r = await self.call("kv/range", {"key": b64(key)})
        kvs = r.get("kvs") or []
        return kv_of(kvs[0]) if kvs else None

    async def range(self, prefix: str, end: str | None = None) -> tuple[list[KeyValue], int]:
        end = prefix_end(prefix) if end is None else end
        r = await self.call("kv/range", {"key": b64(prefix), "range_end": b64(end)})
        return [kv_of(d) for d in r.get("kvs") or []], int(r["header"]["revision"])

    async def put(self, key: str, value: str, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        r = await self.call("kv/put", body)
        return int(r["header"]["revision"])

    async def delete(self, key: str) -> bool:
        r = await self.call("kv/deleterange", {"key": b64(key)})
        return int(r.get("deleted", 0)) > 0

    async def create(self, key: str, value: str, lease: int = 0) -> tuple[bool, KeyValue]:
        put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = str(lease)
        r = await self.call("kv/txn", {
            "compare": [{"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": put}, {"request_range": {"key": b64(key)}}],
            "failure": [{"request_range": {"key": b64(key)}}]})
        ok = bool(r.get("succeeded", False))
        ranges = [x["response_range"] for x in r.get("responses", []) if "response_range" in x]
        kvs = ranges[-1].get("kvs") if ranges else None
        if not kvs:  # the key vanished between our ops (lease expired): report it absent
            raise StoreError(f"{key} was deleted while being created")
        return ok, kv_of(kvs[0])

    async def delete_if_created(self, key: str, create_revision: int) -> bool:
        r = await self.call("kv/txn", {
            "compare": [{"key": b64(key), "result": "EQUAL", "target": "CREATE",
                         "create_revision": str(create_revision)}],
            "success": [{"request_delete_range": {"key": b64(key)}}]})
        return bool(r.get("succeeded", False))

    async def txn(self, expect: list[Expect], puts: list[tuple[str, str, int]],
                  deletes: list[str] = ()) -> tuple[bool, int]:
        compare = []
        for e in expect:
            for target, value in (("CREATE", e.create_revision), ("MOD", e.mod_revision)):
                if value is not None:
                    compare.append({"key": b64(e.key), "result": "EQUAL", "target": target,
                                    f"{target.lower()}_revision": str(value)})
        ops: list[dict[str, Any]] = []
        for key, value, lease in puts:
            ops.append({"request_put": {"key": b64(key), "value": b64(value), **({"lease": str(lease)}
                                                                                   if lease else {})}})
        ops += [{"request_delete_range": {"key": b64(key)}} for key in deletes]
        r = await self.call("kv/txn", {"compare": compare, "success": ops})
        return bool(r.get("succeeded", False)), int(r["header"]["revision"])

    async def delete_prefix(self, prefix: str) -> int:
        r = await self.call("kv/deleterange", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        return int(r.get("deleted", 0))

    async def grant(self, ttl: int) -> Lease:
        r = await self.call("lease/grant", {"TTL": str(int(ttl))})
        if r.get("error"):
            raise StoreError(f"lease grant refused: {r['error']}")
        return Lease(int(r["ID"]), int(r["TTL"]))

    async def keepalive(self, lease_id: int) -> int:
        r = await self.call("lease/keepalive", {"ID": str(lease_id)})
        ttl = int(r.get("result", {}).get("TTL", 0))
        if ttl <= 0:  # etcd answers TTL 0 (omitted) for an expired lease
            raise LeaseNotFound(f"lease {lease_id:x} expired")
        return ttl

    async def revoke(self, lease_id: int) -> bool:
        try:
            await self.call("lease/revoke", {"ID": str(lease_id)})
            return True
        except LeaseNotFound:
            return False

    async def lease_left(self, lease_id: int) -> tuple[int, int]:
        return lease_answer(await self.call("lease/timetolive", {"ID": str(lease_id)}))

    async def compact(self, revision: int) -> None:
        await self.call("kv/compaction", {"revision": str(revision), "physical": True})

    async def watch(self, prefix: str, start_revision: int, resume: bool = True,
                    range_end: str | None = None) -> AsyncIterator[WatchEvent]:
        nxt = start_revision
        failures = 0
        while True:
            ep = self.endpoints[self._current]
            failed = None if resume else self._failed.setdefault(ep, asyncio.Event())
            if failed is not None:
                failed.clear()  # armed before any await: a move off `ep` from now on ends it
            req = {"key": b64(prefix), "range_end": b64(range_end or prefix_end(prefix))}
            if nxt:
                req["start_revision"] = str(nxt)
            try:
                timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout)
                if self.user and self._token is None:
                    await self._login(ep, self.timeout)
                # Require a leader: etcd ends the watch when its member loses the raft
                # leader, where it would otherwise stay open and silent (a frozen mirror).
                async with self._http().post(f"{ep}/v3/watch", json={"create_request": req},
                                             headers={**self._auth(), **REQUIRE_LEADER},
                                             timeout=timeout) as resp:
                    async for line in lines(resp.content, failed):
                        failures = 0
                        for ev, rev in watch_line(line):
                            if ev is None:
                                nxt = nxt or rev + 1
                                continue
                            nxt = ev.revision + 1
                            yield ev
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, RecursionError) as e:
                if isinstance(e, WatchEnded) and e.token_gone:
                    self._token = None  # authenticate again before the watch resumes
                log.debug("watch on %s broke: %s", ep, e)
            # Stream ended or broke: resume from the next unseen revision elsewhere.
            failures += 1
            self._move_off(ep)
            if not resume:
                raise StoreUnavailable(f"the watch on {ep} ended; it resumes from revision {nxt}")
            await asyncio.sleep(min(1.0, 0.02 * failures))

    async def close(self) -> None:
        for task in self._logins.values():
            task.cancel()
        self._logins.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _ssl_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not (ca or cert):
        return None
    try:
        ctx = ssl.create_default_context(cafile=ca)
        if cert:
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise StoreError(f"cannot load etcd TLS files (ca={ca}, cert={cert}, key={key}): {e}") from None
    return ctx
