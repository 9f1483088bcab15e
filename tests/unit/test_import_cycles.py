"""Issue 11: no import cycle anywhere in src/vigil (computed from the AST,
type-checking imports and imports inside functions included), and no module
outside agent/ reaches into the agent's daemon."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "vigil").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The vigil modules `name` imports: `from pkg import sub` names pkg.sub (a
    module), and pkg itself only for names that are not modules."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
            out |= subs | ({base} if len(subs) < len(node.names) else set())
    return {m for m in out if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                found.append(sorted(comp + [v]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {n: imports(n, p, known) for n, p in known.items()}


def test_no_import_cycle_in_src_vigil():
    assert cycles(graph()) == []


def test_no_import_cycle_between_packages():
    """Package level (vigil.cli, vigil.lab, ...; the top-level vigil modules each
    their own): the last such cycle, cli <-> lab through gather_status, went
    when the status document moved to vigil.cluster_status."""
    packages: dict[str, set[str]] = {}
    for name, deps in graph().items():
        here = ".".join(name.split(".")[:2])
        packages.setdefault(here, set()).update(".".join(d.split(".")[:2]) for d in deps)
    for here, deps in packages.items():
        deps.discard(here)
        deps.discard("vigil")  # the package's own __init__, which imports nothing of ours
    assert cycles(packages) == []


# The simulation runs the real Agent, nothing re-implemented: the one module outside
# agent/ that builds it (the CLI's `vigil agent` goes through the package, lazily).
BUILDS_THE_AGENT = {"vigil.testing.sim_cluster"}


def test_only_the_agent_package_imports_the_agent_daemon():
    g = graph()
    assert sorted(n for n, deps in g.items() if "vigil.agent.daemon" in deps
                  and not n.startswith("vigil.agent") and n not in BUILDS_THE_AGENT) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_lower_layers_never_import_the_agent_cli_or_lab():
    """config, core, store, net and probes are below the agent: they may be
    used by it, the router and the CLI, never the other way round."""
    g = graph()
    low = ("vigil.config", "vigil.core", "vigil.store", "vigil.net", "vigil.probes")
    high = ("vigil.agent", "vigil.cli", "vigil.lab")
    leaks = sorted(f"{n} -> {d}" for n, deps in g.items() if n.startswith(low)
                   for d in deps if d.startswith(high))
    assert leaks == []
