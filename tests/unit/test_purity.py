"""Layering rules checked on the AST: the pure packages import no Redis, RQ, Falcon, pyone or paramiko; one
module talks to OpenNebula, one to SSH, one names Redis keys."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE_PACKAGES = ["functions/conf", "functions/model", "functions/views", "functions/policy", "functions/gs"]
PURE_FILES = ["functions/errors.py", "onesim/placement.py", "onesim/template.py"]
FORBIDDEN = {"redis", "rq", "rq_scheduler", "falcon", "pyone", "paramiko"}


def pure_modules() -> list[str]:
    found = [str(p.relative_to(ROOT)) for pkg in PURE_PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    return found + PURE_FILES


def imported_roots(path: Path) -> set[str]:
    """Top-level package names imported anywhere in the module (function-level and TYPE_CHECKING too)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_every_pure_package_is_checked() -> None:
    assert {"functions/conf/expr.py", "functions/model/render.py", "functions/views/shapes.py"} <= set(pure_modules())


@pytest.mark.parametrize("module", pure_modules())
def test_pure_module_imports_no_infrastructure(module: str) -> None:
    assert imported_roots(ROOT / module) & FORBIDDEN == set()


def _users(lib: str) -> list[str]:
    files = list(ROOT.glob("functions/**/*.py")) + list(ROOT.glob("handlers/*.py")) + [ROOT / "gateway.py"]
    return sorted(str(p.relative_to(ROOT)) for p in files if lib in imported_roots(p))


def test_only_one_module_talks_to_opennebula() -> None:
    assert _users("pyone") == ["functions/cloud/one.py"]


def test_only_one_module_talks_ssh() -> None:
    assert _users("paramiko") == ["functions/cloud/sshexec.py"]
