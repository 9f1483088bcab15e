"""The cluster-core demo: a 3-node lab, the leader's agent SIGKILLed, a new
leader with a higher fencing token, the killed node rejoining as standby, a
graceful switchover, and the event log that explains each step.

Run: python -m vigil.lab.demo [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from vigil.cli.status_view import render_table
from vigil.lab import Lab


def show_status(lab: Lab) -> None:
    print(render_table(lab.status()))


def events_since(lab: Lab, t0: float) -> list[dict]:
    return [e for e in lab.events() if e["at"] >= t0]


def kill_leader(lab: Lab) -> None:
    old, token = lab.leader()
    print(f"\n== SIGKILL the leader's agent ({old}, token {token})")
    t0 = time.time()
    lab.kill_agent(old)
    new = lab.wait_for(lambda: (lambda c: c if c and c[0] != old else None)(lab.leader()), 15, "a new leader")
    takeover = time.time() - t0
    lab.wait_for(lambda: sum(e["kind"] == "peer_suspected" for e in events_since(lab, t0)) >= 2, 10,
                 "suspicion events")
    evs = events_since(lab, t0)
    detect = max(e["detected_at"] for e in evs if e["kind"] == "peer_suspected") - t0
    print(f"   every peer suspected {old} after {detect * 1000:.0f} ms; {new[0]} took over with "
          f"token {new[1]} (> {token}) after {takeover * 1000:.0f} ms (lease TTL 2 s)")
    for e in evs:
        print(f"   {e['node']:<4} {e['kind']:<16} {e['cause']}")
    show_status(lab)
    print(f"\n== restart {old}: it rejoins as a standby, never directly as leader")
    lab.start_agent(old)
    lab.wait_for(lab.ready, 20, f"{old} to rejoin")
    show_status(lab)


def switchover(lab: Lab) -> None:
    old, token = lab.leader()
    target = next(n.name for n in lab.nodes if n.name != old)
    print(f"\n== vigil switchover --to {target}")
    t0 = time.time()
    from vigil.cli.main import main as vigil_main
    vigil_main(["switchover", "--to", target, "--lab", str(lab.root)])
    print(f"   handover took {(time.time() - t0) * 1000:.0f} ms (no TTL wait: the leader resigned)")
    show_status(lab)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vigil-demo")
    p.add_argument("--dir", help="lab directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="leave the lab running at the end")
    args = p.parse_args(argv)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="vigil-demo-"))
    print(f"== starting 3 etcd members and 3 agents in {root}")
    lab = Lab.up(root / "lab", 3)
    try:
        show_status(lab)
        kill_leader(lab)
        switchover(lab)
    finally:
        if args.keep:
            print(f"\nlab left running: vigil status --lab {lab.root}; vigil lab down --dir {lab.root}")
        else:
            lab.down()
            if not args.dir:
                shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
