"""A real corosync ring (Debian's corosync 3, knet) in a NetTopology's node
namespaces, carrying CPG traffic, so that loss on its bridge makes corosync
write the troubleshooting matrix's real lines ("TOTEM ] Retransmit List",
"FAILED TO RECEIVE") for `vigil diagnose --corosync-log` to read: what an
operator coming from Pacemaker has on their nodes.

Each corosync runs in its node's network namespace with its own mount
namespace (a private /run: corosync takes a lock file there) and its own
hostname (c1, c2, ...: the name its log lines carry). `python -m
vigil.testing.corosync_ring SECONDS` is the traffic: it joins a CPG group
through libcpg and multicasts a 1,200-byte message every 10 ms.
"""

from __future__ import annotations

import ctypes
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from vigil.errors import VigilError
from vigil.lab.netns import NetTopology
from vigil.procs import wait_for

log = logging.getLogger(__name__)

CONF = """totem {{
    version: 2
    cluster_name: vigil-matrix
    transport: knet
    crypto_cipher: none
    crypto_hash: none
    token: 1000
    # A node that hears tokens but not messages gives up after 10 rotations
    # (default 2,500), so a short loss window produces the line.
    fail_recv_const: 10
}}
nodelist {{
{nodes}
}}
quorum {{
    provider: corosync_votequorum
    two_node: {two_node}
}}
logging {{
    to_logfile: yes
    logfile: {log}
    to_syslog: no
    to_stderr: no
    timestamp: on
}}
system {{
    state_dir: {state}
}}
"""
NODE = "    node {{\n        ring0_addr: {addr}\n        name: c{i}\n        nodeid: {i}\n    }}"


@dataclass
class CorosyncRing:
    """One corosync per node of `net`, logging to `root`/cN/corosync.log.
    Use as a context manager: every process it started is stopped on exit."""
    net: NetTopology
    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def log(self, i: int) -> Path:
        return self.root / f"c{i}" / "corosync.log"

    def lines(self, i: int) -> list[str]:
        return self.log(i).read_text(errors="replace").splitlines() if self.log(i).exists() else []

    def __enter__(self) -> "CorosyncRing":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        n = self.net.nodes
        nodes = "\n".join(NODE.format(addr=self.net.host(i), i=i) for i in range(1, n + 1))
        for i in range(1, n + 1):
            d = self.root / f"c{i}"
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "corosync.conf"
            conf.write_text(CONF.format(nodes=nodes, two_node=int(n == 2), log=self.log(i), state=d))
            self._spawn(i, ["unshare", "-m", "-u", "sh", "-c", f"mount -t tmpfs tmpfs /run && hostname c{i} "
                                                               f"&& exec corosync -f -c {conf}"], d / "out")
        try:
            wait_for(lambda: all(f"Members[{n}]:" in "\n".join(self.lines(i)) for i in range(1, n + 1)), 30,
                     f"a corosync ring of {n} members")
        except VigilError as e:
            said = (self.root / "c1" / "out").read_text(errors="replace")[-2000:]
            raise VigilError(f"{e}; corosync on c1 said: {said or '(nothing)'}") from None
        for i in range(1, n + 1):
            self._spawn(i, [sys.executable, "-m", "vigil.testing.corosync_ring", "600"],
                        self.root / f"c{i}" / "traffic")

    def _spawn(self, i: int, cmd: list[str], out: Path) -> None:
        with out.open("wb") as f:
            self.procs.append(subprocess.Popen(["ip", "netns", "exec", self.net.ns(i), *cmd],
                                               stdout=f, stderr=subprocess.STDOUT))

    def stop(self) -> None:
        """Every process it started, by PID: SIGTERM, then SIGKILL after 10 s."""
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    log.error("corosync ring: pid %d outlived SIGKILL by 10 s", p.pid)
        self.procs.clear()


class _Name(ctypes.Structure):
    _fields_ = [("length", ctypes.c_uint32), ("value", ctypes.c_char * 128)]


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_DELIVER = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32,
                            ctypes.c_void_p, ctypes.c_size_t)
_CONFCHG = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t)


class _Callbacks(ctypes.Structure):
    _fields_ = [("deliver", _DELIVER), ("confchg", _CONFCHG)]


CS_OK, CPG_TYPE_AGREED, CS_DISPATCH_ALL = 1, 2, 2  # cpg.h: UNORDERED 0, FIFO 1, AGREED 2, SAFE 3


def traffic(seconds: float) -> None:
    """Join CPG group "vigil" on the local corosync and multicast for `seconds`
    (libcpg's C API; messages sent back by the ring are dispatched and dropped)."""
    lib = ctypes.CDLL("libcpg.so.4")
    callbacks = _Callbacks(_DELIVER(lambda *a: None), _CONFCHG(lambda *a: None))
    handle = ctypes.c_uint64()
    wait_for(lambda: lib.cpg_initialize(ctypes.byref(handle), ctypes.byref(callbacks)) == CS_OK, 10,
             "libcpg to connect to corosync", poll=0.1)
    if lib.cpg_join(handle, ctypes.byref(_Name(5, b"vigil"))) != CS_OK:
        raise SystemExit("cpg_join failed")
    payload = ctypes.create_string_buffer(b"v" * 1200)
    iov = _Iovec(ctypes.cast(payload, ctypes.c_void_p), 1200)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        lib.cpg_mcast_joined(handle, CPG_TYPE_AGREED, ctypes.byref(iov), 1)  # TRY_AGAIN under flow control
        lib.cpg_dispatch(handle, CS_DISPATCH_ALL)
        time.sleep(0.01)  # a steady message rate, not a measured interval


if __name__ == "__main__":
    traffic(float(sys.argv[1]))
