"""Operator commands on one node and on the cluster's compatibility:

- `vigil standby NODE` (Pacemaker's `crm node standby`): the node keeps
  running but takes no new requests and holds no role; a leader hands its
  role over at once. Recorded with who and why.
- `vigil drain NODE --wait`: the same, then waits until the node holds no
  role and its engine has no work pending (exit 1 if that takes longer than
  --timeout).
- `vigil resume NODE`: back to standby (also ending a flap-damping hold); it
  takes requests again and may lead.
- `vigil check compat [--json]`: each member's fingerprint against every
  member's declared requirements, and the differences between members. Exit
  1 when a member does not satisfy a requirement (a failover to it would
  fail), 0 otherwise (differences alone are reported, not errors).
"""

from __future__ import annotations

import asyncio
import json

from vigil.cli.cluster_cmd import _record, _run
from vigil.cluster_status import agent_views, compat_report
from vigil.cli.status_view import compat_lines
from vigil.cli.target import add_target_args, resolve
from vigil.core.view import MAINTENANCE, STANDBY
from vigil.errors import ConfigError, VigilError
from vigil.store.registry import Registry

DRAIN_SETTLE = 1.0  # s without work, and without the role, before a drain counts as done


def register(sub) -> None:
    for name, text in (("standby", "take NODE out of service: no new requests, no roles (kept until resume)"),
                       ("drain", "as standby, then wait until NODE holds no role and has no work pending"),
                       ("resume", "put NODE back in service after standby or drain")):
        p = sub.add_parser(name, help=text)
        add_target_args(p)
        p.add_argument("node")
        p.add_argument("--reason", default="", help="why (recorded in the event log)")
        if name == "drain":
            p.add_argument("--wait", action="store_true", help="wait until the node is drained")
            p.add_argument("--timeout", type=float, default=120.0, help="seconds --wait waits (default 120)")
        p.set_defaults(func=_maintenance, action=name)
    p = sub.add_parser("check", help="cluster checks: `vigil check compat`")
    checks = p.add_subparsers(dest="check", metavar="CHECK")
    checks.required = True
    c = checks.add_parser("compat", help="fingerprints against the workloads' requirements")
    add_target_args(c)
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=check_compat)


def _maintenance(args) -> int:
    target = resolve(args)
    if args.action == "drain" and args.timeout <= 0:
        raise ConfigError("--timeout", args.timeout, "must be a positive number of seconds")

    async def go(store):
        reg = Registry(store, target.keys)
        snap = await reg.snapshot()
        known = set(snap.members) | set(snap.states)
        if args.node not in known:
            raise VigilError(f"{args.node}: not a member of cluster {target.cluster} "
                             f"(known: {', '.join(sorted(known)) or 'none'})")
        state = STANDBY if args.action == "resume" else MAINTENANCE
        if args.action == "resume":
            await reg.release_hold(args.node)  # flap damping's hold, if any, ends too
        await reg.set_state(args.node, state)
        why = f" ({args.reason})" if args.reason else ""
        await _record(store, target, f"node_{args.action}", f"{target.operator} asked for {args.action} of "
                      f"{args.node}{why}", subject=args.node, reason=args.reason)
        if args.action == "drain" and args.wait:
            await _wait_drained(reg, target, args.node, args.timeout)
        print(f"{args.node}: {args.action} recorded (state {state})" +
              (", drained" if args.action == "drain" and args.wait else ""))
        return 0

    return _run(go, target)


async def _wait_drained(reg: Registry, target, node: str, timeout: float) -> None:
    """Until NODE leads nothing and its engine has had no work for DRAIN_SETTLE s on
    end: the routers learn the new state through their etcd watches, and a request
    one of them sent just before is on its way to the engine, not yet counted (an
    upgrade that restarted the engine at the first empty look failed it)."""
    loop = asyncio.get_running_loop()
    deadline, last, quiet_since = loop.time() + timeout, "not checked yet", None
    while loop.time() < deadline:
        snap = await reg.snapshot()
        view = (await agent_views(snap, [node], target.api)).get(node) if node in snap.members else None
        pending = ((view or {}).get("inference") or {}).get("pending") or 0
        leads = bool(snap.leader and snap.leader.name == node)
        if leads or pending:
            quiet_since, last = None, f"leader: {leads}, engine pending: {pending}"
        elif quiet_since is None:
            quiet_since = loop.time()
        elif loop.time() - quiet_since >= DRAIN_SETTLE:
            return
        await asyncio.sleep(0.1)
    raise VigilError(f"{node} is not drained after {timeout:g} s ({last}); it takes no new work, "
                     "run `vigil status` to see what it still holds")


def check_compat(args) -> int:
    target = resolve(args)

    async def go(store):
        snap = await Registry(store, target.keys).snapshot()
        return compat_report(snap.members)

    report = _run(go, target)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print("requirements: " + (json.dumps(report["requires"], sort_keys=True) if report["requires"]
                                  else "none declared (health.requires)"))
        lines = compat_lines(report)
        print("\n".join(lines) if lines else "every member satisfies every requirement; no differences")
    return 1 if report["mismatches"] else 0
