"""`vigil router --config FILE`: the front door (foreground)."""

from __future__ import annotations

import asyncio
import signal

from vigil import journal
from vigil.cli.runner import on_reload, run, stop_on_signals


def register(sub) -> None:
    p = sub.add_parser("router", help="run the router (foreground)")
    p.add_argument("--config", required=True, help="the router's YAML configuration file")
    p.set_defaults(func=run_router)


def run_router(args) -> int:
    from vigil.router.config import load_router_config

    cfg = load_router_config(args.config)  # ConfigError -> exit 2 before anything starts
    journal.setup("info", "vigil-router", cfg.name, cfg.cluster)
    from vigil.errors import VigilError
    from vigil.router.proxy import Router

    async def main() -> None:
        stop = stop_on_signals()
        store = cfg.etcd.store(1.0)
        router = Router(cfg, store)
        on_reload(router.membership.reload_keys)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, router.quiesce)  # the agent's, on handover
        await router.start()
        try:
            for listen, host, port in ((router.listen, cfg.listen_host, cfg.listen_port),
                                       (router.listen_admin, cfg.admin_host, cfg.admin_port)):
                try:
                    await listen(host, port)
                except OSError as err:
                    raise VigilError(f"cannot listen on {host}:{port}: {err.strerror}") from None
            await stop.wait()
        finally:
            await router.stop()
            await store.close()

    run(main)
    return 0
