"""Shared by the system tests: a NetTopology that is always destroyed, and a
harness module run inside its client namespace, answering one JSON line."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from vigil.lab.netns import NetTopology

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def topology(nodes: int) -> Iterator[NetTopology]:
    topo = NetTopology(nodes).create()  # fails (never skips) without root, iproute2 or nftables
    try:
        yield topo
    finally:
        topo.destroy()  # processes are stopped by the harness; rulesets go with the namespaces


def run_in_client(net: NetTopology, module: str, lab_dir: Path, *args: str, timeout: float) -> dict:
    """`python -m module --dir LAB_DIR --tag TAG ARGS` in the client namespace; its last line, parsed."""
    r = subprocess.run(["ip", "netns", "exec", net.client, sys.executable, "-m", module,
                        "--dir", str(lab_dir), "--tag", net.tag, *args],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])
