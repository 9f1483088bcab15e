"""The third column of bench/router.py: HAProxy driven by Vigil.

The same HAProxy config as "HAProxy alone" plus a stats socket at admin
level, with its backend named as `vigil haproxy drive` addresses it
(vigil_inference) and its servers named as the nodes. `vigil haproxy drive`
runs as a real process, as an operator runs it: a router-style YAML file
(the lab router's, on a heartbeat port of its own) that every agent lists
among its heartbeat observers, beside the lab router.

`plan_driver` must run between `Lab.create` and `lab.start()` (the agents
read their observers at start). `DrivenHaproxy.watch` times, for a SIGKILLed
node, how long until its server's admin state is maint (polling
`show servers state` every 5 ms) and which took the server out first in
HAProxy's own log: the driver ("for maintenance") or HAProxy's checks.
"""

from __future__ import annotations

import socket as sock
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import yaml

from vigil import procs
from vigil.lab import Lab
from vigil.router.haproxy import BACKEND


def plan_driver(lab: Lab, root: Path) -> Path:
    """Write the driver's YAML file; add its heartbeat port to every agent's observers."""
    (port,) = procs.free_ports(1)
    cfg = lab.router_config()
    cfg["name"] = "haproxy-driver"
    cfg["heartbeat"]["port"] = port
    path = root / "haproxy-driver.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    for node in lab.nodes:
        doc = yaml.safe_load(Path(node.config).read_text())
        doc["heartbeat"]["observers"].append({"address": "127.0.0.1", "port": port})
        Path(node.config).write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def runtime(socket: str, command: str, timeout: float = 1.0) -> str:
    """One command on HAProxy's stats socket (blocking; cheap enough to poll)."""
    with sock.socket(sock.AF_UNIX, sock.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def servers(socket: str) -> dict[str, tuple[int, int]]:
    """server -> (operational state, admin state), from `show servers state`."""
    out = {}
    for line in runtime(socket, f"show servers state {BACKEND}").splitlines():
        f = line.split()
        if len(f) > 6 and f[1] == BACKEND:
            out[f[3]] = (int(f[5]), int(f[6]))
    return out


class DrivenHaproxy:
    def __init__(self, lab: Lab, root: Path, driver_cfg: Path):
        self.lab, self.root, self.driver_cfg = lab, root, driver_cfg
        self.socket = str(root / "haproxy-driven.sock")
        self.log = root / "haproxy-driven.log"
        self.ha: subprocess.Popen | None = None
        self.driver: subprocess.Popen | None = None
        self.maint_ms: list[float | None] = []  # per SIGKILL trial; None: never seen in maint
        self.first: list[str] = []  # per SIGKILL trial: "driver" or "checks" took it out first
        self._watcher: threading.Thread | None = None

    def start(self, render: Callable[..., str]) -> str:
        """Start HAProxy (`render(port, backend, stats)`: bench/router.py's config) and the driver; its URL."""
        port = procs.free_ports(1)[0]
        cfg = self.root / "haproxy-driven.cfg"
        stats = f"    stats socket {self.socket} mode 600 level admin\n"
        cfg.write_text(render(port, backend=BACKEND, stats=stats))
        self.ha = procs.spawn(["haproxy", "-db", "-f", str(cfg)], self.log)
        self.lab.wait_for(lambda: Path(self.socket).exists(), 15, "haproxy (driven) up")
        self.driver = procs.spawn([sys.executable, "-m", "vigil", "haproxy", "drive", "--config",
                                   str(self.driver_cfg), "--socket", self.socket],
                                  self.root / "haproxy-driver.log")
        log = self.root / "haproxy-driver.log"
        said = lambda: log.read_text(errors="replace") if log.exists() else ""  # noqa: E731
        self.lab.wait_for(lambda: all(f"{BACKEND}/{n.name} -> ready" in said() for n in self.lab.nodes),
                          60, "the driver setting every server ready")
        self.settle()
        return f"http://127.0.0.1:{port}"

    def settle(self, timeout: float = 60) -> None:
        """Wait until every server is up and, per the driver, ready (admin state 0)."""
        names = {n.name for n in self.lab.nodes}

        def whole() -> bool:
            try:
                st = servers(self.socket)
            except OSError:
                return False
            return all(st.get(n) == (2, 0) for n in names)
        self.lab.wait_for(whole, timeout, "every driven HAProxy server up and ready")

    def watch(self, victim: str) -> None:
        """Call just before the SIGKILL of `victim`: times its server's move to maint."""
        t0, offset = time.monotonic(), self.log.stat().st_size
        self._watcher = threading.Thread(target=self._poll, args=(victim, t0, offset), daemon=True)
        self._watcher.start()

    def _poll(self, victim: str, t0: float, offset: int, limit: float = 10.0) -> None:
        took = None
        while time.monotonic() - t0 < limit:
            try:
                if servers(self.socket).get(victim, (0, 0))[1] & 1:
                    took = (time.monotonic() - t0) * 1000
                    break
            except OSError:
                pass
            time.sleep(0.005)
        self.maint_ms.append(None if took is None else round(took, 1))
        time.sleep(1.0)  # HAProxy's checks (fall 2 x 100 ms) have spoken by now, if they will
        with open(self.log, "rb") as f:
            f.seek(offset)
            lines = [x for x in f.read().decode(errors="replace").splitlines()
                     if f"{BACKEND}/{victim} " in x and "DOWN" in x]
        self.first.append("driver" if lines and "for maintenance" in lines[0] else "checks")

    def join(self) -> None:
        if self._watcher:
            self._watcher.join()
            self._watcher = None

    def stop(self) -> None:
        if self.driver:
            procs.stop(self.driver.pid, str(self.driver_cfg))
        if self.ha:
            procs.stop(self.ha.pid, "haproxy")
