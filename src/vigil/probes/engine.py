"""The inference engine's own progress report, read over HTTP.

Formats:
- `vigil`: GET /v2/load -> {"pending": int, "completed": int, "payloads":
  [...] (vigil.core.payloads), ...} (the reference model server);
- `vllm`: GET /metrics (Prometheus text): pending = num_requests_running +
  num_requests_waiting, completed = request_success_total +
  generation_tokens_total (tokens advance during a long generation, so a
  60 s stream still shows progress).

Contract: `read_load` returns a LoadReading or raises ProbeError with kind
silent | refused | unsupported | bad; it never raises anything else and never
waits longer than `timeout`.
"""

from __future__ import annotations

import asyncio
import json
import math

import aiohttp

from vigil.core.engine import LoadReading
from vigil.core.payloads import parse_payloads
from vigil.errors import ProbeError

VLLM_PENDING = ("vllm:num_requests_running", "vllm:num_requests_waiting")
VLLM_COMPLETED = ("vllm:request_success_total", "vllm:generation_tokens_total")


async def read_load(http: aiohttp.ClientSession, url: str, fmt: str, timeout: float) -> LoadReading:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            body = await r.read()
            status = r.status
    except asyncio.TimeoutError:
        raise ProbeError("silent", f"no answer within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as e:
        kind = "refused" if isinstance(e.os_error, ConnectionRefusedError) else "silent"
        raise ProbeError(kind, f"{type(e.os_error).__name__}") from None
    except (aiohttp.ClientError, OSError) as e:
        raise ProbeError("silent", type(e).__name__) from None
    if status == 404:
        raise ProbeError("unsupported", f"{url} answered 404")
    if status != 200:
        raise ProbeError("bad", f"{url} answered HTTP {status}")
    return parse_vllm(body) if fmt == "vllm" else parse_vigil(body)


def parse_vigil(body: bytes) -> LoadReading:
    try:
        d = json.loads(body)
        pending, completed = d["pending"], d["completed"]
    except (ValueError, TypeError, KeyError, RecursionError):
        raise ProbeError("bad", "load report is not JSON with 'pending' and 'completed'") from None
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (pending, completed)):
        raise ProbeError("bad", f"load report has non-counts: pending={pending!r} completed={completed!r}")
    payloads, _malformed = parse_payloads(d.get("payloads"))  # a bad entry is left out, not fatal
    return LoadReading(pending, completed, tuple(payloads))


def parse_vllm(body: bytes) -> LoadReading:
    sums = dict.fromkeys(VLLM_PENDING + VLLM_COMPLETED, 0.0)
    seen = set()
    for line in body.decode(errors="replace").splitlines():
        if not line or line[0] == "#":
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            try:
                value = float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                raise ProbeError("bad", f"unreadable metric line: {line[:80]!r}") from None
            if not math.isfinite(value) or value < 0:
                raise ProbeError("bad", f"metric {name} is {value}")
            sums[name] += value
            seen.add(name)
    if not seen & set(VLLM_PENDING):
        raise ProbeError("unsupported", "no vllm:num_requests_running/waiting in /metrics")
    return LoadReading(int(sum(sums[k] for k in VLLM_PENDING)),
                       int(sum(sums[k] for k in VLLM_COMPLETED)))
