#!/usr/bin/env python3
"""Read every field Vigil's GPU probe uses on this machine's real GPUs and
say, per field, whether it answered, returned NotSupported or failed.

Usage: PYTHONPATH=src python3 scripts/nvml_fields.py [--out FILE.json]
Needs only `nvidia-ml-py` (pynvml). On a machine without an NVIDIA driver it
prints that NVML is not there and exits 1: nothing is invented.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vigil.probes.fingerprint import node_fingerprint  # noqa: E402
from vigil.probes.gpu import GpuProbe  # noqa: E402
from vigil.probes.xid import KmsgXids  # noqa: E402


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--out", help="also write the JSON here")
    a.add_argument("--trace", action="store_true", help="name each field on stderr before reading it "
                                                         "(finds a call that crashes the process)")
    args = a.parse_args()
    probe = GpuProbe()
    if args.trace:
        read_value = probe._value

        def traced(key, read):
            print(f"reading {key}", file=sys.stderr, flush=True)
            return read_value(key, read)
        probe._value = traced
    t0 = time.perf_counter()
    first = probe.read(time.monotonic())
    first_ms = (time.perf_counter() - t0) * 1000
    reads = []
    for _ in range(20):  # steady-state cost of one whole read, as the agent would poll
        t = time.perf_counter()
        probe.read(time.monotonic())
        reads.append((time.perf_counter() - t) * 1000)
    kmsg = KmsgXids().read(time.monotonic())
    doc = {"host": platform.node(), "kernel": platform.release(), "python": platform.python_version(),
           "available": first.available, "problem": first.problem, "reading": first.values,
           "fields": dict(sorted(probe.statuses.items())),
           "answered": sorted(k for k, v in probe.statuses.items() if v == "ok"),
           "not_supported": sorted(k for k, v in probe.statuses.items() if v == "not_supported"),
           "failed": {k: v for k, v in sorted(probe.statuses.items()) if v not in ("ok", "not_supported")},
           "first_read_ms": round(first_ms, 2), "read_ms_median": round(sorted(reads)[len(reads) // 2], 3),
           "kernel_log": kmsg.to_json(), "fingerprint": node_fingerprint(first)}
    probe.close()
    text = json.dumps(doc, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if first.available else 1


if __name__ == "__main__":
    sys.exit(main())
