"""DESIGN §1 rules that import-linter does not cover: the environment is read in one place."""

from __future__ import annotations

import re
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("signalling", "billing", "media", "turn")
ENV_READ = re.compile(r"\bos\.environ\b|\bos\.getenv\b|\bgetenv\(")


def test_only_the_cli_reads_the_environment() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for pkg in PACKAGES
        for path in (ROOT / pkg).rglob("*.py")
        if path.name != "cli.py" and ENV_READ.search(path.read_text())
    ]
    assert offenders == [], f"modules reading the environment: {offenders}"


MODULE_MAX_LINES = 500  # modules sized by concept (issue 9): split a room that outgrows it
HUB_MAX_LINES = 400  # the hub keeps sessions, dispatch and the inbox; features live in wings


def test_modules_stay_small() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for pkg in PACKAGES
        for path in (ROOT / pkg).rglob("*.py")
    }
    oversized = {name: n for name, n in sizes.items() if n > MODULE_MAX_LINES}
    assert oversized == {}, f"modules over {MODULE_MAX_LINES} lines: {oversized}"
    assert sizes["signalling/hub.py"] <= HUB_MAX_LINES


def test_no_import_cycles() -> None:
    """No module reaches itself through imports, TYPE_CHECKING ones included (the SFU's
    forwarding modules once did)."""
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False)
    edges = {m: graph.find_modules_directly_imported_by(m) & graph.modules for m in graph.modules}
    cycles = [m for m in sorted(edges) if _reaches(edges, m, m)]
    assert cycles == [], f"modules in an import cycle: {cycles}"


def _reaches(edges: dict[str, set[str]], start: str, target: str) -> bool:
    seen: set[str] = set()
    todo = list(edges[start])
    while todo:
        module = todo.pop()
        if module == target:
            return True
        if module not in seen:
            seen.add(module)
            todo.extend(edges[module])
    return False
