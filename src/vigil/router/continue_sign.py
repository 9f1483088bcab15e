"""Continuations only a router makes: `vigil_continue` (vigil.serve.completions)
tells a model server to go on from token ids already delivered, under a
stream id it then reports as its payload. A client must not choose those:
it could claim any payload id (a batch job's shard among them) or splice a
prefix of its choosing into another answer.

- The router refuses a client request that carries the field (400 naming
  it): `client_continue`. Only its own continuations carry it.
- With a cluster continuation key (`retry.continue_key_file` on routers,
  `--continue-key-file` on model servers: the same 32+ random bytes, hex, in
  a mode-600 file), the router signs each continuation with an HMAC-SHA256
  over the whole request body, and the model server honours only those that
  verify (`sign`, `verify`). Deploy the key wherever clients can reach a
  model server directly, not only through a router.
- The stream id of a continuation must look like one a Vigil model server
  made (`cmpl-`/`chatcmpl-` and 24 hex digits), so it can never name other
  work (`STREAM_ID`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

from vigil.errors import ConfigError

FIELD = "vigil_continue"
MAC = "mac"  # the field of vigil_continue that carries the router's HMAC (hex)
STREAM_ID = re.compile(r"^(chat)?cmpl-[0-9a-f]{24}$")
GENERATIVE_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
MIN_KEY_BYTES = 32
_CONTEXT = b"vigil-continue-v1\n"


def client_continue(method: str, path: str, body: bytes) -> str | None:
    """Why a client's request must be refused (it sends `vigil_continue`), or None.
    Never raises."""
    if method != "POST" or path not in GENERATIVE_PATHS:
        return None
    if FIELD.encode() not in body and b"\\u" not in body:  # the common case: no parse
        return None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # the model server answers a body that is not JSON
    if isinstance(doc, dict) and FIELD in doc:
        return (f"'{FIELD}' is set only by a Vigil router to continue a stream on another node; "
                "send the request without it")
    return None


def refused(why: str) -> Any:
    """The router's 400 for `client_continue`'s answer, naming the field (OpenAI-style)."""
    from vigil.router.answers import Answered

    body = {"error": {"message": why, "type": "invalid_request_error", "param": FIELD, "code": None}}
    return Answered(400, [("Content-Type", "application/json")], json.dumps(body).encode())


def _digest(key: bytes, body: dict[str, Any]) -> str:
    cont = {k: v for k, v in body[FIELD].items() if k != MAC}
    canonical = json.dumps({**body, FIELD: cont}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, _CONTEXT + canonical.encode(), hashlib.sha256).hexdigest()


def sign(key: bytes, body: dict[str, Any]) -> None:
    """Add the HMAC to `body[FIELD]` (a continuation the router built)."""
    body[FIELD] = {**body[FIELD], MAC: _digest(key, body)}


def signed(req: Any, key: bytes | None) -> Any:
    """The router's continuation request `req` (a vigil.router.http1.Incoming whose body
    holds FIELD), signed with `key`; as it is without one."""
    if key is None:
        return req
    body = json.loads(req.body)
    sign(key, body)
    return dataclasses.replace(req, body=json.dumps(body).encode())


def verify(key: bytes, body: dict[str, Any]) -> str | None:
    """Why `body`'s continuation is not the router's (the problem to report), or None.
    Never raises."""
    cont = body.get(FIELD)
    if not isinstance(cont, dict) or not isinstance(cont.get(MAC), str):
        return f"'{FIELD}' is not signed by a router of this cluster (no '{MAC}')"
    try:
        good = _digest(key, body)
    except (ValueError, TypeError, RecursionError):
        return f"'{FIELD}' cannot be checked"
    if not hmac.compare_digest(good, cont[MAC]):
        return (f"'{FIELD}' is not signed by a router of this cluster (its MAC does not match: a client's, "
                "or the router's continue key differs from this server's)")
    return None


def load_key(path: str | Path, field: str) -> bytes:
    """A continuation key: at least 32 bytes as hex in a file only its owner reads
    (make one with `openssl rand -hex 32`). Raises ConfigError."""
    from vigil.files import read_secret

    text = read_secret(path, field)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(field, str(path), "must hold hex (make one with `openssl rand -hex 32`)") from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(field, str(path), f"holds {len(key)} bytes; use at least {MIN_KEY_BYTES} "
                                            "(`openssl rand -hex 32`)")
    return key
