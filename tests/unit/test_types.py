"""Types as a checked contract (issue 27 #4): mypy --strict passes on the pure
core and on the ports everything else is built against: the store, the clock,
the probes, the event recorder and the datagram network; on the renderers of
the agent's and the router's status and metrics, which read only their typed
views (AgentState, RouterState: an `Any` back-reference to the Agent or the
Router there fails the check); and pyflakes finds no
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
VIEWS = ["vigil/agent/status.py", "vigil/router/metrics.py"]  # renderers of a typed view


def mypy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports",
                           "--cache-dir", str(tmp_path / "cache"), *args],
                          cwd=SRC, capture_output=True, text=True, timeout=300)


def test_the_core_and_the_ports_pass_mypy_strict(tmp_path):
    core = mypy(tmp_path, "-p", "vigil.core")
    assert core.returncode == 0, core.stdout + core.stderr
    ports = mypy(tmp_path, "--follow-imports=silent", *PORTS)
    assert ports.returncode == 0, ports.stdout + ports.stderr


def test_the_status_and_metrics_renderers_pass_mypy_strict(tmp_path):
    views = mypy(tmp_path, "--follow-imports=silent", *VIEWS)
    assert views.returncode == 0, views.stdout + views.stderr


def test_mypy_would_catch_a_renderer_reading_past_its_view(tmp_path):
    """The views are the whole contract: reaching for a part of the Agent through
    the view (the duck-typed reader this replaced) fails the check."""
    bad = tmp_path / "bad_renderer.py"
    bad.write_text("from vigil.agent.status import AgentState\n\n\n"
                   "def longest(a: AgentState) -> float:\n    return a.heartbeats.watch.guard.longest\n")
    r = mypy(tmp_path, "--follow-imports=silent", str(bad))
    assert r.returncode == 1 and '"AgentState" has no attribute "heartbeats"' in r.stdout, r.stdout


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
