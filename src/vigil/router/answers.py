"""Whole answers the router writes or keeps: errors in OpenAI's shape, replays of
an Idempotency-Key's first answer, and the headers a request is forwarded with."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from vigil.router.http1 import HOP_BY_HOP, Incoming
from vigil.router.upstream import Upstream
from vigil.router.idempotency import Result

WHOLE_BODY_MAX = 1 << 20


@dataclass
class Answered:
    """A whole answer, ready to write (or to keep for an Idempotency-Key)."""
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def forwarded(req: Incoming) -> list[tuple[str, str]]:
    """The client's headers, less those its Connection header names, plus X-Forwarded-For."""
    listed = {t.strip().lower() for k, v in req.headers if k.lower() == "connection" for t in v.split(",")}
    # Expect: the whole body is already here; a 100 Continue would only confuse the answer.
    drop = listed | {"x-forwarded-for", "expect"}
    out = [(k, v) for k, v in req.headers if k.lower() not in drop]
    prior = [v for k, v in req.headers if k.lower() == "x-forwarded-for"]
    out.append(("X-Forwarded-For", ", ".join(prior + [req.client]) if req.client else ", ".join(prior)))
    return out


def small(up: Upstream) -> bool:
    """A sized, non-streaming answer is cheaper to pass whole; streams pass chunk by chunk."""
    length = up.content_length
    ctype = next((v for k, v in up.headers if k.lower() == "content-type"), "")
    return length is not None and length <= WHOLE_BODY_MAX and not ctype.startswith("text/event-stream")


def error(status: int, message: str, kind: str | None = None, code: object = None) -> Answered:
    kind = kind or ("service_unavailable" if status == 503 else "router_error")
    body = json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": status if code is None else code}}).encode()
    return Answered(status, [("Content-Type", "application/json")], body)


def replay(r: Result) -> Answered:
    if r.body is None:
        return error(409, "the request with this Idempotency-Key was executed, but its answer was too "
                           "large to keep for a replay; use a new key for a new request")
    headers = [(k, v) for k, v in r.headers if k.lower() not in HOP_BY_HOP]
    headers.append(("X-Vigil-Idempotent-Replay", "true"))
    return Answered(r.status, headers, r.body)


def overloaded(message: str, retry_after: float) -> Answered:
    """429 with Retry-After (whole seconds, at least 1) and retry-after-ms (which
    OpenAI clients honour): full now, not failed."""
    retry = max(0.05, retry_after)
    out = error(429, f"overloaded, not failed: {message}; retry after {retry:.2f} s",
                "rate_limit_error", "overloaded")
    out.headers += [("Retry-After", str(max(1, math.ceil(retry)))), ("retry-after-ms", str(int(retry * 1000)))]
    return out
