#!/usr/bin/env bash
# The demo: a 3-node cluster on loopback, the leader's agent SIGKILLed, a new
# leader with a higher fencing token, the event log that explains it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m vigil.lab.demo "$@"
