"""The troubleshooting matrix, cluster side: fencing that failed, no leader,
a VIP that does not start, failed and held nodes, lost failure domains,
etcd trouble, unreachable BMCs, hung engines, failing decision loops.
Each rule reads Evidence (vigil.diagnose.finding) and never raises on odd
input (diagnose() turns an exception into a finding anyway)."""

from __future__ import annotations

import re

from vigil.diagnose.finding import CRITICAL, ERROR, WARNING, Evidence, Finding, at, line

FENCE_END = ("node_fenced", "fence_confirmed", "fencing_abandoned")
ETCD_TROUBLE = re.compile(r"etcd did not answer|cannot open an etcd session|keep-alive of lease .* failed")


def fencing_blocked(ev: Evidence) -> list[Finding]:
    """A fence that failed and was not followed by the node fenced (or confirmed off)."""
    out = []
    for node in sorted({str(e.get("subject")) for e in ev.events if e.get("kind") == "fencing_failed"}):
        failed = ev.last(lambda e: e.get("kind") == "fencing_failed" and e.get("subject") == node)
        ended = ev.last(lambda e: e.get("subject") == node and (
            e.get("kind") in FENCE_END or (e.get("kind") == "state_changed" and e.get("state") == "fenced")))
        if failed is None or (ended is not None and ended[0] > failed[0]):
            continue
        e = failed[1]
        levels = [x for x in ev.events if x.get("kind") == "fencing_level_failed" and x.get("subject") == node]
        why = "; ".join(str(x.get("cause", ""))[:160] for x in levels[-3:]) or str(e.get("cause"))
        out.append(Finding(
            CRITICAL, f"the takeover from {node} is blocked: fencing {node} failed",
            f"no fence device confirmed it off, so nobody may take its roles (two leaders must never act): {why}",
            f"power {node} off by hand (`ipmitool -I lanplus -H BMC -U USER -E chassis power off`, or pull "
            f"its power), check it is off, then `vigil fence {node} --confirm-off`",
            tuple(line(x) for x in [*levels[-3:], e]), node, at(e)))
    return out


def no_leader(ev: Evidence) -> list[Finding]:
    if not isinstance(ev.status, dict):
        return [Finding(CRITICAL, "etcd does not answer: no status, no leader can be read",
                        ev.status_error or "etcd unreachable", "`etcdctl endpoint health --cluster`; on each etcd "
                        "node `systemctl status etcd`; `vigil firewall show` for the client port")]
    if ev.status.get("leader"):
        return []
    members = ev.members()
    blocked = [f.subject for f in fencing_blocked(ev)]
    unfit = [f"{m.get('name')}: {m.get('state')}, {m.get('verdict')}" for m in members
             if m.get("state") in ("fenced", "maintenance", "held", "draining", "failed", "unregistered")
             or m.get("verdict") in ("draining", "failed", "down")]
    if blocked:
        cause, fix = f"fencing {', '.join(blocked)} failed (the finding above)", "fix the fencing first"
    elif members and len(unfit) == len(members):
        cause = "no member may lead: " + "; ".join(unfit)
        fix = "bring one member back: `vigil resume NODE` for a held or drained node, or fix its verdict"
    else:
        cause = "no member has taken the role yet (a takeover waits a lease TTL after a crash)"
        fix = "wait one lease TTL; if it stays, `vigil events --limit 50` and each agent's log"
    return [Finding(CRITICAL, "the cluster has no leader", cause, fix, tuple(unfit[:10]), "", ev.now,
                    follows=bool(blocked))]


def vip_start_failed(ev: Evidence) -> list[Finding]:
    out = []
    for vip in sorted({str(e.get("vip")) for e in ev.events if e.get("kind") == "resource_start_failed"}):
        last = ev.last(lambda e: e.get("vip") == vip and e.get("kind") in ("resource_start_failed",
                                                                              "resource_started"))
        if last is None or last[1].get("kind") != "resource_start_failed":
            continue
        e = last[1]
        cause = str(e.get("cause", ""))
        if "interface" in cause or "device" in cause:
            fix = "the VIP's interface is missing or down on that node: `ip link`; correct vips[].interface"
        elif "in use" in cause or "duplicate" in cause or "answers" in cause:
            address, _, interface = vip.partition(" on ")  # the label: "10.0.0.9/24 on eth0"
            fix = (f"another host holds {address}: `arping -D -I {interface or 'IF'} {address.split('/')[0]}` "
                   "finds its MAC; remove the address there")
        else:
            fix = "`ip addr` on that node and its agent's log (`journalctl -u vigil-agent`)"
        out.append(Finding(ERROR, f"VIP {vip} does not start on {e.get('node')}", cause, fix, (line(e),),
                           vip, at(e)))
    return out


def failed_nodes(ev: Evidence) -> list[Finding]:
    out = []
    for m in ev.members():
        name, state = m.get("name"), m.get("state")
        if state == "held":
            out.append(Finding(WARNING, f"{name} is held out (flap damping)", "it failed too often in the "
                               "flap window", f"find why it fails (the findings about {name}), then "
                               f"`vigil resume {name}`", (f"status: {name} held",), name, ev.now))
        if state not in ("failed", "fenced"):
            continue
        changed = ev.latest(("state_changed",), name)
        suspected = [x for x in ev.events if x.get("kind") == "peer_suspected" and x.get("peer") == name][-3:]
        stopped = ev.latest(("agent_stopped",), None)
        why = ("its peers stopped hearing it: " + "; ".join(str(x.get("cause", ""))[:120] for x in suspected)
               if suspected else str((changed or {}).get("cause", "its member record is gone")))
        if stopped is not None and stopped.get("node") == name:
            why = f"its agent stopped: {stopped.get('cause')}"
        out.append(Finding(ERROR, f"{name} is {state}", why,
                           f"on {name}: `journalctl -u vigil-agent -b`; is it up (`ipmitool ... power status`)? "
                           f"it rejoins by itself once its agent runs", tuple(line(x) for x in
                                                                              [*suspected, *([changed] if changed else [])]),
                           name, at(changed, ev.now) if changed else ev.now))
    return out


