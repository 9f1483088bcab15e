"""Configuration files: reading them, and refusing those someone other than
root (or the user Vigil runs as) could change or replace, and secrets others
could read (the agent runs `inference.command` as root and acts on keys and
BMC passwords, so whoever may write these files owns the node). Errors never
quote a file's contents: a YAML error names the line and column only."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import yaml

from vigil.errors import ConfigError


def read_yaml(path: str | Path) -> Any:
    """The parsed YAML of a configuration file. Raises ConfigError."""
    p = Path(path)
    try:
        check_owner(p, "config file")
        return yaml.safe_load(p.read_text())
    except OSError as e:
        raise ConfigError("config file", str(p), f"cannot be read ({e.strerror}); check the path") from None
    except yaml.YAMLError as e:
        raise ConfigError("config file", str(p), f"is not valid YAML: {yaml_problem(e)}") from None


def load_yaml(text: str) -> Any:
    """yaml.safe_load, with libyaml's parser where it is installed: the same
    documents, about 10x faster (a key ring of 1,000 nodes is read by every
    agent at start). Raises yaml.YAMLError."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def yaml_problem(e: yaml.YAMLError) -> str:
    """What is wrong and where, without PyYAML's quote of the lines around it (a
    password on one of them would be printed)."""
    if not isinstance(e, yaml.MarkedYAMLError):
        return type(e).__name__
    mark = e.problem_mark or e.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return "; ".join(x for x in (e.context, e.problem) if x) + where


def check_owner(path: Path, field: str, secret: bool = False) -> None:
    """Refuse a file that someone other than root (or, running as another user,
    that user) could change, or replace through its directory: the agent runs
    `inference.command` as root and acts on keys and BMC passwords, so whoever
    may write these files owns the machine. A `secret` (a signing key, a
    password or token file, a TLS key) must also be unreadable by group and
    others. Raises ConfigError (or OSError)."""
    if "\x00" in str(path):  # os.stat would raise ValueError, which no caller expects
        raise ConfigError(field, repr(str(path)), "contains a NUL byte: give the path of a file")
    st = path.stat()
    me = os.geteuid()
    _check_writer(path, st, field, me, "file")
    folder = path.resolve().parent
    dst = folder.stat()
    if not dst.st_mode & stat.S_ISVTX:  # in a sticky directory (/tmp) nobody replaces another's file
        _check_writer(folder, dst, field, me, f"directory of {path}")
    if secret and st.st_mode & 0o077:
        raise ConfigError(field, str(path), f"is a secret open to group or others (mode {st.st_mode & 0o777:o}): "
                                            f"`chmod 600 {path}`")


def _check_writer(path: Path, st: os.stat_result, field: str, me: int, what: str) -> None:
    owners = (0,) if me == 0 else (0, me)
    if st.st_uid not in owners:
        who = "root" if me == 0 else f"root or uid {me} (this process)"
        raise ConfigError(field, str(path), f"the {what} is owned by uid {st.st_uid}, not {who}, and whoever "
                                            f"owns it controls this node: `chown {'root' if me == 0 else me} "
                                            f"{path}`")
    if st.st_mode & 0o022:
        raise ConfigError(field, str(path), f"the {what} is writable by group or others (mode "
                                            f"{st.st_mode & 0o777:o}), so they control this node: "
                                            f"`chmod go-w {path}`")


def read_secret(path: str | Path, field: str) -> str:
    """A password or token from a file only its owner (root, or this user) may
    read, stripped. Raises ConfigError."""
    p = Path(path)
    try:
        check_owner(p, field, secret=True)
        return p.read_text().strip()
    except OSError as e:
        raise ConfigError(field, str(p), f"cannot be read ({e.strerror})") from None


def check_secret(path: str | Path, field: str) -> None:
    """Refuse a secret file read by another library (a TLS key) that others could
    read, change or replace. Raises ConfigError."""
    try:
        check_owner(Path(path), field, secret=True)
    except OSError as e:
        raise ConfigError(field, str(path), f"cannot be read ({e.strerror})") from None


def write_atomic(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Replace `path` with `data`, created with `mode` (never readable by others,
    not even for an instant), atomically and durably: a temp file with an
    unpredictable O_EXCL name in the same directory (nobody can plant a link
    there beforehand), fsync, rename, fsync of the directory (or a crash could
    bring the old contents back)."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
