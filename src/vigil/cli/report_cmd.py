"""`vigil report`: a support bundle, secrets redacted (vigil.diagnose.report)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from vigil.cli.target import add_target_args, resolve
from vigil.diagnose import cluster_rules, host_rules
from vigil.diagnose.collect import gather, tail
from vigil.diagnose.finding import diagnose
from vigil.diagnose.report import Bundle, Redactor, config_text, versions, write
from vigil.errors import ConfigError, VigilError


def register(sub) -> None:
    p = sub.add_parser("report", help="a support bundle (tar.gz): status, events, diagnose, preflight, "
                                      "configuration, logs; secrets redacted",
                       description="Collect what support asks for into one tar.gz (as crm_report): versions, "
                                   "status, events, `vigil diagnose`, `vigil preflight` of the configurations "
                                   "given, those configurations and the agents' logs, the kernel log. Key, "
                                   "password and token files are never copied and their contents are redacted "
                                   "everywhere.")
    add_target_args(p)
    p.add_argument("--out", help="the bundle to write (default ./vigil-report-CLUSTER-TIME.tar.gz)")
    p.add_argument("--since", type=float, default=86400.0, help="seconds of events and findings (default 1 day)")
    p.add_argument("--agent-log", action="append", default=[], help="an agent's log file (repeatable)")
    p.add_argument("--kernel-log", help="a kernel log file (default: `dmesg`)")
    p.set_defaults(func=report_cmd)


def report_cmd(args) -> int:
    if not 0 < args.since <= 366 * 86400:
        raise ConfigError("--since", args.since, "give seconds of history, up to a year")
    target = resolve(args)
    configs, logs = _sources(args)
    out = Path(args.out or f"vigil-report-{target.cluster}-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz")
    if not out.parent.is_dir():
        raise ConfigError("--out", str(out), "its directory does not exist")
    redactor, bundle = Redactor(), Bundle()
    for secret in (target.password, target.api_token, *_lab_secrets(args.lab)):
        if secret:
            redactor.learn(secret)
    for name, path in configs.items():
        _config(bundle, redactor, name, path)
    ev, missing = gather(target, args.since, args.kernel_log, None, list(logs.values()))
    for m in missing:
        bundle.missing("part of the evidence", m)
    bundle.add_json("status.json", ev.status if ev.status is not None else {"error": ev.status_error})
    bundle.add_json("events.json", ev.events)
    findings = diagnose(ev, (*cluster_rules.RULES, *host_rules.RULES))
    bundle.add_json("diagnose.json", [f.to_json() for f in findings])
    bundle.add("kernel.log", "\n".join(ev.kernel) + "\n")
    for name, path in logs.items():
        try:
            bundle.add(f"logs/{name}.log", "\n".join(tail(path)) + "\n")
        except OSError as e:
            bundle.missing(f"log {path}", e.strerror)
    bundle.add_json("versions.json", versions(_etcd_versions(target)))
    names = write(bundle, redactor, out, out.name.removesuffix(".tar.gz"))
    print(f"{out}: {len(names)} files, {len(findings)} findings, {len(ev.events)} events; secrets redacted"
          + "".join(f"\n  {n}" for n in bundle.notes))
    return 0


def _lab_secrets(lab: str | None) -> list[str]:
    """The lab harness's own secrets (lab.json: etcd's root password)."""
    if not lab:
        return []
    try:
        tls = json.loads((Path(lab) / "lab.json").read_text())["etcd"].get("tls") or {}
    except (OSError, ValueError, KeyError, AttributeError):
        return []
    return [str(tls.get("password") or "")]


def _sources(args) -> tuple[dict[str, str], dict[str, str]]:
    """(name -> configuration file, name -> log file) to include, each name unique."""
    configs = {Path(args.config).stem: args.config} if args.config else {}
    logs = {f"{i}-{Path(p).stem}": p for i, p in enumerate(args.agent_log, 1)}
    if args.lab:
        from vigil.lab import Lab

        for n in Lab.load(Path(args.lab)).nodes:
            configs[n.name], logs[n.name] = n.config, n.log
    return configs, logs


def _config(bundle: Bundle, redactor: Redactor, name: str, path: str) -> None:
    from vigil.preflight import run as preflight
    from vigil.preflight.services import config as load

    try:
        bundle.add(f"config/{name}.yaml", config_text(path, redactor))
    except (OSError, VigilError) as e:
        bundle.missing(f"configuration {path}", getattr(e, "strerror", None) or e)
        return
    cfg, _ = load(path)
    if cfg is not None and cfg.router_config:
        try:
            bundle.add(f"config/{name}-router.yaml", config_text(cfg.router_config, redactor))
        except (OSError, VigilError) as e:
            bundle.missing(f"router configuration {cfg.router_config}", getattr(e, "strerror", None) or e)
    try:
        bundle.add(f"preflight/{name}.txt", preflight.render(preflight.run(path)))
    except Exception as e:  # noqa: BLE001 - one failing part must not end the report
        bundle.missing(f"preflight of {path}", type(e).__name__)


def _etcd_versions(target) -> dict[str, str]:
    out = {}
    for ep in target.endpoints:
        try:
            out[ep] = dataclasses.replace(target, endpoints=[ep]).run(lambda store: store.version())
        except (VigilError, OSError) as e:
            out[ep] = f"no answer: {e}"
    return out
