"""Bounded decoding of untrusted record text: every etcd value (and a model
server's load report) becomes a Python value here, or a `BadRecord`.

Contract:
- `decode_json(key, text, limits)` never raises. It returns the decoded
  value only when the text is at most `limits.max_bytes` long, valid JSON,
  nested at most `limits.max_depth` deep, every string at most
  `limits.max_string` characters of valid Unicode (no lone surrogates: an
  etcd value that is not UTF-8 arrives with them), and every number finite
  with a magnitude below `MAX_NUMBER` (so `float()`, `int()` and arithmetic
  on it never overflow). Anything else is a `BadRecord(key, problem)` whose
  problem names what is wrong in one line.
- The hooks refuse a 400-digit integer, NaN, Infinity and 1e999 while the
  text is parsed: such a number never exists as a Python value.
- `number`, `unix_time`, `integer` and `node_name` are the field checks every record
  parser (vigil.store.records) builds on.
- `JSON` is the type of every value decoded here (and of any other value read
  from JSON): parsers narrow it with isinstance, field by field. `JSONable`
  is that of a document built to be encoded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, TypeAlias, TypeGuard

from vigil.fields import NAME_RE

MAX_INT_DIGITS = 19  # etcd's ids and revisions are int64 (lease ids often have 19 digits)
MAX_INT = 2**63  # |n| < 2**63: every positive int64 fits, and float(n) is always finite
MAX_NUMBER = 1e18
MAX_TIME = 1e11  # Unix seconds (year 5138): inside datetime's range, so a time always prints
_SURROGATE = re.compile("[\ud800-\udfff]")

# A value decoded from JSON (json.loads, decode_json): the one place its shape is spelt.
JSON: TypeAlias = None | bool | int | float | str | list["JSON"] | dict[str, "JSON"]
# A value to encode as JSON (a document built to print): read-only, so a list[str] is one.
JSONable: TypeAlias = None | bool | int | float | str | Sequence["JSONable"] | Mapping[str, "JSONable"]


@dataclass(frozen=True)
class BadRecord:
    """A record no Vigil component wrote: left out of every decision, named in events.
    `key` is the etcd key (or what the caller named the record by)."""

    key: str
    problem: str


@dataclass(frozen=True)
class Limits:
    max_bytes: int  # characters of the whole text (etcd values are UTF-8; ~bytes)
    max_depth: int  # nesting of lists and objects
    max_string: int  # characters of any one string, object keys included


CLUSTER = Limits(256 * 1024, 32, 16 * 1024)  # members, states, markers, events, payloads, ...
BULK = Limits(8 * 1024 * 1024, 8, 1024 * 1024)  # job inputs and results: one etcd write each


class _Refused(ValueError):
    """A number the hooks refuse while parsing (never leaves this module)."""


def _int(s: str) -> int:
    if len(s.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"integer of {len(s.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    n = int(s)
    if abs(n) >= MAX_INT:
        raise _Refused(f"integer {s[:24]} out of range (|n| < 2**63)")
    return n


def _float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v) or abs(v) >= MAX_NUMBER:
        raise _Refused(f"number {s[:40]} out of range (|x| < {MAX_NUMBER:g})")
    return v


def _constant(s: str) -> NoReturn:
    raise _Refused(f"{s} is not a number JSON allows")


_DECODER = json.JSONDecoder(parse_int=_int, parse_float=_float, parse_constant=_constant)


def snippet(text: str, n: int = 60) -> str:
    """The start of `text` as a repr, safe to log and to put in an event."""
    return repr(text[:n]) + ("..." if len(text) > n else "")


def decode_json(key: str, text: object, limits: Limits = CLUSTER) -> JSON | BadRecord:
    """The JSON value of `text` within `limits`, or a BadRecord (see the module docstring)."""
    if not isinstance(text, str):
        return BadRecord(key, f"not text: {type(text).__name__}")
    if len(text) > limits.max_bytes:
        return BadRecord(key, f"{len(text)} bytes, over the {limits.max_bytes} a record may hold")
    if _SURROGATE.search(text):  # bytes that were not UTF-8 (the store decodes with surrogateescape)
        return BadRecord(key, f"not valid UTF-8: {snippet(text)}")
    try:
        value: JSON = _DECODER.decode(text)
    except _Refused as e:
        return BadRecord(key, f"refused: {e}")
    except RecursionError:
        return BadRecord(key, f"nested deeper than {limits.max_depth}")
    except ValueError as e:
        return BadRecord(key, f"not JSON ({str(e)[:80]}): {snippet(text)}")
    problem = _bounds_problem(text, value, limits)
    return BadRecord(key, problem) if problem else value


def decode_object(key: str, text: object, limits: Limits = CLUSTER) -> dict[str, JSON] | BadRecord:
    """`decode_json`, and the value must be a JSON object."""
    value = decode_json(key, text, limits)
    if isinstance(value, BadRecord) or isinstance(value, dict):
        return value
    return BadRecord(key, f"not a JSON object: {snippet(str(text))}")  # (decoded, so text is a str)


def _bounds_problem(text: str, value: JSON, limits: Limits) -> str | None:
    """Depth and string bounds of `value`, decoded from `text`. The walk (without
    recursion) runs only when the text could break one: a text shorter than the
    string bound holds no longer string, one with fewer brackets than the depth
    bound nests no deeper, and only an escape makes a lone surrogate."""
    strings = len(text) > limits.max_string
    surrogates = "\\ud" in text or "\\uD" in text
    if not (strings or surrogates or text.count("[") + text.count("{") > limits.max_depth):
        return None
    stack: list[tuple[JSON, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            if strings and len(v) > limits.max_string:
                return f"a string of {len(v)} characters (at most {limits.max_string})"
            if surrogates and _SURROGATE.search(v):
                return f"a string that is not valid UTF-8: {snippet(v)}"
        elif isinstance(v, (list, dict)):
            if depth > limits.max_depth:
                return f"nested deeper than {limits.max_depth}"
            items: list[JSON] = [*v.keys(), *v.values()] if isinstance(v, dict) else v
            stack.extend((x, depth + 1) for x in items)
    return None


# -- field checks ----------------------------------------------------------------

def number(v: object, lo: float, hi: float) -> TypeGuard[int | float]:
    """A number (not a bool), finite, within [lo, hi]; never raises, even for an
    int too large for a float (int/float comparisons are exact in Python)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return (isinstance(v, int) or math.isfinite(v)) and lo <= v <= hi


def unix_time(v: object) -> TypeGuard[int | float]:
    """A Unix time in seconds, from 0 to MAX_TIME."""
    return number(v, 0.0, MAX_TIME)


def integer(v: object, lo: int, hi: int) -> TypeGuard[int]:
    """A JSON integer (not a bool) within [lo, hi]."""
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def node_name(v: object) -> TypeGuard[str]:
    """A node name as configuration allows it (vigil.fields.NAME_RE), exactly."""
    return isinstance(v, str) and NAME_RE.fullmatch(v) is not None


def strings(v: object, max_items: int = 1024) -> TypeGuard[list[str]]:
    """A list of at most `max_items` strings."""
    return isinstance(v, list) and len(v) <= max_items and all(isinstance(x, str) for x in v)
