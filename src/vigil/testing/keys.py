"""Heartbeat keys for tests: one signing key per node and their ring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vigil.identity import make_cluster_keys


def heartbeat_keys(directory: Path, nodes: list[str]) -> dict[str, dict[str, Any]]:
    """{node: {signing_key_file, keyring_file}} to merge into each node's
    `heartbeat:` block; `[ring]` alone (key "ring") for routers."""
    directory.mkdir(parents=True, exist_ok=True)
    ring = str(make_cluster_keys(directory, nodes))
    out: dict[str, dict[str, Any]] = {n: {"signing_key_file": str(directory / f"{n}.key"),
                                          "keyring_file": ring} for n in nodes}
    out["ring"] = {"keyring_file": ring}
    return out


_made: dict[tuple[str, ...], dict[str, dict[str, Any]]] = {}


def shared_keys(*nodes: str) -> dict[str, dict[str, Any]]:
    """`heartbeat_keys` for these nodes, made once per test process in a
    temporary directory removed at exit (for configs parsed without files)."""
    if nodes not in _made:
        import atexit
        import shutil
        import tempfile

        d = Path(tempfile.mkdtemp(prefix="vigil-keys-"))
        atexit.register(shutil.rmtree, d, True)
        _made[nodes] = heartbeat_keys(d, list(nodes))
    return _made[nodes]
