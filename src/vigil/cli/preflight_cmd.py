"""`vigil preflight`: check a node before its agent runs (vigil.preflight)."""

from __future__ import annotations

import json

from vigil.preflight import run as checks


def register(sub) -> None:
    p = sub.add_parser("preflight", help="check this node before the agent runs on it",
                       description="Check this machine and what its configuration names (kernel, sysctls, "
                                   "clock, links, ports, etcd and its disk, GPUs, fabric manager, "
                                   "requirements, BMCs). Each check has an ID; a failed one says what to "
                                   "run. Exit 1 on an error not ignored, 2 on bad input.")
    p.add_argument("--config", default="/etc/vigil/agent.yaml", help="the node's configuration file")
    p.add_argument("--etcd-data-dir", help="etcd's data directory on this node: measure its fdatasync latency")
    p.add_argument("--ignore-preflight-errors", metavar="ID,...",
                   help="errors to report as ignored (IDs, an ID's prefix such as Port, or all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=preflight_cmd)


def preflight_cmd(args) -> int:
    outcomes = checks.run(args.config, etcd_data_dir=args.etcd_data_dir)
    ignored = checks.parse_ignored(args.ignore_preflight_errors, [o.id for o in outcomes])
    outcomes = checks.ignore(outcomes, ignored)
    print(json.dumps(checks.document(outcomes), indent=2) if args.json else checks.render(outcomes))
    return checks.exit_code(outcomes)
