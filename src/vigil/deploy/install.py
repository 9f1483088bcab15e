"""Writing bundles out (`vigil init`) and putting one in place on its machine
(`vigil install-bundle`).

A bundle directory holds its files laid out as they go on the machine
(etc/vigil/..., etc/default/etcd) and MANIFEST, one `MODE OWNER PATH` line per file. Contract of `install`:
every file is written atomically with its mode and owner (write_atomic, then
chown), only when its bytes, mode or owner differ; /etc/vigil is root 0700;
a sudoers drop-in is checked with `visudo -cf` first and never installed
broken; an owner that does not exist on the machine (etcd before
etcd-server is installed) is an InstallError naming the package. Returns
the paths it changed, so the caller knows whether to reload the agent.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from vigil.deploy.bundle import ETC, Bundle
from vigil.errors import ConfigError, VigilError
from vigil.files import write_atomic

MANIFEST = "MANIFEST"
OWNER_PACKAGES = {"etcd": "etcd-server"}


class InstallError(VigilError):
    """A bundle could not be put in place (the machine lacks something)."""


def write_bundle(bundle: Bundle, dest: Path) -> list[str]:
    """Write `bundle` to `dest` (replacing what was there); the paths whose bytes,
    mode or owner changed since the bundle last written there."""
    before = _manifest(dest) if (dest / MANIFEST).exists() else {}
    old = {p: (before[p], (dest / p.lstrip("/")).read_bytes()) for p in before}
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(mode=0o700, parents=True)  # it holds keys and passwords
    lines, changed = [], []
    for path, (data, mode, owner) in sorted(bundle.files.items()):
        write_atomic(dest / path.lstrip("/"), data, 0o600)
        lines.append(f"{mode:o} {owner} {path}\n")
        if old.get(path) != ((mode, owner), data):
            changed.append(path)
    write_atomic(dest / MANIFEST, "".join(lines), 0o600)
    return changed + sorted(set(old) - set(bundle.files))


def _manifest(src: Path) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    try:
        text = (src / MANIFEST).read_text()
    except OSError as e:
        raise ConfigError("bundle", str(src), f"has no readable {MANIFEST} ({e.strerror}): give the directory "
                                              "`vigil init` wrote for this machine (OUT/NAME)") from None
    for i, line in enumerate(text.splitlines(), 1):
        parts = line.split(" ", 2)
        if len(parts) != 3 or not parts[2].startswith("/") or ".." in parts[2].split("/"):
            raise ConfigError(f"{MANIFEST} line {i}", line[:200], "must be `MODE OWNER /absolute/path`")
        try:
            mode = int(parts[0], 8)
        except ValueError:
            raise ConfigError(f"{MANIFEST} line {i}", parts[0], "the mode must be octal, e.g. 600") from None
        out[parts[2]] = (mode, parts[1])
    return out


def install(src: Path, root: Path = Path("/")) -> list[str]:
    """Put the bundle at `src` in place under `root`; the paths changed."""
    manifest = _manifest(src)
    owners = {owner: _uid(owner) for _, owner in manifest.values()}
    (root / ETC.relative_to("/")).mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root / ETC.relative_to("/"), 0o700)
    changed = []
    for path, (mode, owner) in manifest.items():
        data = (src / path.lstrip("/")).read_bytes()
        dest = root / path.lstrip("/")
        if _same(dest, data, mode, owners[owner]):
            continue
        if path.startswith("/etc/sudoers.d/"):
            _check_sudoers(src / path.lstrip("/"))
        _parent(dest, root, owners[owner])
        write_atomic(dest, data, mode)
        os.chown(dest, owners[owner], -1)
        changed.append(path)
    return changed


def _uid(owner: str) -> int:
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        pkg = OWNER_PACKAGES.get(owner, owner)
        raise InstallError(f"user {owner!r} does not exist on this machine: install {pkg} first "
                           f"(`apt-get install {pkg}`), then run install-bundle again") from None


def _same(dest: Path, data: bytes, mode: int, uid: int) -> bool:
    try:
        st = dest.stat()
        return st.st_mode & 0o7777 == mode and st.st_uid == uid and dest.read_bytes() == data
    except OSError:
        return False


def _parent(dest: Path, root: Path, uid: int) -> None:
    """Create missing parent directories: private (0700) under /etc/vigil, and
    the file's own directory when the file is another user's (etcd's), owned by
    that user; traversable (0755) elsewhere, so that user can reach it."""
    etc = root / ETC.relative_to("/")
    for p in [p for p in reversed(dest.parents) if not p.exists()]:
        own = uid != 0 and p == dest.parent
        p.mkdir(mode=0o700 if own or etc in (p, *p.parents) else 0o755)
        if own:
            os.chown(p, uid, -1)


def _check_sudoers(path: Path) -> None:
    visudo = shutil.which("visudo")
    if visudo is None:
        return  # no sudo on this machine: the drop-in is inert until it is installed
    r = subprocess.run([visudo, "-cf", str(path)], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise InstallError(f"the sudoers drop-in does not parse, nothing of it installed: {r.stdout}{r.stderr}")
