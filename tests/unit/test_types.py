"""Types as a checked contract (issue 27 #4): mypy --strict passes on the pure
core and on the ports everything else is built against: the store, the clock,
the probes, the event recorder and the datagram network; and pyflakes finds no
undefined or unused name anywhere in the product or the benches (a module split
once left a name behind that only a run reached). mypy and pyflakes come with
the test extras (pyproject.toml); without them this test fails, it does not skip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PORTS = ["vigil/store/base.py", "vigil/clock.py", "vigil/probes/base.py", "vigil/store/events.py",
         "vigil/net/transport.py"]


def mypy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports",
                           "--cache-dir", str(tmp_path / "cache"), *args],
                          cwd=SRC, capture_output=True, text=True, timeout=300)


def test_the_core_and_the_ports_pass_mypy_strict(tmp_path):
    core = mypy(tmp_path, "-p", "vigil.core")
    assert core.returncode == 0, core.stdout + core.stderr
    ports = mypy(tmp_path, "--follow-imports=silent", *PORTS)
    assert ports.returncode == 0, ports.stdout + ports.stderr


def test_mypy_would_catch_a_type_error_in_the_core(tmp_path):
    """The check is live: a core module that returns the wrong type fails it."""
    bad = tmp_path / "bad_core.py"
    bad.write_text("def reason(n: int) -> str:\n    return n\n")
    r = mypy(tmp_path, str(bad))
    assert r.returncode == 1 and "Incompatible return value type" in r.stdout, r.stdout


def test_pyflakes_finds_no_undefined_or_unused_name():
    r = subprocess.run([sys.executable, "-m", "pyflakes", "src/vigil", "bench"], cwd=SRC.parent,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
