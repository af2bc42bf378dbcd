"""The pure-logic modules import no Redis, RQ, Falcon, pyone or paramiko (style rule; checked on the AST)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = ["functions/rbparse.py", "functions/expr.py", "functions/windows.py", "functions/confschema.py",
        "functions/conffields.py", "functions/confcheck.py", "functions/render.py", "functions/tables.py",
        "functions/tokens.py", "functions/views.py", "functions/specview.py", "functions/groupplan.py",
        "onesim/placement.py",
        "onesim/template.py",
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "functions" / "gs").glob("*.py"))]
FORBIDDEN = {"redis", "rq", "rq_scheduler", "falcon", "pyone", "paramiko"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_infrastructure(module: str) -> None:
    assert imported_roots(ROOT / module) & FORBIDDEN == set()


def test_only_one_module_talks_to_opennebula() -> None:
    users = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("functions/*.py") if "pyone" in imported_roots(p))
    users += sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("handlers/*.py") if "pyone" in imported_roots(p))
    assert users == ["functions/one.py"]
