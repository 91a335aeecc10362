"""Imports run downward: tools → the API and the workers → config → the shared core.

Read from the source with ``ast``, lazy imports inside functions included, so that a
shortcut taken "just once" inside a function shows up here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("common", "config", "recognition_api", "workers", "models_registry", "bench", "harness", "tests")
# What each package may import of the project's own packages (itself always).
ALLOWED = {
    "common": set(),
    "config": {"common"},
    "recognition_api": {"common", "config"},
    "workers": {"common", "config"},
    "models_registry": {"common", "config", "workers"},  # a tool: builds volumes with the runtimes
    "bench": {"common", "config", "workers", "models_registry", "recognition_api", "harness"},
    "harness": {"common", "config", "recognition_api"},
}


def project_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES}
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = {}
    for path in sources(package):
        extra = project_imports(path) - ALLOWED[package] - {package}
        if extra:
            wrong[str(path.relative_to(ROOT))] = sorted(extra)
    assert not wrong, f"imports against the layering: {wrong}"


def test_the_layering_check_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from models_registry.rollout import x\n    import workers.process\n")
    assert project_imports(module) == {"models_registry", "workers"}


def test_the_worker_and_the_api_each_have_sources_to_check() -> None:
    assert sources("workers") and sources("recognition_api") and sources("common") and sources("config")
