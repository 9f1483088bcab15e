"""The class of a defect, not its instance: JSON from a client, an engine, an
agent or etcd can be nested past CPython's recursion limit, and json.loads then
raises RecursionError, which is no ValueError. A handler that caught only
ValueError answered a client's deeply nested body with a 500 (the model
server, the actuator gateway) or let `vigil status` and `vigil job submit`
crash. Every decode of such input in src/ must sit in a try whose handlers
catch RecursionError (vigil.core.records.decode_json does, for records)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "vigil"

# Decodes of what Vigil itself wrote (a lab's own files, a model's config in its
# own directory, a re-encode of a body the router already parsed) and test harnesses.
TRUSTED = {
    "serve/minilm.py", "cli/target.py", "cli/report_cmd.py",
    "router/continue_sign.py:signed",
    # decoded in a helper whose only caller catches RecursionError (EtcdStore.call, .watch)
    "store/etcd.py:_authenticate", "store/etcd_wire.py:watch_line",
}
TRUSTED_DIRS = ("testing/", "lab/")


def _decodes(node: ast.AST) -> bool:
    """json.loads(...) or <anything>.json() (aiohttp's request and response bodies)."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    f = node.func
    return (f.attr == "loads" and isinstance(f.value, ast.Name) and f.value.id == "json") or \
        (f.attr == "json" and not node.args)


def _catches_recursion(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("RecursionError", "RuntimeError", "Exception",
                                                     "BaseException") for n in names)


def _unguarded(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, guarded: bool, func: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func, guarded = node.name, False  # a caller's try is no contract of this function
        if _decodes(node) and not guarded:
            found.append((node.lineno, func))
        if isinstance(node, ast.Try):
            inner = guarded or any(_catches_recursion(h) for h in node.handlers)
            for child in node.body:
                visit(child, inner, func)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, guarded, func)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, guarded, func)

    visit(tree, False, "")
    return found


def test_every_decode_of_untrusted_json_catches_recursion_error():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in TRUSTED or rel.startswith(TRUSTED_DIRS):
            continue
        for line, func in _unguarded(ast.parse(path.read_text(), str(path))):
            if f"{rel}:{func}" not in TRUSTED:
                bad.append(f"{rel}:{line} ({func})")
    assert not bad, ("json decoded outside a try that catches RecursionError (a body nested past the "
                     f"recursion limit is then a crash, not a refusal): {bad}")


def test_the_check_sees_the_defect_it_names():
    bad = ast.parse("import json\ndef f(b):\n    try:\n        return json.loads(b)\n    except ValueError:\n"
                    "        return None\nasync def g(r):\n    return await r.json()\n")
    good = ast.parse("import json\ndef f(b):\n    try:\n        return json.loads(b)\n"
                     "    except (ValueError, RecursionError):\n        return None\n")
    assert _unguarded(bad) == [(4, "f"), (8, "g")]
    assert _unguarded(good) == []
