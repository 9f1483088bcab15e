"""Preflight checks of what the node's configuration names: the file itself,
the ports, etcd (reachable, its version, its disk), GPUs (NVML), the
fabric manager, the workload's requirements, the BMCs that fence. Each
returns Outcomes (vigil.preflight.outcome) and never raises; a check whose
subject is not configured here is `skipped`, saying so."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from vigil.config import NodeConfig, load_config
from vigil.core.compat import mismatches
from vigil.errors import ConfigError, StoreError, VigilError
from vigil.preflight.outcome import WARNING, Outcome, failed, passed, skipped
from vigil.preflight.system import Host
from vigil.store.etcd_version import lease_revocation_bug

FSYNC_P99_MS = 10.0  # etcd's hardware guidance: 99th percentile of WAL fdatasync under 10 ms
FSYNC_SAMPLES = 200
FSYNC_BLOCK = 2300  # bytes, the size etcd's docs use with fio


def config(path: str) -> tuple[NodeConfig | None, Outcome]:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        return None, failed("Config", f"{path}: {e}", "fix the field it names (`vigil init` writes a valid one)")
    except OSError as e:
        return None, failed("Config", f"{path}: {e.strerror}", "give the node's configuration file with --config")
    return cfg, passed("Config", f"{path}: node {cfg.node} of cluster {cfg.cluster}, {len(cfg.peers)} peers")


def ports(host: Host, cfg: NodeConfig, config_path: str) -> list[Outcome]:
    """Each port the agent binds is free, or held by this node's own agent (the
    process running `vigil agent --config` with this very file)."""
    wanted = [("udp", a, cfg.heartbeat_port, "heartbeat") for a in cfg.addresses]
    wanted.append(("tcp", cfg.api_host, cfg.api_port, "agent API"))
    return [_port(host, Path(config_path).resolve(), *w) for w in wanted]


def _port(host: Host, config: Path, proto: str, addr: str, port: int, what: str) -> Outcome:
    pid = f"Port-{proto}-{port}"
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    try:
        with socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, kind) as s:
            if proto == "tcp":  # as the agent binds: connections in TIME_WAIT do not hold the port
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
        return passed(pid, f"{what} {addr}:{port}/{proto} is free")
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            return failed(pid, f"{what} {addr}:{port}/{proto} cannot be bound: {e.strerror or e}", BIND_FIX.get(
                e.errno, "give an address of this machine (`ip -brief address`) and a free port"))
    owner = port_owner(host, proto, port)
    if owner and owner[2] == config:
        return passed(pid, f"{what} {addr}:{port}/{proto} is held by this node's agent (pid {owner[0]})")
    held = f"pid {owner[0]} ({owner[1]})" if owner else "another process"
    return failed(pid, f"{what} {addr}:{port}/{proto} is taken by {held}",
                  f"stop it (`ss -{'u' if proto == 'udp' else 't'}lnp 'sport = :{port}'` shows it) or choose "
                  "another port in the configuration")


BIND_FIX = {errno.EADDRNOTAVAIL: "give an address of this machine (`ip -brief address`) in the configuration",
            errno.EACCES: "run preflight as root (a port below 1024)",
            errno.EAFNOSUPPORT: "IPv6 is off on this machine: give an IPv4 address"}


def port_owner(host: Host, proto: str, port: int) -> tuple[int, str, Path | None] | None:
    """(pid, process name, the file its `--config` names, resolved) of the process
    bound to `port`, from /proc; None if unknown. The name only, never its command
    line (which may hold a password): this text goes into support bundles."""
    inodes = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        for line in (host.read(table) or "").splitlines()[1:]:
            f = line.split()
            local = f[1].rsplit(":", 1) if len(f) > 9 else []
            bound = len(local) == 2 and _hex(local[1]) == port
            if bound and (proto == "udp" or f[3] == "0A"):  # 0A: listening
                inodes.add(f[9])
    proc = host.root / "proc"
    for entry in proc.iterdir() if inodes and proc.is_dir() else ():
        if entry.name.isdigit() and any(f"socket:[{i}]" in _links(entry) for i in inodes):
            name = (host.read(f"/proc/{entry.name}/comm") or "?").strip()[:32]
            return int(entry.name), name, _config_of(host, entry)
    return None


def _links(entry: Path) -> set[str]:
    out = set()
    try:
        fds = list((entry / "fd").iterdir())
    except OSError:
        return out
    for fd in fds:
        try:
            out.add(os.readlink(fd))
        except OSError:
            continue  # closed meanwhile
    return out


def _config_of(host: Host, entry: Path) -> Path | None:
    """The configuration file a `vigil agent --config FILE` process runs with."""
    argv = (host.read(f"/proc/{entry.name}/cmdline") or "").split("\x00")
    if "agent" not in argv or "--config" not in argv[:-1]:
        return None
    path = Path(argv[argv.index("--config") + 1])
    try:
        return (path if path.is_absolute() else Path(os.readlink(entry / "cwd")) / path).resolve()
    except OSError:
        return None


def _hex(text: str) -> int | None:
    try:
        return int(text, 16)
    except ValueError:
        return None


def etcd(cfg: NodeConfig) -> list[Outcome]:
    """Every endpoint answers and none runs a version with the lease bug."""
    out = []
    for ep in cfg.etcd.endpoints:
        try:
            version = asyncio.run(_etcd_version(cfg, ep))
        except (StoreError, VigilError, OSError) as e:
            out.append(failed(f"Etcd-{_hostport(ep)}", f"etcd {ep} does not answer: {e}",
                              "start it (`systemctl status etcd`), or open the way (`vigil firewall show`)",
                              "the agent keeps its session, its record and the leader key in etcd"))
            continue
        bug = lease_revocation_bug(version)
        out.append(failed(f"Etcd-{_hostport(ep)}", bug, "upgrade etcd to 3.5.11 or later") if bug
                   else passed(f"Etcd-{_hostport(ep)}", f"etcd {version} at {ep}"))
    return out


def _hostport(endpoint: str) -> str:
    return endpoint.split("://", 1)[-1].rstrip("/")


async def _etcd_version(cfg: NodeConfig, endpoint: str) -> str:
    store = dataclasses.replace(cfg.etcd, endpoints=(endpoint,)).store(2.0)
    try:
        return await store.version()
    finally:
        await store.close()


def peer_clocks(cfg: NodeConfig) -> Outcome:
    """The offset of every peer's clock, as this node's running agent measures it
    from the send times its peers' heartbeats carry."""
    from vigil.cluster_status import ApiAccess, agent_status

    token = next(iter((cfg.api_tokens or {}).values()), None)
    try:
        st = asyncio.run(agent_status(cfg.api_url, ApiAccess(cfg.etcd.ca_file, token)))
    except VigilError as e:
        return skipped("PeerClockOffset", f"this node's agent did not answer: {e}")
    if not st:
        return skipped("PeerClockOffset", "this node's agent is not running: start it to measure its peers' "
                                          "clock offsets (heartbeats carry send times)")
    skews = (st.get("heartbeat") or {}).get("clock_skew") or {}
    if not skews:
        return skipped("PeerClockOffset", "the agent has heard no peer yet")
    worst, offset = max(skews.items(), key=lambda kv: abs(kv[1]))
    limit = cfg.keys.max_clock_skew
    found = f"{len(skews)} peers, the furthest {worst} at {offset * 1000:+.0f} ms (limit {limit:g} s)"
    why = "a heartbeat sent further than heartbeat.max_clock_skew from our clock is refused as a replay"
    if abs(offset) <= limit / 2:
        return passed("PeerClockOffset", found, why)
    return failed("PeerClockOffset", found, f"synchronise {worst}'s clock and this one's (chrony on both; "
                  "`chronyc tracking`)", why, result=WARNING if abs(offset) <= limit else "error")


