"""One attempt at a backend, with a typed outcome: an `Answer` (its head
arrived) or `AttemptFailed` whose `kind` says what the router may do next
(vigil.router.proxy: retry, shed, eject)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from vigil.core.routing import RETRYABLE_STATUS
from vigil.router.answers import forwarded as _forwarded, small as _small
from vigil.router.http1 import Incoming
from vigil.router.upstream import ConnectFailed, Upstream, UpstreamBroken, UpstreamPool, request_bytes


class AttemptFailed(Exception):
    """One attempt got no usable answer. `kind`: connect (never sent) | reset |
    status | first_byte (no first byte in time) | ejected | overloaded (the engine shed it)
    | unready (the engine refused it before running it: a 503 whose error code is
    `not_ready`, what Vigil's model server answers until its model is loaded)."""

    def __init__(self, kind: str, cause: str, status: int | None = None, retry_after: float | None = None):
        """`retry_after`: what an engine that shed (429) said of when to retry, if it did."""
        super().__init__(cause)
        self.kind, self.cause, self.status, self.retry_after = kind, cause, status, retry_after


@dataclass
class Answer:
    up: Upstream
    head: bytes  # the whole body when `whole`, else the first chunk
    whole: bool


async def send_attempt(pool: UpstreamPool, url: str, req: Incoming) -> Answer:
    """Send `req` to the backend at `url`; the answer once its head (and first
    chunk, or whole small body) arrived. Raises AttemptFailed."""
    u = urlsplit(url)
    try:
        up = await pool.connection(u.hostname or "127.0.0.1", u.port or 80)
    except ConnectFailed as e:
        raise AttemptFailed("connect", f"cannot connect to {url}: {e}") from None
    try:
        await up.send(request_bytes(req.method, req.target, u.netloc, _forwarded(req), req.body),
                      req.method == "HEAD")
        status = up.status
        if status in RETRYABLE_STATUS or status == 429:
            body = await up.read_all()
            hint = retry_hint(up.headers) if status == 429 else None
            up.release()  # (which resets `up` for its next request)
            kind = "overloaded" if status == 429 else "unready" if status == 503 and not_ready(body) else "status"
            raise AttemptFailed(kind, f"HTTP {status} {body[:200].decode(errors='replace')}", status, hint)
        if _small(up):
            return Answer(up, await up.read_all(), True)
        return Answer(up, await up.read(), False)
    except UpstreamBroken as e:
        up.release()
        raise AttemptFailed("reset", f"{e}") from None
    except asyncio.CancelledError:
        if up.transport:
            up.transport.abort()  # mid-request: this connection can carry nothing more
        raise


def not_ready(body: bytes) -> bool:
    """An error answer whose code says the engine ran nothing: {"error": {"code": "not_ready"}}
    (vigil.serve.server). Never raises; a body past 4 KiB is not one."""
    if len(body) > 4096:
        return False
    if b'"not_ready"' not in body:
        return False
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        return False
    err = doc.get("error") if isinstance(doc, dict) else None
    return isinstance(err, dict) and err.get("code") == "not_ready"


def retry_hint(headers: list[tuple[str, str]]) -> float | None:
    """The seconds an answer says to wait before retrying: retry-after-ms (OpenAI's),
    else Retry-After in seconds (an HTTP date is not read); None when neither is a
    number. Bounded to [0, 60]: an engine's header is untrusted."""
    h = {k.lower(): v for k, v in headers}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            value = float(h.get(name, "")) * scale
        except ValueError:
            continue
        if value == value:  # (not NaN)
            return max(0.0, min(60.0, value))
    return None


def engine_report(up: Upstream) -> tuple[float | None, float | None, int | None]:
    """What an answer's engine said of itself, for its backend's adaptive limit
    (vigil.core.routing.RoutingTable.answered): its own queue and service times
    (x-vigil-queue-ms, x-vigil-service-ms) and queue depth (x-vigil-queue-depth)."""
    h = {k.lower(): v for k, v in up.headers}
    try:
        queue_s: float | None = float(h["x-vigil-queue-ms"]) / 1000
        service_s: float | None = float(h["x-vigil-service-ms"]) / 1000
    except (KeyError, ValueError):
        queue_s = service_s = None
    depth = h.get("x-vigil-queue-depth", "")
    return queue_s, service_s, int(depth) if depth.isdigit() else None
