#!/usr/bin/env bash
# The whole test suite: installs what it needs, starts its own etcd members
# and agents on loopback, and stops them again. Run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
# --generative: also the tests of the real generative model (tests/generative),
# after installing it (a source build of llama.cpp: minutes). Without it they
# are left out by name, not skipped: the rest use the reference model.
# --scale: the scale tests alone (tests/scale: 30 agents in namespaces, about a
# minute on 2 cores), left out of the default run by name, not skipped.
if [[ ${1:-} == --generative ]]; then
  shift
  bash scripts/install.sh --generative
  exec .venv/bin/python -m pytest -q -p no:cacheprovider tests --ignore=tests/scale "$@"
fi
if [[ ${1:-} == --scale ]]; then
  shift
  bash scripts/install.sh
  exec .venv/bin/python -m pytest -q -p no:cacheprovider tests/scale "$@"
fi
bash scripts/install.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 tests --ignore=tests/generative \
  --ignore=tests/scale "$@"