def fsync_latency(folder: Path, samples: int = FSYNC_SAMPLES) -> list[float]:
    """ms per write + fdatasync of FSYNC_BLOCK bytes in `folder` (etcd's WAL pattern)."""
    times = []
    fd, path = tempfile.mkstemp(prefix=".vigil-preflight-", dir=folder)
    try:
        block = os.urandom(FSYNC_BLOCK)
        for _ in range(samples):
            t = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    return times


def etcd_disk(folder: str | None) -> Outcome:
    if not folder:
        return skipped("EtcdDisk", "no --etcd-data-dir: the fdatasync latency of etcd's disk is not measured")
    try:
        times = sorted(fsync_latency(Path(folder)))
    except OSError as e:
        return failed("EtcdDisk", f"cannot write in {folder}: {e.strerror}", "give etcd's data directory "
                      "with --etcd-data-dir, on the node that runs the etcd member")
    p99 = times[int(len(times) * 0.99) - 1]
    found = f"fdatasync p50 {statistics.median(times):.2f} ms, p99 {p99:.2f} ms in {folder}"
    why = "etcd syncs its log before it answers; a slow disk makes lease renewals and elections slow"
    if p99 < FSYNC_P99_MS:
        return passed("EtcdDisk", found, why)
    return failed("EtcdDisk", f"{found} (etcd's guidance: p99 under {FSYNC_P99_MS:g} ms)",
                  "put etcd's data directory on an NVMe or SSD of its own", why, result=WARNING)


