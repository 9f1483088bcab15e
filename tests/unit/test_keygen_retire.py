"""`vigil keygen --retire` (issue 22 B-L10): retiring a key id the node does not
have is an error that changes nothing, not a success message."""

from __future__ import annotations

import subprocess
import sys


def keygen(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vigil", "keygen", "--key-file", str(tmp_path / "n1.key"),
                           "--keyring", str(tmp_path / "ring"), *args], capture_output=True, text=True, timeout=60)


def test_retiring_an_absent_key_fails_and_changes_nothing(tmp_path):
    assert keygen(tmp_path, "--node", "n1").returncode == 0  # key 1, signing with it
    assert keygen(tmp_path).returncode == 0  # key 2
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    r = keygen(tmp_path, "--retire", "7")
    assert r.returncode == 2 and "has no key 7" in r.stderr and "[1, 2]" in r.stderr, r.stderr
    assert "retired" not in r.stdout and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, "nothing was changed"
    r = keygen(tmp_path, "--retire", "2")
    assert r.returncode == 0 and "key 2 retired" in r.stdout, r.stderr
    assert keygen(tmp_path, "--retire", "2").returncode == 2, "retired twice: the second time is an error"
