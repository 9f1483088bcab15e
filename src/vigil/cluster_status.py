"""The cluster's status as `vigil status --json` prints it (DESIGN.md's
contract): members, leases and the leader from etcd, each agent's live view
from its API (/status, behind its token), payload owners and the
compatibility report. Read by the CLI, the lab harness, `vigil diagnose` and
the agent's cluster page; rendering is the CLI's (vigil.cli.status_view)."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from vigil.core.compat import differences, mismatches
from vigil.errors import VigilError
from vigil.store.base import Store
from vigil.store.keys import Keys
from vigil.store.member_record import MemberRecord
from vigil.store.records import BadRecord, parse_payload
from vigil.store.registry import Registry, Snapshot


@dataclass(frozen=True)
class ApiAccess:
    """How to read agents' /status: the CA for https APIs (system CAs if
    None; always verified) and a bearer token where the API wants one."""

    ca: str | None = None
    token: str | None = None

    def session(self) -> aiohttp.ClientSession:
        ctx = ssl.create_default_context(cafile=self.ca)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), headers=headers)


async def _agent_status(http: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with http.get(url + "/status", timeout=aiohttp.ClientTimeout(total=0.7)) as r:
            if r.status == 401:  # never read as "agent down": fence would then skip its check
                raise VigilError(f"{url}/status wants a bearer token: give --api-token-file")
            return await r.json() if r.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, RecursionError):
        return None


async def agent_status(url: str, access: ApiAccess | None = None) -> dict[str, Any] | None:
    """One agent's /status (None where it does not answer). Raises VigilError when
    it wants a token we do not have."""
    async with (access or ApiAccess()).session() as http:
        return await _agent_status(http, url)


async def agent_views(snap: Snapshot, names: list[str],
                      access: ApiAccess | None = None) -> dict[str, dict[str, Any] | None]:
    """Each named member's agent /status (None where it does not answer)."""
    async with (access or ApiAccess()).session() as http:
        views = await asyncio.gather(*(_agent_status(http, snap.members[n].api_url)
                                       if n in snap.members else asyncio.sleep(0, None)
                                       for n in names))
    return dict(zip(names, views))


async def gather_status(store: Store, keys: Keys, access: ApiAccess | None = None) -> dict[str, Any]:
    """Members from etcd, lease TTLs from etcd, heartbeat ages from the agents."""
    snap = await Registry(store, keys).snapshot()
    names = sorted(set(snap.members) | set(snap.states))
    by_name = await agent_views(snap, names, access)
    ttls = await asyncio.gather(*(store.time_to_live(snap.member_leases[n]) if n in snap.members
                                  else asyncio.sleep(0, -1) for n in names))
    owners = await payload_owners(store, keys)
    members = []
    fencers: dict[str, set[str]] = {}
    for rec in snap.members.values():
        for target, types in rec.fences.items():
            fencers.setdefault(target, set()).update(types)
    for name, ttl in zip(names, ttls):
        rec = snap.members.get(name)
        ages = [v["peers"][name]["heartbeat_age"] for v in by_name.values()
                if v and name in v.get("peers", {}) and v["peers"][name]["heartbeat_age"] is not None
                and v["peers"][name]["state"] == "alive"]
        is_leader = bool(snap.leader and snap.leader.name == name)
        view = by_name.get(name)
        members.append({
            "name": name,
            "role": "leader" if is_leader else ("standby" if rec else "-"),
            "state": snap.states.get(name, "unregistered" if not rec else "pending"),
            "health": _health(rec),
            "verdict": rec.verdict if rec else "down",
            "reasons": list(rec.reasons) if rec else [],
            "fingerprint": rec.fingerprint if rec else {},
            "heartbeat_age": min(ages) if ages else None,
            "lease_ttl": ttl if ttl >= 0 else None,
            "token": snap.leader.token if is_leader else None,
            "priority": rec.priority if rec else None,
            "api_url": rec.api_url if rec else None,
            "agent_reachable": view is not None,
            "decision": view.get("decision") if view else None,
            "fencing": _fencing_label(fencers.get(name, set())),
            "engine": _engine(view, rec),
            "payloads": owners.count(name),
        })
    return {"cluster": keys.cluster, "revision": snap.revision,
            "leader": {"name": snap.leader.name, "token": snap.leader.token} if snap.leader else None,
            "switchover": {"to": snap.switchover.to} if snap.switchover else None,
            "members": members, "bad_records": dict(snap.bad_records),
            "compat": compat_report(snap.members)}


def compat_report(records: dict[str, MemberRecord]) -> dict[str, Any]:
    """The cluster's homogeneity and each member against every member's declared
    requirements (a workload's needs hold wherever it may fail over to)."""
    fps = {n: r.fingerprint for n, r in records.items()}
    required: dict[str, Any] = {}
    for r in records.values():
        required.update(r.requires)
    failing = {n: mismatches(fp, required) for n, fp in sorted(fps.items())}
    return {"requires": required, "differences": differences(fps),
            "mismatches": {n: m for n, m in failing.items() if m}}


def _health(rec: MemberRecord | None) -> str:
    """The contract's `health`: healthy when the member may lead (its `verdict` says more)."""
    if not rec:
        return "down"
    return "healthy" if rec.may_lead else "unhealthy"


def _engine(view: dict[str, Any] | None, rec: MemberRecord | None) -> dict[str, Any] | None:
    """The engine's verdict, live from the agent when it answers, else as last published."""
    inf = (view or {}).get("inference") or (rec.inference if rec else None)
    if not isinstance(inf, dict):
        return None
    verdict = inf.get("verdict") or ("ready" if inf.get("ready") else "not ready")
    return {"verdict": verdict, "pending": inf.get("pending"), "reason": inf.get("reason")}


def _fencing_label(types: set[str]) -> str:
    real = sorted(types - {"null"})
    if real:
        return "+".join(real)
    if types:
        return "NULL DEVICE (not fenced!)"
    return "none (lease only)"


async def payload_owners(store: Store, keys: Keys) -> list[str]:
    """The node of each payload record (vigil.core.payloads), one entry per record."""
    owners = []
    for kv in (await store.range(keys.payloads))[0]:
        rec = parse_payload(kv.key, kv.value)
        owners.append("?" if isinstance(rec, BadRecord) else rec.node)
    return owners