def gpus(cfg: NodeConfig) -> tuple[Outcome, object]:
    from vigil.probes.gpu import GpuProbe

    probe = GpuProbe(xid_events=False)
    try:
        reading = probe.read(time.monotonic())
    finally:
        probe.close()
    if not reading.available and not cfg.health.gpu:
        return skipped("NVML", f"health.gpu is off ({reading.problem})"), reading
    if not reading.available:
        return failed("NVML", reading.problem, "install the NVIDIA driver, or set health.gpu: off on a node "
                      "without GPUs", "GPU health (XIDs, ECC, heat) comes from NVML", result=WARNING), reading
    n = len(reading.values.get("gpus") or [])
    return passed("NVML", f"NVML answers: {n} GPU(s), driver {reading.values.get('driver_version', '?')}"), reading


def fabric_manager(host: Host) -> Outcome:
    dev = host.root / "dev"
    switches = sorted(p.name for p in dev.glob("nvidia-nvswitch*")) if dev.is_dir() else []
    if not switches:
        return skipped("FabricManager", "no NVSwitch on this node")
    try:
        state = subprocess.run(["systemctl", "is-active", "nvidia-fabricmanager"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        state = f"unknown ({e})"
    if state == "active":
        return passed("FabricManager", f"nvidia-fabricmanager is active ({len(switches)} NVSwitch devices)")
    return failed("FabricManager", f"{len(switches)} NVSwitch devices and nvidia-fabricmanager is {state}",
                  "systemctl enable --now nvidia-fabricmanager (its version must match the driver's)",
                  "without it the GPUs of an NVSwitch system cannot talk to each other: CUDA fails")


def compat(cfg: NodeConfig, gpu_reading: object) -> Outcome:
    if not cfg.health.requires:
        return skipped("Compatibility", "health.requires is empty: the workload asks for nothing")
    from vigil.probes.fingerprint import node_fingerprint

    fp = {**node_fingerprint(gpu_reading), **cfg.health.declare}  # type: ignore[arg-type]
    wrong = mismatches(fp, cfg.health.requires)
    if not wrong:
        return passed("Compatibility", f"meets {cfg.health.requires}")
    return failed("Compatibility", "; ".join(wrong), "install what the workload requires on this node, or "
                  "leave it out of the cluster (it would drain itself and never lead)")


def bmcs(cfg: NodeConfig) -> list[Outcome]:
    """Every fence device this node may use answers a power status with its credentials."""
    if cfg.fencing is None:
        return [skipped("BMC", "no fencing section: this node fences nobody (leases only)")]
    from vigil.stonith.devices import make_device

    out = []
    for node, levels in sorted(cfg.fencing.topology.items()):
        for i, spec in enumerate(levels):
            cid = f"BMC-{node}-{i}"
            if spec["type"] == "null":
                out.append(skipped(cid, f"{node}'s level {i} is the null device"))
                continue
            try:
                state = asyncio.run(_status(make_device(spec)))
            except (VigilError, OSError) as e:
                out.append(failed(cid, f"{node}'s {spec['type']} device does not answer: {e}",
                                  "check its address, user and password file, and that the BMC network is "
                                  "reachable (`ipmitool -I lanplus -H HOST -U USER -E power status`)",
                                  "a failed leader is fenced through it before anyone takes over"))
                continue
            out.append(passed(cid, f"{node}'s {spec['type']} device answers: power {state}"))
    return out


async def _status(device) -> str:
    try:
        return await asyncio.wait_for(device.status(), 15.0)
    except asyncio.TimeoutError:
        raise VigilError("no answer within 15 s") from None
    finally:
        await device.close()


def checks(host: Host, cfg: NodeConfig, config_path: str, etcd_data_dir: str | None) -> list[Outcome]:
    gpu, reading = gpus(cfg)
    return [*ports(host, cfg, config_path), peer_clocks(cfg), *etcd(cfg), etcd_disk(etcd_data_dir), gpu,
            fabric_manager(host), compat(cfg, reading), *bmcs(cfg)]
