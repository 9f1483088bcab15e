"""docs/architecture.md's map of src/vigil names every module, so a newcomer
who reads it finds each file (shape review 7cf5bfd: modules the map had
lost). A module is named when the map says `pkg/name.py`, or its package's
entry (`  pkg/   ...`, up to the next entry) names `name.py`; a module of
src/vigil itself has an entry of its own (`  name.py ...`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRY = re.compile(r"^  ([a-z_]+/|[a-z_]+\.py)(?=\s|$)")


def entries(doc: str) -> tuple[str, dict[str, str]]:
    """The map's text and each entry's text, by its head (`agent/`, `config.py`)."""
    block = doc.split("\nsrc/vigil/\n", 1)[1].split("\ntests/unit", 1)[0]
    out: dict[str, str] = {}
    head = None
    for line in block.splitlines():
        m = ENTRY.match(line)
        if m:
            head = m.group(1)
        if head is not None:
            out[head] = out.get(head, "") + line + "\n"
    return block, out


def unnamed(doc: str, modules: list[Path]) -> list[str]:
    block, by_head = entries(doc)
    out = []
    for rel in modules:
        if len(rel.parts) == 1:
            named = rel.name in by_head
        else:
            section = by_head.get(rel.parts[0] + "/", "")
            named = str(rel) in block or re.search(rf"(?<![\w./]){re.escape(rel.name)}\b", section) is not None
        if not named:
            out.append(str(rel))
    return out


def test_every_module_is_named_in_the_architecture_map():
    src = ROOT / "src" / "vigil"
    modules = sorted(p.relative_to(src) for p in src.rglob("*.py")
                     if p.name not in ("__init__.py", "__main__.py") and "__pycache__" not in p.parts)
    assert len(modules) > 100
    missing = unnamed((ROOT / "docs" / "architecture.md").read_text(), modules)
    assert missing == [], f"name these in docs/architecture.md's map of src/vigil: {missing}"


def test_the_check_finds_a_module_the_map_does_not_name():
    doc = "x\nsrc/vigil/\n  agent/       daemon.py (Agent), jobs.py\n  config.py    NodeConfig\ntests/unit  x\n"
    mods = [Path("agent/daemon.py"), Path("agent/vips.py"), Path("config.py"), Path("errors.py"),
            Path("core/jobs.py")]
    assert unnamed(doc, mods) == ["agent/vips.py", "errors.py", "core/jobs.py"]
