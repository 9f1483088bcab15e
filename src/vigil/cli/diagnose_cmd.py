"""`vigil diagnose`: ranked findings from the cluster's events and status,
the kernel log, agents' logs and a corosync log (vigil.diagnose)."""

from __future__ import annotations

import json
from pathlib import Path

from vigil.cli.target import add_target_args, resolve
from vigil.diagnose import cluster_rules, host_rules
from vigil.diagnose.collect import gather
from vigil.diagnose.finding import CRITICAL, ERROR, Finding, diagnose
from vigil.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("diagnose", help="what is wrong, why, and the command that fixes it",
                       description="Read the cluster's events and status, the kernel log, the agents' logs "
                                   "and a corosync log; print ranked findings: symptom, cause, evidence and "
                                   "fix. Exit 1 when a finding is critical or an error.")
    add_target_args(p)
    p.add_argument("--since", type=float, default=3600.0, help="seconds of events to read (default 3600)")
    p.add_argument("--kernel-log", help="a kernel log file (default: `dmesg`; give the node's health.kernel_log "
                   "where it follows a file)")
    p.add_argument("--corosync-log", help="a corosync log (default: /var/log/cluster/corosync.log if present)")
    p.add_argument("--agent-log", action="append", default=[], help="an agent's log file (repeatable; a "
                                                                    "lab's are read by themselves)")
    p.add_argument("--limit", type=int, default=20, help="findings to print (default 20; 0: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=diagnose_cmd)


def diagnose_cmd(args) -> int:
    if not 0 < args.since <= 366 * 86400:
        raise ConfigError("--since", args.since, "give seconds of history, up to a year")
    if args.limit < 0:
        raise ConfigError("--limit", args.limit, "give 0 (all) or more")
    target = resolve(args)
    logs = list(args.agent_log)
    if args.lab:
        logs += sorted(str(p) for p in Path(args.lab).glob("nodes/*/agent.log"))
    ev, missing = gather(target, args.since, args.kernel_log, args.corosync_log, logs)
    found = diagnose(ev, (*cluster_rules.RULES, *host_rules.RULES))
    shown = found[:args.limit] if args.limit else found
    if args.json:
        print(json.dumps({"findings": [f.to_json() for f in shown], "total": len(found),
                          "not_read": missing, "events_read": len(ev.events)}, indent=2))
    else:
        print(render(shown, len(found), missing, len(ev.events)))
    return 1 if any(f.severity in (CRITICAL, ERROR) for f in found) else 0


def render(found: list[Finding], total: int, missing: list[str], events: int) -> str:
    if not found:
        lines = [f"no findings: {events} events read, nothing the matrix knows is wrong"]
    else:
        lines = []
        for i, f in enumerate(found, 1):
            lines.append(f"{i}. [{f.severity.upper()}] {f.symptom}")
            lines.append(f"   cause: {f.cause}")
            lines.append(f"   fix:   {f.fix}")
            lines += [f"   | {e}" for e in f.evidence]
        if total > len(found):
            lines.append(f"({total - len(found)} more: --limit 0)")
    lines += [f"not read: {m}" for m in missing]
    return "\n".join(lines)
