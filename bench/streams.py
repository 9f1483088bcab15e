"""Streams that survive their node: streamed generations through a lab's
router (3 nodes: agents, etcd, model servers serving the lab's generative
model, vigil.lab.generative) under steady load, while the model server
serving one of them is SIGKILLed mid-stream, 20 times; then the same with
stream resume off (`retry.resume_streams: false`), as every router our users
have behaves past the first byte.

Per run: streams complete and exact (text and token ids equal the
uninterrupted generation, computed here from the same model, and one
[DONE]; checked on every stream a fault touched and every 10th other), broken (an error event, no [DONE], or different text; target 0 with
resume on); for resumed streams the gap the client saw at the resume point
(from the last token before the cut to the first after: p50/p99) and the
stream's tokens/s before and after it. A fault is injected only once the
victim's stream has at least 10 tokens (the state waited for, not a clock),
and the next only after the killed server is back in the router's rotation.

Usage: python bench/streams.py [--faults 20] [--clients 4] [--tokens 100] [--resume on,off]
Writes bench/results/streams.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from common import percentile, summary_ms, write  # noqa: E402

from vigil.lab import Lab  # noqa: E402
from vigil.serve.generate import ReferenceLM, Sampling, generation  # noqa: E402


@dataclass
class Stream:
    prompt: str
    temperature: float
    seed: int
    node: str = ""
    times: list[float] = field(default_factory=list)  # one per token event
    ids: list[int] = field(default_factory=list)
    text: str = ""
    done: int = 0
    error: str = ""
    resumed_at: list[int] = field(default_factory=list)  # token counts at each resume comment
    queued: int = 0  # ': queued' comments heard (every decoding slot of its node busy)
    finished: bool = False


def model_for(name: str):
    if name == "smollm2-135m-instruct":
        from vigil.serve.llama import SmolLM2
        m = SmolLM2(1)
        m.load()
        return m
    return ReferenceLM()


def expected(model, s: Stream, n: int) -> tuple[str, list[int]]:
    return generation(model, model.encode(s.prompt), n, Sampling(s.temperature, 1.0, s.seed))


async def run_stream(http: aiohttp.ClientSession, url: str, model_id: str, s: Stream, n: int) -> None:
    body = {"model": model_id, "prompt": s.prompt, "max_tokens": n, "temperature": s.temperature,
            "seed": s.seed, "stream": True}
    buf = b""
    try:
        async with http.post(url + "/v1/completions", json=body) as r:
            s.node = r.headers.get("X-Vigil-Node", "")
            if r.status != 200:
                s.error = f"HTTP {r.status}: {(await r.read())[:200]!r}"
            async for chunk in r.content.iter_any():
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    _take(s, event)
    except aiohttp.ClientError as e:
        s.error = s.error or f"client: {e}"
    s.finished = True


def _take(s: Stream, event: bytes) -> None:
    if event.startswith(b": vigil resumed"):
        s.resumed_at.append(len(s.ids))
        s.node = event.split(b"->", 1)[1].split(b" ", 1)[0].decode()
    elif event.startswith(b": queued"):
        s.queued += 1
    elif event == b"data: [DONE]":
        s.done += 1
    elif event.startswith(b"data: "):
        chunk = json.loads(event[6:])
        if "error" in chunk:
            s.error = chunk["error"]["message"]
        for ch in chunk.get("choices", []):
            if ch.get("token_ids"):
                s.ids += ch["token_ids"]
                s.times.append(time.monotonic())
            s.text += ch.get("text") or ""


async def load(url: str, model_id: str, clients: int, tokens: int, stop: threading.Event,
               streams: list[Stream]) -> None:
    async def client(c: int) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            i = 0
            while not stop.is_set():
                s = Stream(f"client {c} stream {i}: when the node serving a stream dies,", 0.8 * (i % 2), i)
                streams.append(s)
                await run_stream(http, url, model_id, s, tokens)
                i += 1
    await asyncio.gather(*(client(c) for c in range(clients)))


def _status(lab: Lab) -> dict:
    try:
        with urllib.request.urlopen(lab.router.admin_url + "/_vigil/status", timeout=1.0) as r:
            return json.load(r)
    except (OSError, ValueError):
        return {}


def faults(lab: Lab, streams: list[Stream], count: int, log: list[dict]) -> None:
    """SIGKILL the model server of a stream with >= 10 tokens; wait until it is back."""
    for _ in range(count):
        victim = lab.wait_for(lambda: next((s for s in list(streams) if not s.finished and 10 <= len(s.ids) <= 40
                                            and s.node), None), 120, "a stream 10 tokens in")
        node = victim.node
        lab.signal_server(node, signal.SIGKILL)
        log.append({"node": node, "at": time.monotonic(), "tokens": len(victim.ids)})
        lab.wait_for(lambda: not _status(lab).get("backends", {}).get(node, {}).get("eligible", True), 30,
                     f"{node} out of rotation")
        lab.wait_for(lambda: _status(lab).get("backends", {}).get(node, {}).get("eligible"), 120,
                     f"{node} back in rotation")
        log[-1]["back_s"] = time.monotonic() - log[-1]["at"]


def run(root: Path, resume: bool, args, model) -> dict:
    lab = Lab.up(root, 3, model=True, router=True,
                 workload={"router_retry": {"resume_streams": resume}, "router_queue_wait": 6.0})
    streams: list[Stream] = []
    log: list[dict] = []
    stop = threading.Event()
    try:
        lab.wait_for(lab.ready, 120, "every node ready")
        loader = threading.Thread(target=lambda: asyncio.run(load(lab.router.url, model.model_id, args.clients,
                                                                  args.tokens, stop, streams)))
        loader.start()
        t0 = time.monotonic()
        faults(lab, streams, args.faults, log)
        stop.set()
        loader.join()
        wall = time.monotonic() - t0
    finally:
        stop.set()
        lab.down()
    return judge(streams, log, model, args.tokens, wall)


def judge(streams: list[Stream], log: list[dict], model, tokens: int, wall: float) -> dict:
    complete = broken = 0
    gaps, before, after, why = [], [], [], []
    hit = [s for s in streams if s.resumed_at or s.error or s.done != 1]
    # Exactness is checked on every stream a fault touched and on every 10th other one:
    # recomputing all of them with the real model took longer than the faults (6 min for 300).
    checked = hit + [s for s in streams if s not in hit][::10]
    for s in checked:
        text, ids = expected(model, s, tokens)
        ok = s.done == 1 and not s.error and s.ids == ids and s.text == text
        complete += ok
        broken += not ok
        if not ok:
            why.append(s.error or f"done={s.done} ids {len(s.ids)}/{len(ids)}")
        for k in s.resumed_at:
            if 1 <= k < len(s.times):
                gaps.append(s.times[k] - s.times[k - 1])
                before.append((k - 1) / max(1e-9, s.times[k - 1] - s.times[0]))
                rest = s.times[k:]
                after.append((len(rest) - 1) / max(1e-9, rest[-1] - rest[0]) if len(rest) > 1 else 0.0)
    delivered = [k for s in streams for k in s.resumed_at]
    return {"streams": len(streams), "faults": len(log), "streams_hit": len(hit), "checked": len(checked),
            "complete": complete,
            "broken": broken, "resumed": sum(len(s.resumed_at) for s in streams),
            "gap_ms": summary_ms(gaps), "queued_resumes": sum(1 for s in streams if s.resumed_at and s.queued),
            "tokens_s_before": round(percentile(before, 50) or 0, 1),
            "tokens_s_after": round(percentile(after, 50) or 0, 1), "wall_s": round(wall, 1),
            "delivered_at_resume": {"p50": percentile(delivered, 50), "max": max(delivered, default=None)},
            "server_back_in_rotation_ms": summary_ms([e["back_s"] for e in log if "back_s" in e]),
            "broken_examples": why[:5]}


def _seconds(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faults", type=int, default=20)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--resume", default="on,off", choices=["on", "off", "on,off"],
                    help="which runs (default both)")
    args = ap.parse_args()
    from vigil.lab.generative import lab_generator
    model_name = lab_generator("auto")
    model = model_for(model_name)
    runs = {}
    for resume in [w == "on" for w in args.resume.split(",")]:
        root = Path(tempfile.mkdtemp(prefix="vigil-streams-"))
        try:
            runs["on" if resume else "off"] = r = run(root / "lab", resume, args, model)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(f"resume {'on' if resume else 'off'}: {json.dumps(r)}", flush=True)
    rows = [["stream resume", "faults (SIGKILL mid-stream)", "streams", "hit by a fault", "broken (target 0)",
             "resumes", "gap at resume p50 / p99 ms", "tokens delivered at resume p50 / max",
             "tokens/s before / after (p50)", "killed server back in rotation p50 s"]]
    for k, r in runs.items():
        g = r["gap_ms"]
        rows.append([k, r["faults"], r["streams"], r["streams_hit"], r["broken"], r["resumed"],
                     f"{g['p50']} / {g['p99']}" if g["n"] else "-",
                     f"{r['delivered_at_resume']['p50']} / {r['delivered_at_resume']['max']}" if r["resumed"] else "-",
                     f"{r['tokens_s_before']} / {r['tokens_s_after']}" if r["resumed"] else "-",
                     _seconds(r["server_back_in_rotation_ms"]["p50"])])
    notes = (f"Model: {model_name} (the lab's generative model); {args.clients} clients streaming "
             f"{args.tokens}-token completions back to back, greedy and seeded sampling alternating; each "
             "fault SIGKILLs the model server of a stream 10-40 tokens in; the agent restarts it and the next "
             "fault waits until the router has it back. Broken: an error event, no [DONE], or text/ids not "
             "equal to the uninterrupted generation. The gap is from the last token before the cut to the "
             "first after it, as the client saw them: the router's choice of another node, the continuation's "
             "prompt and replayed ids prefilled in batches, and its first token, on a machine where the killed "
             "server's restart competes for the CPU. Resume off is how routers without mid-stream resume "
             "behave (vLLM production-stack, SGLang: retry before the first byte only).")
    write("streams", {"model": model_name, "clients": args.clients, "tokens": args.tokens, "runs": runs},
          rows, notes)


if __name__ == "__main__":
    main()
