"""`python -m vigil.testing.steady URL OUT`: a steady stream of completion
requests (the reference generator) to URL until SIGTERM or `--duration`,
then every request as one JSON line in OUT. The deployment test runs it in
its client network namespace, in front of the machines' VIP."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal

from vigil.lab.load import LoadGenerator


def completion(i: int) -> dict:
    return {"model": "vigil-reference-lm", "prompt": f"request {i}: the quick brown fox", "max_tokens": 4}


async def main(args: argparse.Namespace) -> None:
    gen = LoadGenerator(args.url, rate=args.rate, concurrency=args.concurrency, timeout=args.timeout,
                        body=completion)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, gen.stop)
    samples = await gen.run(args.duration)
    with open(args.out, "w") as f:
        for s in samples:
            f.write(json.dumps(dataclasses.asdict(s)) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--duration", type=float, default=900.0)
    asyncio.run(main(p.parse_args()))
