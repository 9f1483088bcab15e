"""etcd's v3 JSON gateway on the wire (vigil.store.etcd speaks it): keys and
values in base64, int64 as strings with zero values omitted, and the watch
as a stream of newline-delimited JSON messages.

Errors: `watch_line` raises WatchEnded (an aiohttp.ClientPayloadError, so the
watch resumes elsewhere as after a broken stream) or WatchCompacted;
`lease_answer` raises StoreError for an answer that is not a lease's seconds."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, AsyncIterator

import aiohttp

from vigil.core.lease_expiry import lease_seconds
from vigil.errors import StoreError, WatchCompacted
from vigil.store.base import KeyValue, WatchEvent

TOKEN_GONE = ("invalid auth token", "user name is empty")  # etcd's words for an expired auth token


def b64(s: str) -> str:
    return base64.b64encode(s.encode("utf-8", "surrogateescape")).decode()


def unb64(s: str | None) -> str:
    return base64.b64decode(s or "").decode("utf-8", "surrogateescape")


def kv_of(d: dict[str, Any]) -> KeyValue:
    return KeyValue(unb64(d["key"]), unb64(d.get("value")), int(d.get("create_revision", 0)),
                    int(d.get("mod_revision", 0)), int(d.get("version", 0)), int(d.get("lease", 0)))


def lease_answer(r: object) -> tuple[int, int]:
    """(seconds left, seconds granted) from a lease/timetolive answer (a missing
    lease says TTL -1). Raises StoreError for anything else."""
    d = r if isinstance(r, dict) else {"TTL": None}
    left, granted = lease_seconds(d.get("TTL", 0)), lease_seconds(d.get("grantedTTL", 0))
    if left is None or granted is None:
        raise StoreError(f"etcd answered a lease's time to live with {str(r)[:200]}: not whole seconds")
    return left, granted


class WatchEnded(aiohttp.ClientPayloadError):
    """etcd ended a watch with an error; `token_gone`: because the auth token expired."""

    def __init__(self, message: str, token_gone: bool = False):
        super().__init__(message)
        self.token_gone = token_gone


def watch_line(line: bytes) -> list[tuple[WatchEvent | None, int]]:
    """The events of one watch message, each with the message's revision; (None,
    revision) for the message that says the watch was created."""
    line = line.strip()
    if not line:
        return []
    msg = json.loads(line)
    if "error" in msg:
        raise WatchEnded(str(msg["error"]), any(t in str(msg["error"]) for t in TOKEN_GONE))
    res = msg.get("result", {})
    if int(res.get("compact_revision", 0)) > 0:
        raise WatchCompacted(int(res["compact_revision"]))
    if res.get("canceled"):
        raise WatchEnded(f"watch canceled: {res.get('cancel_reason', '')}")
    rev = int(res.get("header", {}).get("revision", 0))
    out: list[tuple[WatchEvent | None, int]] = [(None, rev)] if res.get("created") else []
    for e in res.get("events", []):
        kv = e["kv"]
        out.append((WatchEvent("delete" if e.get("type") == "DELETE" else "put",
                               unb64(kv["key"]), unb64(kv.get("value")),
                               int(kv.get("mod_revision", 0)), int(kv.get("create_revision", 0)),
                               int(kv.get("lease", 0))), rev))
    return out


async def lines(content: aiohttp.StreamReader, failed: asyncio.Event | None) -> AsyncIterator[bytes]:
    """The watch stream's lines; with `failed`, it ends (ClientPayloadError) as soon as
    a request to the same member fails, even while the stream itself stays silent."""
    if failed is None:
        async for line in content:
            yield line
        return
    while True:
        read, gone = asyncio.ensure_future(content.readline()), asyncio.ensure_future(failed.wait())
        try:
            await asyncio.wait({read, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not read.done():
                read.cancel()
        if not read.done() or read.cancelled():
            raise aiohttp.ClientPayloadError("a request to this member failed: the watch may be behind")
        line = read.result()
        if not line:
            return
        yield line
