#!/usr/bin/env bash
# The whole test suite: installs what it needs, starts its own etcd members
# and agents on loopback, and stops them again. Run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
