"""Configuration files: reading them, and refusing those someone other than
root could change (the agent runs `inference.command` as root and acts on
keys and BMC passwords, so whoever may write these files owns the node)."""

from __future__ import annotations

import os
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
        raise ConfigError("config file", str(p), f"is not valid YAML: {e}") from None


def check_owner(path: Path, field: str) -> None:
    """Running as root, refuse a file someone else could change: the agent runs
    `inference.command` as root and acts on keys and BMC passwords, so whoever
    may write these files owns the machine. Raises ConfigError (or OSError)."""
    if os.geteuid() != 0:
        return
    st = path.stat()
    if st.st_uid != 0:
        raise ConfigError(field, str(path), f"is owned by uid {st.st_uid}, not root, and whoever owns "
                                            f"it controls this node: `chown root {path}`")
    if st.st_mode & 0o022:
        raise ConfigError(field, str(path), f"is writable by group or others (mode "
                                            f"{st.st_mode & 0o777:o}), so they control this node: "
                                            f"`chmod go-w {path}`")


def read_secret(path: str | Path, field: str) -> str:
    """A password or token from a root-owned file, stripped. Raises ConfigError."""
    p = Path(path)
    try:
        check_owner(p, field)
        return p.read_text().strip()
    except OSError as e:
        raise ConfigError(field, str(p), f"cannot be read ({e.strerror})") from None


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
