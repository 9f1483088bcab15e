"""Prometheus alerting and recording rules for Vigil (vigil-rules.yml), their
promtool unit tests (vigil-rules.test.yml), and where they are: `vigil
alerts` prints the rules for /etc/prometheus/rules/."""

from __future__ import annotations

from pathlib import Path

RULES = Path(__file__).with_name("vigil-rules.yml")
TESTS = Path(__file__).with_name("vigil-rules.test.yml")
