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
import stat
import subprocess
from pathlib import Path

from vigil.deploy.bundle import ETC, Bundle
from vigil.errors import ConfigError, VigilError
from vigil.files import write_atomic

MANIFEST = "MANIFEST"
OWNER_PACKAGES = {"etcd": "etcd-server"}
INSTALLED = ".installed-bundle"  # in /etc/vigil: the paths the last install put in place
# Where a bundle may write (vigil.deploy.bundle): nothing else, whatever its MANIFEST says.
ALLOWED_DIRS = ("/etc/vigil/", "/etc/etcd/vigil/")
ALLOWED_FILES = {"/etc/default/etcd", "/etc/sudoers.d/vigil-operators"}


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


def _allowed_path(path: str) -> bool:
    return path in ALLOWED_FILES or any(path.startswith(d) for d in ALLOWED_DIRS)


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
        if not _allowed_path(parts[2]):
            raise ConfigError(f"{MANIFEST} line {i}", parts[2], f"is not a path a bundle writes (under "
                                                                f"{', '.join(ALLOWED_DIRS)} or one of "
                                                                f"{', '.join(sorted(ALLOWED_FILES))})")
        if mode & ~0o755 or parts[1] not in OWNER_PACKAGES and parts[1] != "root":
            raise ConfigError(f"{MANIFEST} line {i}", line[:200], "a bundle's files are owned by root or etcd, "
                                                                  "writable by their owner only, never set-id")
        out[parts[2]] = (mode, parts[1])
    return out


def install(src: Path, root: Path = Path("/")) -> list[str]:
    """Put the bundle at `src` in place under `root`; the paths changed (written or
    removed). Every file is read first, so a bundle with one bad entry installs
    nothing; the sudoers drop-in goes last, after the files its commands use."""
    manifest = _manifest(src)
    owners = {owner: _uid(owner) for _, owner in manifest.values()}
    files = {path: _read_source(src, path) for path in manifest}
    etc = root / ETC.relative_to("/")
    etc.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(etc, 0o700)
    changed = []
    for path in sorted(manifest, key=lambda p: p.startswith("/etc/sudoers.d/")):
        (mode, owner), data, dest = manifest[path], files[path], root / path.lstrip("/")
        if _same(dest, data, mode, owners[owner]):
            continue
        if path.startswith("/etc/sudoers.d/"):
            _check_sudoers(src / path.lstrip("/"))
        _parent(dest, root, owners[owner])
        write_atomic(dest, data, mode)
        os.chown(dest, owners[owner], -1)
        changed.append(path)
    changed += _remove_dropped(etc / INSTALLED, set(manifest), root)
    write_atomic(etc / INSTALLED, "".join(f"{p}\n" for p in sorted(manifest)), 0o600)
    return changed


def _read_source(src: Path, path: str) -> bytes:
    """A bundle file's bytes: a regular file inside the bundle, never through a link
    (a link at etc/default/etcd to /etc/shadow would install a readable copy)."""
    f = src / path.lstrip("/")
    try:
        inside = f.resolve().is_relative_to(src.resolve()) and f.resolve() == f.absolute()
        if not inside or not stat.S_ISREG(os.lstat(f).st_mode):
            raise ConfigError("bundle", str(f), "is a link or not a regular file: give the bundle `vigil init` "
                                                "wrote, copied as it is")
        fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise ConfigError("bundle", str(f), f"cannot be read ({e.strerror}): copy the whole bundle") from None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _remove_dropped(record: Path, now: set[str], root: Path) -> list[str]:
    """Remove the files an earlier install of a bundle put here that this one no longer
    has (a removed node's BMC password), and only such files."""
    try:
        before = set(record.read_text().split())
    except OSError:
        return []
    gone = []
    for path in sorted(before - now):
        if _allowed_path(path):
            (root / path.lstrip("/")).unlink(missing_ok=True)
            gone.append(path)
    return gone


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
