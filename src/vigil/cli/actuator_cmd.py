"""`vigil actuator-gateway` and `vigil plc-sim`: the token-guarded actuator
path (vigil.resources.actuator) and a Modbus/TCP PLC simulator for labs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from vigil.cli.runner import on_reload, run, stop_on_signals
from vigil.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("actuator-gateway", help="the only, token-guarded write path to a Modbus PLC")
    p.add_argument("--plc", required=True, metavar="HOST:PORT")
    p.add_argument("--listen", type=int, required=True, metavar="PORT", help="HTTP port")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--name", metavar="HOST:PORT",
                   help="this gateway as the nodes' controller.gateway URL names it: commands are signed "
                        "for it, so one sent on to another gateway is refused (default --host:--listen; "
                        "required when --host is a wildcard address)")
    p.add_argument("--state", required=True, metavar="DIR", help="highest token and write history")
    p.add_argument("--keyring", required=True, metavar="FILE",
                   help="the cluster's key ring: only nodes in it may write (reloaded on SIGHUP)")
    p.add_argument("--etcd", required=True, metavar="URL[,URL...]",
                   help="etcd endpoints: a token is accepted only if it is the leader key's")
    p.add_argument("--cluster", required=True, help="the cluster name (its etcd key prefix)")
    p.add_argument("--etcd-ca", help="CA certificate for https etcd endpoints")
    p.add_argument("--etcd-cert", help="client certificate (TLS to etcd)")
    p.add_argument("--etcd-key", help="its key")
    p.add_argument("--etcd-user", help="etcd user (auth on: the gateway role reads the leader key)")
    p.add_argument("--etcd-password-file", help="that user's password, in a root-only file")
    p.add_argument("--max-skew", type=float, default=5.0, metavar="SECONDS",
                   help="how far a command's signing time may be from ours (default 5)")
    p.set_defaults(func=gateway)
    p = sub.add_parser("plc-sim", help="a Modbus/TCP PLC simulator (100 holding registers)")
    p.add_argument("--port", type=int, required=True)
    p.set_defaults(func=plc_sim)


def gateway(args) -> int:
    host, _, port = args.plc.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("--plc", args.plc, "must be HOST:PORT")
    logging.basicConfig(level="INFO", stream=sys.stderr)
    from aiohttp import web

    from vigil.etcd_config import check_etcd_auth
    from vigil.resources.guard import TokenGuard
    from vigil.resources.actuator import ActuatorGateway, ModbusPlc
    from vigil.resources.signed import RequestVerifier
    from vigil.files import check_secret, read_secret
    from vigil.identity import load_ring
    from vigil.store.etcd import EtcdStore
    from vigil.store.keys import Keys

    if not 0.1 <= args.max_skew <= 300:
        raise ConfigError("--max-skew", args.max_skew, "must be 0.1..300 seconds")
    endpoints = args.etcd.split(",")
    check_etcd_auth(endpoints, args.etcd_user, "--etcd-user")
    if args.etcd_key:
        check_secret(args.etcd_key, "--etcd-key")
    verifier = RequestVerifier(load_ring(args.keyring, "--keyring"), _name(args), args.max_skew)
    password = read_secret(args.etcd_password_file, "--etcd-password-file") if args.etcd_password_file else None
    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)

    def reload() -> None:
        try:
            verifier.ring = load_ring(args.keyring, "--keyring")
            logging.info("key ring reloaded")
        except ConfigError as e:
            logging.error("key ring not reloaded, the old one stays in use: %s", e)

    async def main() -> None:
        store = EtcdStore(endpoints, 1.0, args.etcd_ca, args.etcd_cert, args.etcd_key,
                          args.etcd_user, password)
        leader_key = Keys(args.cluster).leader

        async def leader_of() -> tuple[str, int] | None:
            kv = await store.get(leader_key)
            return (kv.value, kv.create_revision) if kv else None
        plc = ModbusPlc(host, int(port))
        gw = ActuatorGateway(plc, TokenGuard(state / "highest-token"), state / "writes.jsonl",
                             verifier, leader_of)
        runner = web.AppRunner(gw.app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.listen).start()
        on_reload(reload)
        try:
            await stop_on_signals().wait()
        finally:
            await runner.cleanup()
            await store.close()
            plc.close()

    run(main)
    return 0


def _name(args) -> str:
    """The name commands are signed for (vigil.resources.signed.gateway_name)."""
    from vigil.errors import VigilError
    from vigil.resources.signed import gateway_name

    if args.name is None and args.host in ("0.0.0.0", "::", ""):
        raise ConfigError("--name", None, f"--host {args.host or '(all)'} listens on every address: give "
                                          "--name HOST:PORT as the nodes' controller.gateway URL has it")
    name = args.name or (f"[{args.host}]:{args.listen}" if ":" in args.host else f"{args.host}:{args.listen}")
    try:
        return gateway_name(f"http://{name}")
    except VigilError as e:
        raise ConfigError("--name", name, f"must be HOST:PORT: {e}") from None


def plc_sim(args) -> int:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    async def main() -> None:
        dev = SimDevice(id=1, simdata=[SimData(0, values=[0] * 100, datatype=DataType.REGISTERS)])
        server = ModbusTcpServer(dev, address=("127.0.0.1", args.port))
        await server.serve_forever(background=True)
        try:
            await stop_on_signals().wait()
        finally:
            await server.shutdown()

    run(main)
    return 0
