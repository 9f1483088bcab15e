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
pytest=(.venv/bin/python -m pytest -q -p no:cacheprovider)
if [[ $# -gt 0 ]]; then
  exec "${pytest[@]}" --durations=25 "$@"
fi
# Three phases. The tests that start no lab (unit, fuzz, simulation,
# conformance) are CPU-bound or wait on their own sockets, and run on both
# cores at once (pytest-xdist: 225 s -> 110 s here). Lab tests that assert
# no timing (tests/integration/conftest.py: SHARES_CPU; their waits are generous
# enough for a shared CPU, the package build's included) run two at once too. Every other integration and system test times real
# failovers, so they run one at a time, never competing for the CPU.
for dir in tests/*/; do  # a new test directory must be in a phase, never left out
  case $dir in
    tests/unit/|tests/fuzz/|tests/sim/|tests/conformance/|tests/integration/|tests/system/) ;;
    tests/generative/|tests/scale/|tests/__pycache__/) ;;
    *) echo "scripts/test.sh: $dir is in no phase of the suite; add it to one" >&2; exit 2 ;;
  esac
done
lab_free=0 shared=0 labs=0  # every phase runs, so one report names every failure
"${pytest[@]}" -n 2 --durations=10 tests/unit tests/fuzz tests/sim tests/conformance || lab_free=$?
# Lab tests that assert no timing, two at a time (tests/integration/conftest.py: SHARES_CPU);
# then every other lab test alone.
"${pytest[@]}" -n 2 --dist loadfile --durations=10 -m shares_cpu tests/integration tests/system || shared=$?
"${pytest[@]}" --durations=25 -m "not shares_cpu" tests/integration tests/system || labs=$?
echo "scripts/test.sh: lab-free tests exit $lab_free, shared lab tests exit $shared, lab tests exit $labs"
exit $(( lab_free != 0 ? lab_free : shared != 0 ? shared : labs ))
