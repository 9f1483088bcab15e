"""Every preflight check for one node's configuration, and what they add up
to: the exit code (0: no error, or every error ignored; 1: an error not
ignored) and the text or JSON an operator reads."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from vigil.errors import ConfigError
from vigil.preflight import services, system
from vigil.preflight.outcome import ERROR, Outcome
from vigil.preflight.system import Host


def run(config_path: str, host: Host | None = None, etcd_data_dir: str | None = None) -> list[Outcome]:
    """The outcomes in a fixed order: the configuration, the machine, then what
    the configuration names (those need a configuration that loads)."""
    host = host or Host()
    cfg, loaded = services.config(config_path)
    out = [loaded, *system.checks(host, cfg)]
    if cfg is not None:
        out += services.checks(host, cfg, config_path, etcd_data_dir)
    return out


def parse_ignored(text: str | None, known: Iterable[str] = ()) -> set[str]:
    """`--ignore-preflight-errors`: IDs separated by commas, or `all`. An ID no
    check has is refused (a typo must not silently ignore nothing)."""
    if not text:
        return set()
    ids = {x.strip() for x in text.split(",") if x.strip()}
    unknown = sorted(i for i in ids - {"all"} if i not in set(known) and not _family(i, known))
    if unknown:
        raise ConfigError("--ignore-preflight-errors", ",".join(unknown),
                          "no check has this ID: use the IDs `vigil preflight` prints (or `all`)")
    return ids


def _family(check_id: str, known: Iterable[str]) -> bool:
    """`Port` names every Port-... check, `Etcd` every Etcd-... (kubeadm's prefixes)."""
    return any(k.startswith(check_id + "-") for k in known)


def ignore(outcomes: list[Outcome], ids: set[str]) -> list[Outcome]:
    def named(o: Outcome) -> bool:
        return "all" in ids or o.id in ids or any(o.id.startswith(i + "-") for i in ids)
    return [dataclasses.replace(o, ignored=True) if o.result == ERROR and named(o) else o for o in outcomes]


def exit_code(outcomes: list[Outcome]) -> int:
    return 1 if any(o.result == ERROR and not o.ignored for o in outcomes) else 0


def render(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        mark = {"pass": "ok", "warning": "WARNING", "error": "ERROR", "skipped": "skip"}[o.result]
        lines.append(f"[{mark}] {o.id}: {o.found}" + (" (ignored)" if o.ignored else ""))
        if o.fix and o.result in ("warning", "error"):
            lines.append(f"    fix: {o.fix}")
        if o.why and o.result in ("warning", "error"):
            lines.append(f"    why: {o.why}")
    errors = [o for o in outcomes if o.result == ERROR and not o.ignored]
    warnings = [o for o in outcomes if o.result == "warning"]
    lines.append(f"{len(errors)} error(s), {len(warnings)} warning(s)"
                 + (f": fix the errors, or name them in --ignore-preflight-errors={','.join(o.id for o in errors)}"
                    if errors else ""))
    return "\n".join(lines)


def document(outcomes: list[Outcome]) -> dict[str, Any]:
    return {"checks": [o.to_json() for o in outcomes], "exit_code": exit_code(outcomes),
            "errors": [o.id for o in outcomes if o.result == ERROR and not o.ignored]}
