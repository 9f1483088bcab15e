"""`vigil serve-model`: the reference inference server (foreground)."""

from __future__ import annotations

import logging
import sys

from vigil.cli.runner import run, stop_on_signals
from vigil.errors import ConfigError

GENERATORS = ("smollm2-135m-instruct", "reference", "none")


def generative_model(name: str, threads: int, token_delay: float):
    """(the generative model named on the command line or None, how many generations decode at once)."""
    if name == "reference":
        from vigil.serve.generate import ReferenceLM
        return ReferenceLM(token_delay), 8
    if name == "smollm2-135m-instruct":
        from vigil.serve.llama import SmolLM2
        model = SmolLM2(threads, contexts=4)
        return model, model.contexts
    return None, 1


def register(sub) -> None:
    p = sub.add_parser("serve-model", help="serve all-MiniLM-L6-v2 (and a generative model) with an "
                                           "OpenAI-compatible API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--node", default="", help="node name reported in X-Vigil-Served-By")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of each model (torch for embeddings, llama.cpp for generation and "
                        "its batches; default 1)")
    p.add_argument("--max-pending", type=int, default=64,
                   help="requests waiting or running before the server sheds with 429 (default 64)")
    p.add_argument("--generate", choices=GENERATORS, default="none",
                   help="also serve /v1/completions and /v1/chat/completions with this model: "
                        "smollm2-135m-instruct (llama.cpp, CPU), reference (a deterministic toy model "
                        "for tests) or none (default)")
    p.add_argument("--no-embed", action="store_true", help="do not load the embedding model")
    p.add_argument("--token-delay", type=float, default=0.0,
                   help="reference model only: seconds per generated token (default 0)")
    p.add_argument("--fault-injection", action="store_true",
                   help="enable POST /_vigil/faults (labs and benchmarks only)")
    p.add_argument("--continue-key-file", metavar="FILE",
                   help="the cluster's continuation key (the routers' retry.continue_key_file): only "
                        "stream continuations a router signed with it are honoured")
    p.set_defaults(func=serve_model)


def serve_model(args) -> int:
    if not 1 <= args.port <= 65535:
        raise ConfigError("--port", args.port, "must be 1..65535")
    if not 1 <= args.threads <= 64:
        raise ConfigError("--threads", args.threads, "must be 1..64")
    if not 1 <= args.max_pending <= 100_000:
        raise ConfigError("--max-pending", args.max_pending, "must be 1..100000")
    if not 0 <= args.token_delay <= 10:
        raise ConfigError("--token-delay", args.token_delay, "must be 0..10 seconds")
    if args.no_embed and args.generate == "none":
        raise ConfigError("--no-embed", True, "leaves no model to serve: give --generate too")
    logging.basicConfig(level="INFO", stream=sys.stderr,
                        format=f"%(asctime)s serve-model {args.node} %(levelname)s: %(message)s")
    from vigil.serve.model import MiniLM, NoEmbeddings
    from vigil.serve.server import serve

    from vigil.router.continue_sign import load_key

    key = load_key(args.continue_key_file, "--continue-key-file") if args.continue_key_file else None
    if key is None and args.generate != "none" and args.host not in ("127.0.0.1", "::1", "localhost"):
        logging.warning("no --continue-key-file: whoever reaches %s:%d directly may send a stream "
                        "continuation (vigil_continue) of their own", args.host, args.port)
    generator, slots = generative_model(args.generate, args.threads, args.token_delay)

    async def main() -> None:
        await serve(args.host, args.port, args.node, args.fault_injection, stop_on_signals(),
                    NoEmbeddings() if args.no_embed else MiniLM(threads=args.threads), args.max_pending,
                    generator, slots, key)

    run(main)
    return 0
