"""A real Prometheus server (Debian's `prometheus`) for tests: scrapes the
given agents' /metrics (http, or https behind a token) every second with Vigil's rules loaded, on
127.0.0.1, with its data in a temporary folder; `alerts()` reads what fires.
Stopped (by PID) and its folder removed on `stop()`, whatever happened."""

from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from vigil import procs
from vigil.alerts import RULES

if TYPE_CHECKING:
    from vigil.lab import Lab


class Prometheus:
    def __init__(self, targets: list[str], cluster: str = "lab", tls: tuple[str, str] | None = None):
        """`targets`: host:port of each agent's API (its /metrics); `tls`: (CA file,
        bearer token file) where the APIs serve https behind a token."""
        self.dir = Path(tempfile.mkdtemp(prefix="vigil-prometheus-"))
        self._up_at: float | None = None  # when every target was first seen up
        (self.port,) = procs.free_ports(1)
        scrape: dict = {"job_name": "vigil-agent", "static_configs": [
            {"targets": targets, "labels": {"cluster": cluster}}]}
        if tls:
            scrape |= {"scheme": "https", "tls_config": {"ca_file": tls[0]},
                       "authorization": {"type": "Bearer", "credentials_file": tls[1]}}
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(RULES)], "scrape_configs": [scrape]}
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus is not installed (scripts/install.sh installs Debian's)")
        self.log = open(self.dir / "prometheus.log", "w")
        self.proc = subprocess.Popen([binary, f"--config.file={self.dir / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={self.dir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    @classmethod
    def for_lab(cls, lab: "Lab") -> "Prometheus":
        """One scraping every agent of a `vigil.lab.Lab` (over TLS, with the harness's
        token, on a secure lab)."""
        tls = lab.root / "tls"
        return cls([n.api_url.split("://", 1)[1] for n in lab.nodes],
                   tls=(str(tls / "ca.pem"), str(tls / "harness.api-token")) if lab.etcd.tls else None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=2) as r:
            return json.load(r)

    def ready(self) -> bool:
        """Every target scraped and up, and the rules evaluated since: an evaluation
        over a partial first scrape (one agent's vigil_leader 0, the leader's not yet
        in) may leave an alert pending that the next one clears."""
        try:
            targets = self.get("/api/v1/targets")["data"]["activeTargets"]
            groups = self.get("/api/v1/rules")["data"]["groups"]
        except OSError:
            return False
        if not targets or not all(t["health"] == "up" for t in targets):
            return False
        if self._up_at is None:
            self._up_at = time.time()
        return bool(groups) and all(_seconds(g.get("lastEvaluation", "")) > self._up_at for g in groups)

    def alerts(self, state: str = "firing") -> list[dict]:
        """The alerts in `state` (firing or pending), each {labels, annotations, ...}."""
        try:
            found = self.get("/api/v1/alerts")["data"]["alerts"]
        except OSError:
            return []
        return [a for a in found if a["state"] == state]

    def pending(self, alert: str) -> list[dict]:
        """The labels of each pending instance of `alert` (its expression holds, its
        `for` not yet over)."""
        return [a["labels"] for a in self.alerts("pending") if a["labels"]["alertname"] == alert]

    def names(self, state: str = "firing") -> set[str]:
        """The names of the alerts in `state`."""
        return {a["labels"]["alertname"] for a in self.alerts(state)}

    def stop(self) -> None:
        procs.stop(self.proc.pid, "prometheus")
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _seconds(stamp: str) -> float:
    """Prometheus's RFC 3339 time (nanoseconds; Z or the host's offset, Go's local
    time) as a Unix time; 0.0 if unreadable."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", stamp)
    if not m:
        return 0.0
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.datetime.fromisoformat(m.group(1) + zone).timestamp() + float(m.group(2) or 0)
