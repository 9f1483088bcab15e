"""The status page's data (GET /cluster, behind the API's tokens; the page
itself is vigil/ui/status.html at GET /ui): the cluster as this agent sees
it now. Members, roles, states and verdicts come from the snapshot its
last cycle read (no etcd read per request); heartbeat ages from its own
detectors; the recent events, payloads and jobs from etcd, read at most
once per READ_EVERY seconds however often the page asks (a page left open
in ten browsers must not load etcd).

Contract: `document()` never raises; a part etcd did not give is named in
`problems` and the last good copy stays."""

from __future__ import annotations

import time
from typing import Any

from vigil.errors import StoreError, VigilError

READ_EVERY = 2.0  # s between etcd reads for the page, whatever the number of viewers
EVENTS = 40


class ClusterPage:
    def __init__(self, agent: Any):
        self.a = agent
        self._read_at = -READ_EVERY
        self._events: list[dict[str, Any]] = []
        self._payloads: dict[str, int] = {}
        self._jobs: list[dict[str, Any]] = []
        self._problems: list[str] = []

    async def document(self) -> dict[str, Any]:
        a = self.a
        now = a.clock.now()
        if now - self._read_at >= READ_EVERY:
            self._read_at = now
            await self._read()
        snap = a.snapshot
        leader = snap.leader if snap else None
        return {"cluster": a.cfg.cluster, "node": a.cfg.node, "at": time.time(),
                "leader": {"name": leader.name, "token": leader.token} if leader else None,
                "vips": [v.label for v in a.cfg.vips], "vip_holder": leader.name if leader and a.cfg.vips else None,
                "members": self._members(snap, now), "events": self._events, "jobs": self._jobs,
                "problems": self._problems + ([] if snap else ["no snapshot yet: the agent is starting"])}

    def _members(self, snap: Any, now: float) -> list[dict[str, Any]]:
        if snap is None:
            return []
        a, out = self.a, []
        domains = a.cfg.domains()
        for name in sorted(set(snap.members) | set(snap.states)):
            rec = snap.members.get(name)
            peer = a.heartbeats.peers.peers.get(name)
            age = 0.0 if name == a.cfg.node else (peer.heartbeat_age(now) if peer else None)
            inf = (rec.inference or {}) if rec else {}
            out.append({
                "name": name, "role": "leader" if snap.leader and snap.leader.name == name else
                ("standby" if rec else "-"), "state": snap.states.get(name, "unregistered" if not rec else "pending"),
                "verdict": rec.verdict if rec else "down", "reasons": list(rec.reasons)[:5] if rec else [],
                "heartbeat_age": None if age is None else round(age, 3),
                "heard": peer.state if peer else ("self" if name == a.cfg.node else "not watched"),
                "domain": domains.get(name, "?"), "version": rec.version if rec else "",
                "engine": {"verdict": inf.get("verdict") or ("ready" if inf.get("ready") else "-"),
                           "pending": inf.get("pending")} if inf else None,
                "payloads": self._payloads.get(name, 0)})
        return out

    async def _read(self) -> None:
        from vigil.cluster_status import payload_owners
        from vigil.store.events import read_events
        from vigil.store.jobs import list_jobs

        a, problems = self.a, []
        try:
            self._events = list(reversed(await read_events(a.store, a.keys, EVENTS)))
        except (StoreError, VigilError) as e:
            problems.append(f"events: {e}")
        try:
            owners = await payload_owners(a.store, a.keys)
            self._payloads = {n: owners.count(n) for n in set(owners)}
            self._jobs = [{k: j.get(k) for k in ("id", "state", "done", "total", "percent", "nodes")}
                          for j in await list_jobs(a.store, a.keys)][-10:]
        except (StoreError, VigilError) as e:
            problems.append(f"payloads and jobs: {e}")
        self._problems = problems
