"""The compatibility gate (pure): a workload's requirements against a node's
fingerprint (vigil.probes.fingerprint), and a cluster's homogeneity.

A requirement maps a fingerprint key to a condition:
- versions (`driver`, `cuda_driver`, `compute_capability`, `python`,
  `kernel`, `engines.<name>`): ">=12.1", "<13", "==12.2", or a bare "12.2"
  (equal); compared number by number ("12.10" > "12.9");
- numbers (`gpu_count`, `gpu_memory_mib`): the same operators;
- `gpu_model`: a glob ("NVIDIA H100*") or a list of globs, any matching;
- `cpu_flags`: a list of flags the node must all have.

`mismatches(fp, req)` returns one sentence per unmet condition, empty when
the node satisfies the workload. A key the node's fingerprint lacks fails
(no GPU cannot satisfy a CUDA requirement). `parse_requirement` raises
ValueError naming the key and the fix.
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Iterable, Mapping
from typing import Callable, TypeAlias

VERSION_KEYS = {"driver", "cuda_driver", "compute_capability", "python", "kernel"}
NUMBER_KEYS = {"gpu_count", "gpu_memory_mib"}
HOMOGENEITY_KEYS = ("driver", "cuda_driver", "gpu_model", "compute_capability", "gpu_count", "gpu_memory_mib",
                    "cpu_flags", "kernel", "python", "engines")
OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
       "<": operator.lt}
CONDITION = re.compile(r"^\s*(>=|<=|==|!=|>|<)?\s*([0-9][0-9A-Za-z.+-]*)\s*$")
# A condition as parse_requirement lets it through: a version or number condition
# (str, int, float); gpu_model's glob or globs; cpu_flags' flags.
Condition: TypeAlias = str | int | float | list[str]


def version(v: object) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", str(v)))


def parse_requirement(raw: object) -> dict[str, Condition]:
    if not isinstance(raw, dict):
        raise ValueError("requires: must be a mapping such as {cuda_driver: '>=12.1', gpu_memory_mib: '>=40000'}")
    for key, cond in raw.items():
        if key in VERSION_KEYS or key in NUMBER_KEYS or key.startswith("engines."):
            if not isinstance(cond, (str, int, float)) or not CONDITION.match(str(cond)):
                raise ValueError(f"requires.{key}: {cond!r} is not a condition; write e.g. '>=12.1'")
        elif key == "gpu_model":
            if not isinstance(cond, (str, list)) or not all(isinstance(x, str) for x in _list(cond)):
                raise ValueError("requires.gpu_model: a glob such as 'NVIDIA H100*', or a list of them")
        elif key == "cpu_flags":
            if not isinstance(cond, list) or not all(isinstance(x, str) for x in cond):
                raise ValueError("requires.cpu_flags: a list of flags such as [avx512f, amx_tile]")
        else:
            raise ValueError(f"requires.{key}: unknown; use {sorted(VERSION_KEYS | NUMBER_KEYS)}, gpu_model, "
                             "cpu_flags or engines.<package>")
    return dict(raw)


def _list(v: object) -> list[object]:
    return v if isinstance(v, list) else [v]


def _globs(cond: Condition) -> list[str]:
    """gpu_model's condition as a list of globs (parse_requirement checked it is one or a list)."""
    if isinstance(cond, (int, float)):
        raise TypeError(f"gpu_model: {cond!r} is not a glob")
    return cond if isinstance(cond, list) else [cond]


def _not_iterable(v: object) -> TypeError:
    """What set() raises for `v`: a flag list that is not one fails as it always did."""
    return TypeError(f"{type(v).__name__!r} object is not iterable")


def _value(fp: Mapping[str, object], key: str) -> object:
    if key.startswith("engines."):
        engines = fp.get("engines") or {}
        if not isinstance(engines, Mapping):  # (a declared `engines: x`): what `.get` on it raised
            raise AttributeError(f"{type(engines).__name__!r} object has no attribute 'get'")
        return engines.get(key.split(".", 1)[1])
    return fp.get(key)


def _float(v: object) -> float:
    """float(v) of a fingerprint's number (a number, or a declared string)."""
    if not isinstance(v, (str, int, float)):
        raise TypeError(f"float() argument must be a string or a real number, not {type(v).__name__!r}")
    return float(v)


def _compare(have: object, cond: Condition, numeric: bool) -> bool:
    m = CONDITION.match(str(cond))
    if m is None:  # parse_requirement validated every condition
        return False
    op, want = m.groups()
    if numeric:
        order: Callable[[float, float], bool] = OPS[op or "=="]
        return order(_float(have), float(want))
    compare: Callable[[tuple[int, ...], tuple[int, ...]], bool] = OPS[op or "=="]
    return compare(version(have), version(want))


def mismatches(fp: Mapping[str, object], req: Mapping[str, Condition]) -> list[str]:
    """`req` as parse_requirement returns it; `fp` a fingerprint (any values)."""
    out = []
    for key, cond in req.items():
        have = _value(fp, key)
        if have is None or (isinstance(have, list) and key != "cpu_flags"):
            shown = fp.get("gpu") if key not in ("cpu_flags", "python", "kernel") and fp.get("gpu") else "unknown"
            out.append(f"{key}: required {cond}, this node has none ({have if have is not None else shown})")
        elif key == "cpu_flags":
            if isinstance(cond, (int, float)):
                raise _not_iterable(cond)
            flags = set(cond)
            if not isinstance(have, Iterable):
                raise _not_iterable(have)
            missing = sorted(flags - set(have))
            if missing:
                out.append(f"cpu_flags: missing {', '.join(missing)}")
        elif key == "gpu_model":
            if not any(fnmatch.fnmatch(str(have), g) for g in _globs(cond)):
                out.append(f"gpu_model: {have} is not {' or '.join(_globs(cond))}")
        elif not _compare(have, cond, key in NUMBER_KEYS):
            out.append(f"{key}: {have}, required {cond}")
    return out


def differences(fingerprints: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, list[str]]]:
    """{key: {value: [nodes]}} for every key on which the nodes differ ("n2: CUDA 12.2, n1: 12.1")."""
    out: dict[str, dict[str, list[str]]] = {}
    for key in HOMOGENEITY_KEYS:
        groups: dict[str, list[str]] = {}
        for node, fp in sorted(fingerprints.items()):
            groups.setdefault(_shown(fp.get(key, fp.get("gpu") if key in ("driver", "cuda_driver") else None)),
                              []).append(node)
        if len(groups) > 1:
            out[key] = groups
    return out


def _shown(v: object) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {x}" for k, x in sorted(v.items()))
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    return "none" if v is None else str(v)
