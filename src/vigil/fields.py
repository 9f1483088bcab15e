"""Validators for configuration fields, shared by every configuration file.

Contract: each returns the value it checked (normalised where said) or raises
ConfigError naming the field, the value and the fix; an unknown field's value
is never echoed (it may be a misspelled secret).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any

from vigil.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_mapping(v: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ConfigError(where, v, "must be a mapping (key: value lines)")
    for k in v:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), sorted(allowed), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(sorted(allowed))}"
            name = str(k) if str(k).strip() else repr(k)  # an empty key is named, not blank
            raise ConfigError(f"{where}.{name}" if where != "(top level)" else name, v[k],
                              f"unknown field; {hint}", secret=True)
    return v


def check_name(d: dict[str, Any], key: str, where: str | None = None) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not NAME_RE.match(v):
        raise ConfigError(where or key, v, "required; 1-64 letters, digits, '.', '_' or '-', "
                                           "starting with a letter or digit")
    return v


def check_int(v: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(where, v, f"must be an integer from {lo} to {hi}")
    return v


def check_port(v: Any, where: str) -> int:
    return check_int(v, where, 1, 65535)


def check_address(v: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_address(str(v)))
    except ValueError:
        raise ConfigError(where, v, "must be an IPv4 or IPv6 address such as 127.0.0.1") from None


def check_addresses(v: Any, where: str) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not 1 <= len(v) <= 2:
        raise ConfigError(where, v, "must list one or two addresses (one per network link)")
    return tuple(check_address(a, f"{where}[{i}]") for i, a in enumerate(v))
