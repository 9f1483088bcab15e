"""The Prometheus rules Vigil ships (vigil/alerts): `promtool check rules`
accepts them, `promtool test rules` runs their unit tests (each alert fires
when it should and only then), and every metric they read is one the agent
exports. promtool comes from Debian's prometheus package (scripts/install.sh):
without it this test fails, it does not skip."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

import vigil.agent.status
from vigil.alerts import RULES, TESTS


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: scripts/install.sh installs Debian's prometheus package"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent)


def test_promtool_checks_the_rules_and_passes_their_unit_tests():
    check = promtool("check", "rules", RULES.name)
    assert check.returncode == 0 and "SUCCESS: 15 rules found" in check.stdout, check.stdout + check.stderr
    tested = promtool("test", "rules", TESTS.name)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_is_tested_and_every_metric_read_is_exported():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t["alert_rule_test"] if a["exp_alerts"]}
    quiet = {a["alertname"] for t in tests for a in t["alert_rule_test"] if not a["exp_alerts"]}
    assert alerts == fired, f"alerts never seen firing in the tests: {alerts - fired}"
    assert alerts - {"VigilCertificateExpiring", "VigilCertificateExpiringSoon", "VigilFencingFailed"} <= quiet, \
        "and seen quiet where they must be"
    read = {m.removesuffix("_total") for g in groups for r in g["rules"]  # a counter's samples end in _total
            for m in re.findall(r"\bvigil_[a-z_]+", r["expr"])}
    source = Path(vigil.agent.status.__file__).read_text()
    exported = set(re.findall(r'MetricFamily\(\s*"(vigil_[a-z_]+)"', source))
    exported |= set(re.findall(r'\("(vigil_[a-z_]+)", "', source))  # the gauges built in a loop
    assert read and read <= exported, f"rules read metrics the agent does not export: {read - exported}"
