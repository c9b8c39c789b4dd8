"""DESIGN §1 rules that import-linter does not cover: the environment is read in one place."""

from __future__ import annotations

import re
from pathlib import Path

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
