"""The demo's report: per fault, what was done, when Vigil noticed, when it
took over, and what the clients saw (requests, failures, retries, latency
before, during and after; streamed generations and where they resumed);
plus the timeline plot (resume points marked)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vigil.lab.load import Sample


@dataclass
class Fault:
    name: str
    action: str
    start: float  # Unix time the fault was injected
    end: float = 0.0  # when the cluster was whole again
    detection_ms: float | None = None
    takeover_ms: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(round((len(v) - 1) * p / 100)))] * 1000, 1)


def window(samples: list[Sample], lo: float, hi: float) -> dict[str, Any]:
    xs = [s for s in samples if lo <= s.start < hi]
    lat = [s.latency for s in xs if s.status == 200]
    return {"requests": len(xs), "failed": sum(s.status != 200 for s in xs),
            "retried": sum(s.attempts > 1 for s in xs), "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}


def build(samples: list[Sample], faults: list[Fault], margin: float = 5.0) -> dict[str, Any]:
    out = []
    for f in faults:
        out.append({**asdict(f), "before": window(samples, f.start - margin, f.start),
                    "during": window(samples, f.start, max(f.end, f.start + 0.001)),
                    "after": window(samples, f.end, f.end + margin)})
    lat = [s.latency for s in samples if s.status == 200]
    errors = sorted({s.error or f"HTTP {s.status}" for s in samples if s.status != 200})
    streams = [s for f in faults for s in f.detail.get("streams", [])]
    return {"requests_sent": len(samples), "requests_failed": sum(s.status != 200 for s in samples),
            "requests_retried": sum(s.attempts > 1 for s in samples),
            "latency_ms": {"p50": _pct(lat, 50), "p99": _pct(lat, 99), "max": _pct(lat, 100)},
            "errors": errors[:20], "faults": out,
            "streams": {"streams": len(streams), "complete": sum(s["complete"] for s in streams),
                        "broken": sum(not s["complete"] for s in streams),
                        "resumed": sum(len(s["resumes"]) for s in streams)}}


def plot(samples: list[Sample], faults: list[Fault], path: Path) -> bool:
    """Latency and per-node throughput over time with faults marked. False if
    matplotlib is missing (the report still stands)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t0 = min(s.start for s in samples)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    nodes = sorted({s.node for s in samples if s.node})
    for node in nodes:
        xs = [(s.start - t0, s.latency * 1000) for s in samples if s.node == node and s.status == 200]
        ax1.scatter([x for x, _ in xs], [y for _, y in xs], s=4, label=node)
    bad = [(s.start - t0, max(s.latency, 0.001) * 1000) for s in samples if s.status != 200]
    if bad:
        ax1.scatter([x for x, _ in bad], [y for _, y in bad], s=18, c="red", marker="x", label="failed")
    ax1.set_yscale("log")
    ax1.set_ylabel("latency (ms)")
    ax1.legend(loc="upper right", markerscale=3)
    end = max(s.start for s in samples) - t0
    for node in nodes:
        bins = [0] * (int(end) + 1)
        for s in samples:
            if s.node == node and s.status == 200:
                bins[int(s.start - t0)] += 1
        ax2.plot(range(len(bins)), bins, label=node)
    ax2.set_ylabel("requests/s served")
    ax2.set_xlabel("seconds")
    for ax in (ax1, ax2):
        for f in faults:
            ax.axvspan(f.start - t0, (f.end or f.start) - t0, color="orange", alpha=0.15)
    for f in faults:
        ax1.annotate(f.name, (f.start - t0, ax1.get_ylim()[1]), fontsize=8, rotation=90,
                     va="top", ha="right")
        for r in (r for s in f.detail.get("streams", []) for r in s["resumes"]):
            ax1.axvline(r["at"] - t0, color="purple", ls="--", lw=1)
            ax1.annotate(f"stream resumed {r['from']}->{r['to']}", (r["at"] - t0, ax1.get_ylim()[0]),
                         fontsize=8, rotation=90, va="bottom", ha="left", color="purple")
    fig.suptitle("Vigil demo: every request through the router, faults shaded")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
