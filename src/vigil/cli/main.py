"""Entry point: parse arguments, dispatch to a command group, map errors to
exit codes (0 ok, 1 operation failed, 2 bad input/config)."""

from __future__ import annotations

import argparse
import sys

from vigil import __version__
from vigil.cli import (actuator_cmd, agent_cmd, alerts_cmd, certs_cmd, cluster_cmd, demo_cmd, diagnose_cmd,
                       firewall_cmd, haproxy_cmd, init_cmd, job_cmd, keygen_cmd, lab_cmd, node_cmd, plan_cmd,
                       preflight_cmd, report_cmd, router_cmd, serve_cmd)
from vigil.errors import ConfigError, VigilError


class _Parser(argparse.ArgumentParser):
    commands: dict[str, argparse.ArgumentParser]  # the top level's: each command's own parser

    def error(self, message: str) -> None:  # exit 2 with the usage, as argparse does, but clearer
        self.print_usage(sys.stderr)
        sys.stderr.write(f"vigil: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def build_parser() -> _Parser:
    p = _Parser(prog="vigil", description="Redundancy and failover for AI inference nodes.")
    p.add_argument("--version", action="version", version=f"vigil {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    agent_cmd.register(sub)
    keygen_cmd.register(sub)
    certs_cmd.register(sub)
    certs_cmd.register_auth(sub)
    firewall_cmd.register(sub)
    haproxy_cmd.register(sub)
    cluster_cmd.register(sub)
    job_cmd.register(sub)
    lab_cmd.register(sub)
    serve_cmd.register(sub)
    router_cmd.register(sub)
    demo_cmd.register(sub)
    actuator_cmd.register(sub)
    node_cmd.register(sub)
    init_cmd.register(sub)
    plan_cmd.register(sub)
    preflight_cmd.register(sub)
    diagnose_cmd.register(sub)
    report_cmd.register(sub)
    alerts_cmd.register(sub)
    p.commands = sub.choices
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the command whose arguments they are, not the top level
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"vigil: configuration error: {e}", file=sys.stderr)
        return 2
    except VigilError as e:
        print(f"vigil: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
