"""A real Prometheus server (Debian's `prometheus`) for tests: scrapes the
given agents' /metrics every second with Vigil's rules loaded, on
127.0.0.1, with its data in a temporary folder; `alerts()` reads what fires.
Stopped (by PID) and its folder removed on `stop()`, whatever happened."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import yaml

from vigil import procs
from vigil.alerts import RULES


class Prometheus:
    def __init__(self, targets: list[str], cluster: str = "lab"):
        """`targets`: host:port of each agent's API (its /metrics)."""
        self.dir = Path(tempfile.mkdtemp(prefix="vigil-prometheus-"))
        (self.port,) = procs.free_ports(1)
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(RULES)],
                  "scrape_configs": [{"job_name": "vigil-agent", "static_configs": [
                      {"targets": targets, "labels": {"cluster": cluster}}]}]}
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus is not installed (scripts/install.sh installs Debian's)")
        self.log = open(self.dir / "prometheus.log", "w")
        self.proc = subprocess.Popen([binary, f"--config.file={self.dir / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={self.dir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=2) as r:
            return json.load(r)

    def ready(self) -> bool:
        """Every target scraped at least once and up."""
        try:
            targets = self.get("/api/v1/targets")["data"]["activeTargets"]
        except OSError:
            return False
        return bool(targets) and all(t["health"] == "up" for t in targets)

    def alerts(self, state: str = "firing") -> list[dict]:
        """The alerts in `state` (firing or pending), each {labels, annotations, ...}."""
        try:
            found = self.get("/api/v1/alerts")["data"]["alerts"]
        except OSError:
            return []
        return [a for a in found if a["state"] == state]

    def stop(self) -> None:
        procs.stop(self.proc.pid, "prometheus")
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
