"""vigil.testing.machines: real systemd machines (systemd-nspawn) on a host bridge.

Two machines boot from the cached Debian root, reach each other and a client
namespace, keep what was written to them across a power-off, die at once on a
crash, and leave no bridge, namespace, mount or cgroup behind, also when the
`with` block fails. Needs root, debootstrap and systemd-container (a missing
one fails the test); the first run builds the root (about a minute)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vigil.testing.machines import Machines, debian_mirror, ensure_rootfs, sweep_stale

SUBNET = "10.231.41"  # not the default 10.231.40, which a deployment test may be using
# One ICMP echo with a raw socket: the host has no ping binary.
PING = """
import socket, struct, sys
def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b)); s = (s >> 16) + (s & 0xffff)
    return ~(s + (s >> 16)) & 0xffff
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); sock.settimeout(2)
body = struct.pack("!HH", 0x5647, 1) + b"vigil-ping"
sock.sendto(struct.pack("!BBH", 8, 0, csum(b"\\x08\\x00\\x00\\x00" + body)) + body, (sys.argv[1], 0))
while True:
    data, (src, _) = sock.recvfrom(1500)
    if src == sys.argv[1] and data[20] == 0 and data[24:26] == b"\\x56\\x47":
        break
"""


def _leftovers(tag: str, workdir: Path) -> list[str]:
    """What a run tagged `tag` left on the host: links (bridge, veths), netns, mounts, cgroups."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found = [f"link {name}" for name in re.findall(r"^\d+: ([^:@]+)", links, re.M) if tag in name]
    found += [f"netns {ns}" for ns in netns.split() if tag in ns]
    found += [f"mount {line.split()[1]}" for line in Path("/proc/mounts").read_text().splitlines()
              if str(workdir) in line]
    found += [f"cgroup {d}" for d in Path("/sys/fs/cgroup").glob(f"**/vigil-test/{tag}.*")]
    return found + ([f"workdir {workdir}"] if workdir.exists() else [])


def _alive(pid: int) -> bool:
    """Running or stopped, not a zombie waiting for the host's PID 1 to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] not in "ZX"
    except OSError:
        return False


@pytest.fixture(scope="module")
def root() -> Path:
    assert os.geteuid() == 0, "booting machines needs root"
    return ensure_rootfs()  # fails (never skips) without debootstrap or the host's Debian mirror


def test_two_machines_boot_talk_persist_and_crash(root):
    t = time.monotonic()
    assert ensure_rootfs() == root and time.monotonic() - t < 1.0  # cached
    lower = sorted(os.listdir(root / "etc"))
    timings = {}
    with Machines(root, subnet=SUBNET) as ms:
        t = time.monotonic()
        n1, n2 = ms.boot_all([("n1", 1), ("n2", 2)])
        timings["boot 2"] = time.monotonic() - t
        for m in (n1, n2):
            assert m.run("systemctl is-system-running", check=False).stdout.strip() in (
                "running", "degraded"), m.run("systemctl --failed --no-pager", check=False).stdout
            assert m.run("hostname").stdout.strip() == m.name
        n1.run(["ping", "-c1", "-W2", n2.address])
        n1.run(["ping", "-c1", "-W2", "n2"])  # /etc/hosts names every machine
        client = ms.client()
        client.run([sys.executable, "-c", PING, n2.address], timeout=10)

        n1.put("/etc/vigil/marker", b"kept\n", 0o640)
        t = time.monotonic()
        n1.poweroff()
        timings["poweroff"] = time.monotonic() - t
        assert n1.proc.returncode is not None and not n1.running and n1.processes() == []
        t = time.monotonic()
        assert ms.boot("n1", 1) is n1 and n1.state in ("running", "degraded")
        timings["boot again"] = time.monotonic() - t
        assert n1.run("stat -c %a /etc/vigil/marker; cat /etc/vigil/marker").stdout == "640\nkept\n"
        n1.run(["ping", "-c1", "-W2", n2.address])  # its address came back with it

        pids, journald = n2.processes(), n2.pid_of("systemd-journald.service")
        assert journald in pids and len(pids) > 3
        t = time.monotonic()
        n2.crash()
        timings["crash"] = time.monotonic() - t
        assert not n2.running and [p for p in pids if _alive(p)] == []
        assert n1.run(["ping", "-c1", "-W1", n2.address], check=False).returncode != 0
        t = time.monotonic()
    timings["close"] = time.monotonic() - t
    print("machines:", {k: round(v, 2) for k, v in timings.items()})
    assert _leftovers(ms.tag, ms.workdir) == []
    assert sorted(os.listdir(root / "etc")) == lower and not (root / "etc/machine-id").exists()


def test_a_failing_block_still_cleans_up(root):
    with pytest.raises(RuntimeError, match="boom"):
        with Machines(root, subnet=SUBNET) as ms:
            ms.boot("n1", 1)
            ms.client()
            raise RuntimeError("boom")
    assert _leftovers(ms.tag, ms.workdir) == []


KILLED_RUN = """
import json, sys
from pathlib import Path
from vigil.testing.machines import Machines
ms = Machines(Path(sys.argv[1]), subnet=sys.argv[2])
n1 = ms.boot("n1", 1)
ms.client()
print(json.dumps({"tag": ms.tag, "workdir": str(ms.workdir), "init": n1.init_pid}), flush=True)
sys.stdin.read()  # until killed
"""


def test_a_killed_run_is_swept_by_the_next(root):
    """SIGKILL skips every cleanup: the machine lives on, orphaned, until sweep_stale."""
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(root), SUBNET],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        run = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait()
    assert _alive(run["init"]) and _leftovers(run["tag"], Path(run["workdir"]))
    sweep_stale()
    assert not _alive(run["init"])
    assert _leftovers(run["tag"], Path(run["workdir"])) == []


def test_the_mirror_comes_from_the_hosts_apt_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("VIGIL_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n"
        "# a comment\nTypes: deb deb-src\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb [arch=amd64] http://list.example/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://list.example/debian"
    monkeypatch.setenv("VIGIL_DEBIAN_MIRROR", "http://env.example/debian")
    assert debian_mirror(tmp_path) == "http://env.example/debian"
