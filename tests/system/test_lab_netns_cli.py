"""Issue 10 #4: `vigil lab up --netns` as an operator runs it (root): every
node in its own namespace, a client namespace, the VIP held by the leader;
lab.json names them; `vigil lab down` removes every namespace it made, and a
lab that cannot start leaves none behind."""

from __future__ import annotations

import json
import subprocess
import sys

from vigil.procs import wait_for


def vigil(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vigil", *args], capture_output=True, text=True, timeout=timeout)


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_lab_up_in_namespaces_and_down_removes_them(tmp_path):
    before = namespaces()
    d = tmp_path / "lab"
    up = vigil("lab", "up", "--netns", "--nodes", "3", "--dir", str(d), "--no-model")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        doc = json.loads((d / "lab.json").read_text())
        tag = doc["netns"]["tag"]
        made = {f"{tag}-n{i}" for i in (1, 2, 3)} | {f"{tag}-c", f"{tag}-sw"}
        assert made <= namespaces() and doc["client_netns"] == f"{tag}-c"
        assert doc["vip"]["address"] == "10.231.0.200/24" and all(n["netns"] for n in doc["nodes"])
        status = subprocess.run(["ip", "netns", "exec", doc["client_netns"], sys.executable, "-m", "vigil",
                                 "status", "--json", "--lab", str(d)], capture_output=True, text=True, timeout=60)
        leader = json.loads(status.stdout)["leader"]["name"]  # from the client namespace, as documented
        holders = wait_for(lambda: _holders(doc) or None, 15, "a node holding the VIP")
        assert holders == [leader], (holders, leader)
    finally:
        down = vigil("lab", "down", "--dir", str(d))
    assert down.returncode == 0, down.stderr[-2000:]
    assert namespaces() == before and not (d / "lab.json").exists()


def test_a_lab_that_cannot_start_leaves_no_namespace(tmp_path):
    before = namespaces()
    bad = vigil("lab", "up", "--netns", "--nodes", "2", "--dir", str(tmp_path / "x"), "--no-model")
    assert bad.returncode == 2 and "--nodes" in bad.stderr and "3 to 32" in bad.stderr
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "lab.json").write_text("{}")  # a lab is already there: refused after the namespaces exist
    taken = vigil("lab", "up", "--netns", "--nodes", "3", "--dir", str(tmp_path / "y"), "--no-model")
    assert taken.returncode != 0 and "lab.json exists" in taken.stderr
    assert namespaces() == before


def _holders(doc: dict) -> list[str]:
    return [n["name"] for n in doc["nodes"]
            if "10.231.0.200/" in subprocess.run(["ip", "-n", n["netns"], "addr", "show", "eth0"],
                                                 capture_output=True, text=True, timeout=20).stdout]
