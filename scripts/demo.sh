#!/usr/bin/env bash
# The demo: a 3-node cluster (etcd, agents, real model servers, router) under
# load through four faults; writes demo-report.json and demo-timeline.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/vigil demo "$@"
