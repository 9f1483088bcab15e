"""The troubleshooting matrix, node side: a GPU's XIDs (from the verdicts
nodes published and from the kernel log), the facility's PLC fault codes,
heat, the drain budget held full, and a corosync log's ring trouble (for
operators who run or ran Pacemaker). Each rule reads Evidence
(vigil.diagnose.finding)."""

from __future__ import annotations

import re

from vigil.core.health import XID_CATALOG
from vigil.diagnose.finding import ERROR, INFO, WARNING, Evidence, Finding, at, line
from vigil.probes.xid import parse_xid

# "XID 79 on GPU 0000:3b:00: GPU has fallen off the bus" (vigil.core.health): a PCI address has
# colons, but never one followed by a space.
XID_REASON = re.compile(r"XID (\d+) on (.+?): ")
FAULT_CODE = re.compile(r"fault code (0x[0-9A-Fa-f]+)(?: \(([^)]*)\))?")
HEAT = re.compile(r"°C")
# vigil.core.drain_budget.deferred's words: "... (1 at once[, 1 of rack-2]): 0 member(s) already out ..."
DEFERRAL = re.compile(r"\((\d+) at once[^)]*\): (\d+) member\(s\) already out")
ECC_XIDS = {48, 63, 64, 92, 94, 95, 140}
# corosync's logfile line ("Dec 07 09:13:28 [19448] c2 corosync error   [TOTEM ] FAILED TO RECEIVE",
# with `timestamp: hires` "09:13:28.123"), or syslog's and the journal's ("Dec 07 09:13:28 c2 corosync[19448]:")
COROSYNC_HOST = re.compile(r"^\w{3} +\d+ [\d:.]+ (?:\[\d+\] (\S+) corosync |(\S+) corosync\[\d+\]:)")


def _xid_fix(xid: int, node: str, gpu: str) -> str:
    if xid == 79:
        return (f"the GPU fell off the bus: reboot {node} (`systemctl reboot`); if it comes back the same, "
                f"reseat or replace the GPU; then `vigil resume {node}` if it was held")
    if xid in ECC_XIDS:
        return (f"{node} drains itself; once it holds nothing, reset the GPU (`nvidia-smi -r -i {gpu}`) or "
                "reboot, and check its memory (`nvidia-smi -q -d ECC,ROW_REMAPPER`)")
    if xid in (13, 31, 43, 45):
        return "an application fault: its agent restarts the inference server; if it repeats, the model or CUDA code"
    return f"look XID {xid} up in NVIDIA's catalog (docs.nvidia.com/deploy/xid-errors); `nvidia-smi -q` on {node}"


def _current(ev: Evidence) -> dict[str, tuple[str, list[str], dict]]:
    """Each node's last published verdict and reasons, from its last health_verdict event."""
    out: dict[str, tuple[str, list[str], dict]] = {}
    for e in ev.events:
        if e.get("kind") == "health_verdict":
            reasons = e.get("reasons")
            out[str(e.get("node"))] = (str(e.get("verdict")), [str(r) for r in reasons]
                                       if isinstance(reasons, list) else [], e)
    return out


def gpu_xids(ev: Evidence) -> list[Finding]:
    out = []
    for node, (verdict, reasons, e) in sorted(_current(ev).items()):
        for r in reasons:
            m = XID_REASON.search(r)
            if not m or verdict == "ready":
                continue
            xid, gpu = int(m.group(1)), m.group(2).replace("GPU ", "").strip()
            kernel = [k for k in ev.kernel if (x := parse_xid(k)) and x.xid == xid][-3:]
            out.append(Finding(ERROR if verdict in ("draining", "failed") else WARNING,
                               f"{node} is {verdict}: XID {xid} on GPU {gpu}",
                               f"{XID_CATALOG.get(xid, ('', '', 'not in the catalog'))[2]} ({r})",
                               _xid_fix(xid, node, gpu), (line(e), *(f"kernel: {k.strip()}" for k in kernel)),
                               node, at(e)))
    return out


def kernel_xids(ev: Evidence) -> list[Finding]:
    """XIDs in this node's kernel log (`dmesg | grep -i nvrm`) that no verdict names."""
    named = {int(m.group(1)) for _, reasons, _ in _current(ev).values() for r in reasons
             if (m := XID_REASON.search(r))}
    seen: dict[int, list[str]] = {}
    for k in ev.kernel:
        x = parse_xid(k)
        if x is not None and x.xid not in named:
            seen.setdefault(x.xid, []).append(f"kernel: {k.strip()}")
    return [Finding(WARNING if xid not in (13, 31, 43, 45) else INFO, f"the kernel log shows XID {xid}",
                    XID_CATALOG.get(xid, ("", "", "not in the catalog"))[2], _xid_fix(xid, "this node", "0"),
                    tuple(lines[-3:]), "kernel")
            for xid, lines in sorted(seen.items())]


