"""core/ is sans-IO: it imports no asyncio, socket, time, aiohttp or etcd client,
and no file system, logging or randomness (its callers inject what it needs)."""

import ast
from pathlib import Path

import vigil.core

FORBIDDEN = {"asyncio", "socket", "time", "aiohttp", "aetcd", "etcd3", "etcd3gw", "subprocess",
             "threading", "selectors", "vigil.store", "vigil.net", "vigil.agent", "os", "pathlib", "logging",
             "random", "secrets"}


def test_core_imports_no_io():
    root = Path(vigil.core.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                if any(n == f or n.startswith(f + ".") for f in FORBIDDEN):
                    offenders.append(f"{path.name}: {n}")
    assert list(root.rglob("*.py")), "core/ has modules"
    assert offenders == []
