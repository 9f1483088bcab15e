"""`vigil serve-model`: the reference inference server (foreground)."""

from __future__ import annotations

import logging
import sys

from vigil.cli.runner import run, stop_on_signals
from vigil.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("serve-model", help="serve all-MiniLM-L6-v2 with an OpenAI-compatible API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--node", default="", help="node name reported in X-Vigil-Served-By")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--max-pending", type=int, default=64,
                   help="requests waiting or running before the server sheds with 429 (default 64)")
    p.add_argument("--fault-injection", action="store_true",
                   help="enable POST /_vigil/faults (labs and benchmarks only)")
    p.set_defaults(func=serve_model)


def serve_model(args) -> int:
    if not 1 <= args.port <= 65535:
        raise ConfigError("--port", args.port, "must be 1..65535")
    if not 1 <= args.threads <= 64:
        raise ConfigError("--threads", args.threads, "must be 1..64")
    if not 1 <= args.max_pending <= 100_000:
        raise ConfigError("--max-pending", args.max_pending, "must be 1..100000")
    logging.basicConfig(level="INFO", stream=sys.stderr,
                        format=f"%(asctime)s serve-model {args.node} %(levelname)s: %(message)s")
    from vigil.serve.model import MiniLM
    from vigil.serve.server import serve

    async def main() -> None:
        await serve(args.host, args.port, args.node, args.fault_injection, stop_on_signals(),
                    MiniLM(threads=args.threads), args.max_pending)

    run(main)
    return 0