def facility(ev: Evidence) -> list[Finding]:
    out = []
    for node, (verdict, reasons, e) in sorted(_current(ev).items()):
        for r in reasons:
            code = FAULT_CODE.search(r)
            if code and verdict != "ready":
                meaning = code.group(2) or "a code the configuration maps to a verdict"
                out.append(Finding(ERROR, f"{node} is {verdict}: the facility's PLC reports fault code "
                                          f"{code.group(1)} ({meaning})", r,
                                   f"check what the code names ({meaning}: the PDU, PSU or cooling of {node}'s "
                                   "rack); the node comes back by itself once the PLC clears the code",
                                   (line(e),), node, at(e)))
            elif HEAT.search(r) and verdict != "ready" and not r.startswith("drain deferred"):
                out.append(Finding(ERROR if verdict == "draining" else WARNING, f"{node} is {verdict} for heat",
                                   r, f"check the cooling of {node}'s rack (inlet, fans, the CRAH); it comes back "
                                   "1 °C below the limit", (line(e),), node, at(e)))
    return out


def drain_budget(ev: Evidence) -> list[Finding]:
    waiting = {n: (r, e) for n, (_, reasons, e) in _current(ev).items() for r in reasons[:1]
               if r.startswith("drain deferred")}
    if not waiting:
        return []
    out_now = sorted(str(m.get("name")) for m in ev.members()
                     if m.get("verdict") in ("draining", "failed"))
    newest = max(at(e) for _, e in waiting.values())
    if not any(_budget_spent(r) for r, _ in waiting.values()):
        # Every drain is first announced (deferred) for a few seconds, so the nodes one storm
        # hit agree on who goes first (vigil.core.drain_budget): that is not a full budget.
        return [Finding(INFO, f"{len(waiting)} node(s) announced a drain for health: they take the "
                              "budget's places in turn", f"the waiting serve degraded meanwhile: "
                              f"{', '.join(sorted(waiting))}", "nothing, unless they still wait in a minute",
                        tuple(line(e) for _, e in list(waiting.values())[:5]), "cluster", newest)]
    return [Finding(ERROR, f"the drain budget is full: {len(waiting)} node(s) wait to drain for health",
                    f"{', '.join(out_now) or 'others'} already out; the waiting serve degraded: "
                    f"{', '.join(sorted(waiting))}",
                    "find what they share (the findings above: an XID storm, a warm room, a site-wide PLC "
                    "code); raise health.drain_budget only if the rest can carry the load",
                    tuple(line(e) for _, e in list(waiting.values())[:5]), "cluster", newest)]


def _budget_spent(reason: str) -> bool:
    """A deferral's reason says the places are taken: as many already out as the budget allows."""
    m = DEFERRAL.search(reason)
    return m is None or int(m.group(2)) >= int(m.group(1))


def corosync(ev: Evidence) -> list[Finding]:
    out = []
    retransmit = [x for x in ev.corosync if "Retransmit List" in x]
    failed = [x for x in ev.corosync if "FAILED TO RECEIVE" in x]
    if failed:
        hosts = sorted({m.group(1) or m.group(2) for x in failed if (m := COROSYNC_HOST.match(x))})
        who = f"corosync on {', '.join(hosts)}" if hosts else "corosync: a node"
        out.append(Finding(ERROR, f"{who} failed to receive the ring's messages (FAILED TO RECEIVE)",
                           "the node hears the ring's tokens but not its messages: a firewall on UDP 5405, a "
                           "multicast problem or a NIC dropping packets", "`corosync-cfgtool -s` on each node; "
                           "open UDP 5405-5406 between them; `ip -s link` for drops; Vigil's heartbeats "
                           "cross the same network: `vigil preflight` (HeartbeatLinks)",
                           tuple(x.strip() for x in failed[-3:]), "corosync"))
    if retransmit:
        out.append(Finding(WARNING, f"corosync: {len(retransmit)} TOTEM retransmit lists",
                           "messages on the ring were lost and sent again: packet loss or a congested link",
                           "`ip -s link` and the switch ports' error counters; a second heartbeat link",
                           tuple(x.strip() for x in retransmit[-3:]), "corosync"))
    return out


RULES = (gpu_xids, kernel_xids, facility, drain_budget, corosync)
