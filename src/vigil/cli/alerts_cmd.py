"""`vigil alerts`: the Prometheus rules Vigil ships (vigil.alerts)."""

from __future__ import annotations

from vigil.alerts import RULES, TESTS


def register(sub) -> None:
    p = sub.add_parser("alerts", help="print Vigil's Prometheus alerting and recording rules",
                       description="Print the rules (for /etc/prometheus/rules/vigil.yml), or with --tests "
                                   "their promtool unit tests; --path prints where the files are.")
    p.add_argument("--tests", action="store_true", help="the promtool unit tests instead of the rules")
    p.add_argument("--path", action="store_true", help="print the file's path instead of its contents")
    p.set_defaults(func=alerts_cmd)


def alerts_cmd(args) -> int:
    path = TESTS if args.tests else RULES
    print(path if args.path else path.read_text(), end="\n" if args.path else "")
    return 0
