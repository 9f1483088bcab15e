"""Shared by the benchmarks: a process's CPU time, percentiles, and writing each result as JSON
plus a markdown table under bench/results/."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (its threads included), in seconds (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14 and 15)


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary_ms(values: list[float]) -> dict[str, float | int | None]:
    ms = [x * 1000 for x in values]
    r = lambda x: None if x is None else round(x, 1)  # noqa: E731
    return {"n": len(ms), "p50": r(percentile(ms, 50)), "p99": r(percentile(ms, 99)),
            "max": r(max(ms) if ms else None), "min": r(min(ms) if ms else None)}


def machine() -> dict[str, str]:
    etcd = subprocess.run(["sh", "-c", "etcd --version 2>/dev/null | head -1"], capture_output=True,
                          text=True).stdout.strip()
    return {"host": platform.node(), "cpus": str(__import__("os").cpu_count()),
            "python": platform.python_version(), "etcd": etcd,
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def write(name: str, doc: dict, table: list[list[str]], notes: str = "") -> None:
    RESULTS.mkdir(exist_ok=True)
    doc = {**doc, "machine": machine()}
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    head, *rows = table
    md = [f"# {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    if notes:
        md += ["", notes]
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