def domains_lost(ev: Evidence) -> list[Finding]:
    return [Finding(ERROR, f"failure domain {e.get('subject')} was lost at once", str(e.get("cause", "")),
                    f"check the power feed and the switch of {e.get('subject')}", (line(e),),
                    str(e.get("subject")), at(e))
            for e in ev.events if e.get("kind") == "domain_lost"]


def etcd_trouble(ev: Evidence) -> list[Finding]:
    out = []
    lost = [e for e in ev.events if e.get("kind") == "session_lost"]
    logged = [f"{src}: {ln}" for src, lines in ev.logs.items() for ln in lines if ETCD_TROUBLE.search(ln)]
    if lost or logged:
        nodes = sorted({str(e.get("node")) for e in lost})
        out.append(Finding(ERROR if lost else WARNING, "agents lost or nearly lost their etcd sessions",
                           f"{len(lost)} session(s) lost ({', '.join(nodes) or 'none'}), {len(logged)} etcd "
                           "timeouts in the agents' logs: etcd slow, overloaded or cut off",
                           "`etcdctl endpoint health --cluster` and `endpoint status`; its disk "
                           "(`vigil preflight --etcd-data-dir DIR`: fdatasync p99 under 10 ms); the network "
                           "between the agents and etcd", tuple([line(e) for e in lost[-3:]] + logged[-3:]),
                           "etcd", max([at(e) for e in lost] or [ev.now])))
    e = ev.latest(("etcd_version_warning",))
    if e is not None:
        out.append(Finding(WARNING, "etcd has a known lease bug", str(e.get("cause", "")),
                           "upgrade etcd to 3.5.11 or later", (line(e),), "etcd", at(e)))
    return out


def bmcs(ev: Evidence) -> list[Finding]:
    out = []
    for e in ev.events:
        if e.get("kind") != "fence_device_unreachable":
            continue
        dev = e.get("device")
        later = ev.last(lambda x: x.get("device") == dev and
                        x.get("kind") in ("fence_device_reachable", "fence_device_unreachable"))
        if later is not None and later[1] is e:
            out.append(Finding(ERROR, f"{dev} does not answer: a fence of {e.get('subject')} would fail",
                               str(e.get("cause", "")), "check the BMC's network and credentials: "
                               "`ipmitool -I lanplus -H BMC -U USER -E power status`",
                               (line(e),), str(e.get("subject")), at(e)))
    return out


def engines(ev: Evidence) -> list[Finding]:
    out = []
    for m in ev.members():
        eng = m.get("engine") if isinstance(m.get("engine"), dict) else {}
        if eng.get("verdict") in ("hung", "dead"):
            out.append(Finding(ERROR, f"the model server on {m.get('name')} is {eng.get('verdict')}",
                               str(eng.get("reason") or ""), "its agent restarts it; if it stays, its log "
                               f"and `nvidia-smi` on {m.get('name')}", (f"status: {m.get('name')} engine "
                                                                       f"{eng.get('verdict')}",),
                               str(m.get("name")), ev.now))
    return out


def agents_failing(ev: Evidence) -> list[Finding]:
    out = []
    for kinds, ok_kind, sev, what, fix in (
            (("decision_loop_failed",), "decision_loop_recovered", ERROR, "its decision loop fails",
             "the agent's log (`journalctl -u vigil-agent`): the exception it names"),
            (("watchdog_unavailable",), "watchdog_armed", WARNING, "runs without a watchdog",
             "load a watchdog driver (`modprobe softdog`): a frozen agent is then reset"),
            (("clock_skew",), "clock_skew_cleared", WARNING, "sees a peer's clock off",
             "synchronise both clocks (chrony; `chronyc tracking`)")):
        last_by_node: dict[str, dict] = {}
        for e in ev.events:
            if e.get("kind") in (*kinds, ok_kind):
                last_by_node[f"{e.get('node')}/{e.get('subject', '')}"] = e
        for e in last_by_node.values():
            if e.get("kind") in kinds:
                out.append(Finding(sev, f"{e.get('node')} {what}", str(e.get("cause", "")), fix, (line(e),),
                                   str(e.get("node")), at(e)))
    return out


def bad_records(ev: Evidence) -> list[Finding]:
    bad = ev.mapping("bad_records")
    if not bad:
        return []
    return [Finding(WARNING if len(bad) < 5 else ERROR, f"{len(bad)} record(s) in etcd no agent wrote",
                    "someone with write access to the cluster's keys wrote them; agents ignore them",
                    "find the writer (etcd's audit or users: `vigil etcd-auth`), then delete the keys",
                    tuple(f"{k}: {v}"[:200] for k, v in list(bad.items())[:5]), "etcd", ev.now)]


RULES = (fencing_blocked, no_leader, vip_start_failed, failed_nodes, domains_lost, etcd_trouble, bmcs,
         engines, agents_failing, bad_records)
