"""Render `vigil status` (a table like `patronictl list`); the document itself
is gathered by vigil.cluster_status."""

from __future__ import annotations

import json
from typing import Any


def render_table(doc: dict[str, Any]) -> str:
    cols = [("Member", "name"), ("Role", "role"), ("State", "state"), ("Health", "verdict"),
            ("HB age", "heartbeat_age"), ("Lease TTL", "lease_ttl"), ("Token", "token"),
            ("Fencing", "fencing"), ("Engine", "engine"), ("Decision", "decision")]
    rows = [[_cell(m, k) for _, k in cols] for m in doc["members"]]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, (h, _) in enumerate(cols)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    leader = doc["leader"]
    title = (f" Cluster: {doc['cluster']} (leader {leader['name']}, token {leader['token']}) "
             if leader else f" Cluster: {doc['cluster']} (NO LEADER) ")
    out = ["+" + title.ljust(len(line) - 2, "-") + "+",
           "| " + " | ".join(h.ljust(w) for (h, _), w in zip(cols, widths)) + " |", line]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    out.append(line)
    out += [f"ignored malformed record {k}: {why}" for k, why in sorted(doc.get("bad_records", {}).items())]
    out += compat_lines(doc.get("compat") or {})
    if work := {m["name"]: m["payloads"] for m in doc["members"] if m.get("payloads")}:
        out.append("long-running work: " + ", ".join(f"{n} {c}" for n, c in work.items()) + " (vigil payloads)")
    return "\n".join(out)


def _cell(m: dict[str, Any], key: str) -> str:
    v = m.get(key)
    if v is None:
        return "-"
    if key == "heartbeat_age":
        return f"{v * 1000:.0f} ms"
    if key == "lease_ttl":
        return f"{v} s"
    if key == "engine":
        text = v["verdict"] + (f" ({v['pending']} pending)" if v.get("pending") else "")
        return text + (f": {v['reason']}" if v.get("reason") else "")
    if key == "verdict" and m.get("reasons"):
        return f"{v} ({'; '.join(m['reasons'])})"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def compat_lines(compat: dict[str, Any]) -> list[str]:
    """"n2: cuda_driver 12.2, required ==12.1 - failover to n2 would fail", then the differences."""
    out = [f"{n}: {'; '.join(m)} - failover to {n} would fail"
           for n, m in sorted((compat.get("mismatches") or {}).items())]
    for key, groups in sorted((compat.get("differences") or {}).items()):
        out.append(f"{key} differs: " + ", ".join(f"{'/'.join(nodes)}: {value}" for value, nodes in groups.items()))
    return out
