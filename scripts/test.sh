#!/usr/bin/env bash
# The whole test suite: installs what it needs, starts its own etcd members
# and agents on loopback, and stops them again. Run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
# --generative: also the tests of the real generative model (tests/generative),
# after installing it (a source build of llama.cpp: minutes). Without it they
# are left out by name, not skipped: the rest use the reference model.
if [[ ${1:-} == --generative ]]; then
  shift
  bash scripts/install.sh --generative
  exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
fi
bash scripts/install.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 tests --ignore=tests/generative "$@"
