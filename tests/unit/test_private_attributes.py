"""Issue 27: no module uses another module's private attribute. `obj._name`
where obj is not `self`/`cls` is allowed only when `_name` belongs to the same
module (defined there: a def, a class, an assignment, `self._name = ...`), as
for a transport calling its own pacer's `_drop`. Reaching into another
module's privates is what a typed, public interface is for (the router's
dispatcher for resumed streams, EtcdStore.call, LeadershipHistory.abandon)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "vigil"
# Foreign objects whose only way in is private: ctypes' byref() keeps its referent in
# `_obj` (the fake NVML writes through the pointer pynvml passes, as NVML does).
ALLOWED = {("testing/fake_nvml.py", "_obj")}


def defined_here(tree: ast.AST) -> set[str]:
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
            names.add(n.attr)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            names.add(n.target.id)
    return names


def foreign_privates(source: str) -> list[tuple[int, str]]:
    """(line, expression) of each use of a private attribute this source does not define."""
    tree = ast.parse(source)
    mine = defined_here(tree)
    return sorted((n.lineno, ast.unparse(n)) for n in ast.walk(tree)
                  if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
                  and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"))
                  and n.attr not in mine)


def test_no_module_uses_another_modules_private_attributes():
    found = [f"{p.relative_to(SRC)}:{line}: {expr}" for p in sorted(SRC.rglob("*.py"))
             for line, expr in foreign_privates(p.read_text())
             if (str(p.relative_to(SRC)), expr.rsplit(".", 1)[1]) not in ALLOWED]
    assert found == []


def test_the_check_finds_a_foreign_private_and_lets_a_modules_own_pass():
    source = ("class Pacer:\n    def _drop(self): pass\n"
              "def use(pacer, router):\n    pacer._drop()\n    router._attempt()\n    self_like = router\n")
    assert foreign_privates(source) == [(5, "router._attempt")]
