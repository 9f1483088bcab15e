"""`vigil status`, `vigil events`, `vigil payloads`, `vigil switchover`."""

from __future__ import annotations

import asyncio
import datetime
import json

from vigil.cluster_status import gather_status
from vigil.cli.status_view import render_table
from vigil.cli.target import add_target_args, resolve
from vigil.core.records import decode_object
from vigil.errors import ConfigError, VigilError
from vigil.store.events import read_events
from vigil.store.registry import Registry

SWITCHOVER_TTL = 10


def register(sub) -> None:
    p = sub.add_parser("status", help="members, roles, health, heartbeat age, lease TTL, token")
    add_target_args(p)
    p.add_argument("--json", action="store_true", help="print JSON (the documented contract)")
    p.set_defaults(func=status)
    p = sub.add_parser("events", help="show the event log, oldest first")
    add_target_args(p)
    p.add_argument("--limit", type=int, default=50, help="newest N events (0: all; default 50)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=events)
    p = sub.add_parser("payloads", help="long-running work (generations, jobs) and the node doing it")
    add_target_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=payloads)
    p = sub.add_parser("switchover", help="move leadership to a healthy standby on purpose")
    add_target_args(p)
    p.add_argument("--to", required=True, metavar="NODE", help="the node to lead next")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for it (default 10)")
    p.set_defaults(func=switchover)
    p = sub.add_parser("fence", help="record that NODE is powered off (after a manual power-off)")
    add_target_args(p)
    p.add_argument("node")
    p.add_argument("--confirm-off", action="store_true", required=True,
                   help="you have verified NODE is powered off (as `stonith_admin --confirm`)")
    p.add_argument("--force", action="store_true",
                   help="confirm even though peers still hear NODE's heartbeats")
    p.set_defaults(func=fence)


def _run(coro_fn, target):
    return target.run(coro_fn)


def status(args) -> int:
    target = resolve(args)
    doc = _run(lambda store: gather_status(store, target.keys, target.api), target)
    print(json.dumps(doc, indent=2) if args.json else render_table(doc))
    return 0


def events(args) -> int:
    if args.limit < 0:
        raise ConfigError("--limit", args.limit, "must be 0 (all) or a positive count")
    target = resolve(args)
    evs = _run(lambda store: read_events(store, target.keys, args.limit), target)
    if args.json:
        print(json.dumps(evs, indent=2))
        return 0
    for e in evs:
        at = datetime.datetime.fromtimestamp(e.get("at", 0)).strftime("%H:%M:%S.%f")[:-3]
        print(f"{at}  {e.get('node', '?'):<8} {e.get('kind', '?'):<16} {e.get('cause', '')}")
    return 0


async def read_payloads(store, keys) -> list[dict]:
    """The payload records (vigil.core.payloads), oldest first; an unreadable one is shown as such."""
    kvs, _ = await store.range(keys.payloads)
    out = []
    for kv in kvs:
        rec = decode_object(kv.key, kv.value)  # bounded: every number finite, a time prints
        out.append(rec if isinstance(rec, dict) else {"id": kv.key[len(keys.payloads):], "corrupt": kv.value[:200]})
    return sorted(out, key=lambda r: r.get("started", 0) if isinstance(r.get("started"), (int, float)) else 0)


def payloads(args) -> int:
    target = resolve(args)
    recs = _run(lambda store: read_payloads(store, target.keys), target)
    if args.json:
        print(json.dumps(recs, indent=2))
        return 0
    now = datetime.datetime.now().timestamp()
    print(f"{'ID':<36} {'NODE':<8} {'KIND':<10} {'MODEL':<24} {'AGE':>7} {'PROGRESS':>9}")
    for r in recs:
        age = f"{now - r['started']:.1f}s" if isinstance(r.get("started"), (int, float)) else "?"
        print(f"{str(r.get('id')):<36} {str(r.get('node', '?')):<8} {str(r.get('kind', '?')):<10} "
              f"{str(r.get('model', '?')):<24} {age:>7} {str(r.get('progress', '?')):>9}")
    if not recs:
        print("(no long-running work registered)")
    return 0


def switchover(args) -> int:
    target = resolve(args)

    async def go(store):
        reg = Registry(store, target.keys)
        snap = await reg.snapshot()
        infos = snap.member_infos()
        if args.to not in infos:
            raise VigilError(f"--to {args.to}: no such registered member "
                             f"(members: {', '.join(sorted(infos)) or 'none'})")
        if not infos[args.to].healthy:
            raise VigilError(f"--to {args.to}: it is unhealthy ({'; '.join(infos[args.to].reasons)})")
        if snap.leader and snap.leader.name == args.to:
            print(f"{args.to} already leads (token {snap.leader.token})")
            return 0
        lease = await store.grant(SWITCHOVER_TTL)
        await reg.request_switchover(args.to, target.operator, lease.id)
        await _record(store, target, "switchover_requested", f"{target.operator} asked for a "
                      f"switchover to {args.to}", subject=args.to)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.wait
        while loop.time() < deadline:
            snap = await reg.snapshot()
            if snap.leader and snap.leader.name == args.to:
                await store.revoke(lease.id)  # the request is done (no node's etcd role may delete it)
                print(f"switchover done: {args.to} leads with token {snap.leader.token}")
                return 0
            await asyncio.sleep(0.05)
        raise VigilError(f"{args.to} did not take over within {args.wait:g} s; "
                         "see `vigil events` for why")

    return _run(go, target)


def fence(args) -> int:
    target = resolve(args)

    async def go(store):
        reg = Registry(store, target.keys)
        snap = await reg.snapshot()
        known = set(snap.members) | set(snap.states) | set(snap.fence_blocked)
        if args.node not in known:
            raise VigilError(f"{args.node}: not a member of cluster {target.cluster} "
                             f"(known: {', '.join(sorted(known)) or 'none'})")
        hearers = await _still_heard(snap, args.node, target.api)
        if hearers and not args.force:
            raise VigilError(f"{args.node} is not powered off: {', '.join(hearers)} still hear its "
                             "heartbeats. Releasing its roles now could let two leaders act. Power it "
                             "off (or cut it off) first; if you are sure, add --force")
        leases = {snap.member_leases.get(args.node, 0)}
        if snap.leader and snap.leader.name == args.node:
            leases.add(snap.leader.lease)
        for lease in leases - {0}:
            await store.revoke(lease)  # its leader key and member record go with it
        await reg.fenced(args.node)
        await _record(store, target, "fence_confirmed", f"{target.operator} confirmed {args.node} is "
                      "powered off; its roles are released" +
                      (f" (forced: {', '.join(hearers)} still heard it)" if hearers else ""), subject=args.node)
        print(f"{args.node} marked fenced; its lease is revoked and its roles may move")
        return 0

    return _run(go, target)


async def _record(store, target, kind: str, cause: str, **details) -> None:
    """One event in the cluster's log, naming the operator who caused it."""
    from vigil.clock import SystemClock
    from vigil.store.events import EventLog

    log = EventLog(store, target.keys, "operator", SystemClock())
    log.record(kind, cause, operator=target.operator, **details)
    await log.flush()


async def _still_heard(snap, node: str, access) -> list[str]:
    """The members whose agents say `node`'s heartbeats are alive right now."""
    from vigil.cluster_status import agent_views

    views = await agent_views(snap, [n for n in snap.members if n != node], access)
    return sorted(name for name, v in views.items()
                  if v and (v.get("peers", {}).get(node) or {}).get("state") == "alive")
