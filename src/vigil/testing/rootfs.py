"""The Debian 12 root file system the deployment tests boot their machines from
(vigil.testing.machines): built once with debootstrap, cached, never written
afterwards; and the small host-command helpers both modules use.

Contract of `ensure_rootfs(cache, packages)`: a bookworm root built with
`debootstrap --variant=minbase --include=...` (the mirror read from the
host's apt sources at run time, or $VIGIL_DEBIAN_MIRROR) into a temp dir under
`cache`, configured (etcd/haproxy not autostarted, systemd-networkd on, no
machine-id, no apt cache) and renamed to `bookworm-<hash of recipe+packages>`:
only a finished root ever has that name. An flock serialises builders (and
debootstrap inherits it); a cached root is returned at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

SUITE = "bookworm"
RECIPE = "v3"  # bump when the root's configuration below changes
DEFAULT_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "iproute2", "iputils-ping", "ca-certificates", "python3",
    "nftables", "ipmitool", "etcd-server", "etcd-client", "curl", "procps", "adduser", "haproxy",
    "openssl")
# Not started at boot: etcd/haproxy (a test enables them after writing their configuration),
# and the periodic jobs that would only add noise (apt can reach no mirror from a machine).
NO_AUTOSTART = ("etcd.service", "haproxy.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                "dpkg-db-backup.timer", "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer")

class MachineError(RuntimeError):
    pass


def wait_for(cond: Callable[[], object], timeout: float, what: str, poll: float = 0.1) -> object:
    """Poll `cond` until truthy; return its value, or raise MachineError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() >= deadline:
            raise MachineError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
    return value


def _sh(*cmd: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode:
        raise MachineError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not path:
        raise MachineError(f"{name} is not installed (scripts/install.sh installs it)")
    return path


def debian_mirror(apt: Path = Path("/etc/apt")) -> str:
    """$VIGIL_DEBIAN_MIRROR, else the host's mirror for SUITE from its apt sources."""
    if mirror := os.environ.get("VIGIL_DEBIAN_MIRROR"):
        return mirror
    for f in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        for line in f.read_text().splitlines() if f.exists() else []:
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m and m.group(2) == SUITE:
                return m.group(1)
    for f in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                return fields["URIs"].split()[0]
    raise MachineError(f"no Debian {SUITE} mirror in {apt}/sources.list[.d]")


def _unmount_under(path: Path) -> None:
    """Unmount (lazily, deepest first) everything mounted at or below `path`."""
    prefix = str(path.resolve())
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m == prefix or m.startswith(prefix + "/")), reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True, timeout=30)


def ensure_rootfs(cache: Path = Path("/var/cache/vigil-test"),
                  packages: Sequence[str] = DEFAULT_PACKAGES) -> Path:
    """The cached bookworm root for `packages`, built now if missing (see module doc)."""
    pkgs = sorted(set(packages))
    key = hashlib.sha256("\n".join([SUITE, "minbase", RECIPE, *pkgs]).encode()).hexdigest()[:12]
    final = cache / f"{SUITE}-{key}"
    if final.is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():  # another process built it while we waited
            return final
        for stale in cache.glob(f".build-{final.name}-*"):  # an interrupted build
            _unmount_under(stale)
            shutil.rmtree(stale, ignore_errors=True)
        build = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=cache))
        build.chmod(0o755)  # it becomes the machines' "/"
        try:
            _debootstrap(build, pkgs, cache / "debs", lock.fileno())
            os.sync()  # the root's files are on disk before its name is
            os.rename(build, final)
        except BaseException:
            _unmount_under(build)
            shutil.rmtree(build, ignore_errors=True)
            raise
    return final


def _debootstrap(target: Path, pkgs: list[str], debs: Path, lock_fd: int) -> None:
    started = time.monotonic()
    debs.mkdir(exist_ok=True)
    # debootstrap inherits the lock: if we are killed, the next builder waits for it to end
    _sh(_tool("debootstrap"), "--variant=minbase", f"--include={','.join(pkgs)}",
        f"--cache-dir={debs}", SUITE, str(target), debian_mirror(), timeout=1800,
        pass_fds=(lock_fd,))
    systemctl = ["systemctl", f"--root={target}"]
    _sh(*systemctl, "disable", *(u for u in NO_AUTOSTART if (target / "lib/systemd/system" / u).exists()))
    _sh(*systemctl, "enable", "systemd-networkd.service")
    for junk in ("etc/machine-id", "var/lib/dbus/machine-id"):
        (target / junk).unlink(missing_ok=True)
    (target / "etc/resolv.conf").write_text("# no DNS: names are in /etc/hosts\n")  # not the host's
    for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (target / d).glob("*"):
            if f.is_file():
                f.unlink()
    (target / "etc/vigil-rootfs.json").write_text(json.dumps(
        {"suite": SUITE, "recipe": RECIPE, "packages": pkgs,
         "build_s": round(time.monotonic() - started, 1)}) + "\n")

