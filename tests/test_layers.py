"""The layer picture of README.md and docs/DESIGN.md, checked on every import of every file.

    core, store        at the bottom (store imports core)
    training           torch; imports core, and store only for `training fit --store`
    runner             launches and watches retrain jobs; core and store, no torch
    service            HTTP; core, store and runner, no torch
    retrain            the one place training meets the store

Imports inside functions count: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

LAYERS = {
    "core": set(),
    "store": {"core"},
    "training": {"core", "store"},
    "runner": {"core", "store"},
    "service": {"core", "store", "runner"},
    "retrain": {"core", "store", "training"},
}
TRAINING_STACK = {"torch", "transformers", "peft", "accelerate", "optuna", "sklearn", "cleanlab"}
TORCH_FREE = ("core", "store", "runner", "service")


def imported(path: Path) -> set[str]:
    """The top-level package of every module `path` imports (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    ours = set(LAYERS)
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files(package)
        for name in imported(path) & ours - {package} - LAYERS[package]
    }
    assert not wrong, sorted(wrong)


@pytest.mark.parametrize("package", TORCH_FREE)
def test_the_serving_side_never_imports_the_training_stack(package: str) -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files(package)
        for name in imported(path) & TRAINING_STACK
    }
    assert not wrong, sorted(wrong)


def test_only_the_store_backed_fit_of_training_imports_the_store() -> None:
    users = {str(p.relative_to(ROOT)) for p in files("training") if "store" in imported(p)}
    assert users == {"training/stored_fit.py"}


def test_the_readme_draws_the_same_layers() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    design = " ".join((ROOT / "docs" / "DESIGN.md").read_text().split())
    for package in LAYERS:
        assert f"`{package}/`" in readme, package
        assert f"{package}/" in design, package
    assert "`service/` never imports torch" in readme
    assert "`training/` never imports `service/` or `runner/`" in readme


BENTOML_PRIVATE = ("bentoml._internal", "_bentoml_impl", "_bentoml_sdk")


def bentoml_misuse(path: Path) -> set[str]:
    """Imports of BentoML's private modules, assignments to attributes of anything
    imported from bentoml (its classes included), and service lookups by context."""
    tree = ast.parse(path.read_text())
    bentoml_names: set[str] = set()
    wrong: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(BENTOML_PRIVATE):
                    wrong.add(f"imports {alias.name}")
                if alias.name.split(".")[0] == "bentoml":
                    bentoml_names.add(alias.asname or "bentoml")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(BENTOML_PRIVATE):
                wrong.add(f"imports {node.module}")
            if node.module.split(".")[0] == "bentoml":
                bentoml_names.update(alias.asname or alias.name for alias in node.names)
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr":
            targets = [ast.Attribute(value=node.args[0], attr="?")] if node.args else []
        for target in targets:
            root = target
            while isinstance(root, ast.Attribute):
                root = root.value
            if target is not root and isinstance(root, ast.Name) and root.id in bentoml_names:
                wrong.add(f"assigns {ast.unparse(target)}")
        if isinstance(node, ast.Attribute | ast.Name) and "get_current_service" in ast.dump(node):
            wrong.add("looks the service up with get_current_service()")
    return {f"{path.relative_to(ROOT)} {what}" for what in wrong}


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_bentoml_is_used_through_its_public_api_only(package: str) -> None:
    wrong = {misuse for path in files(package) for misuse in bentoml_misuse(path)}
    assert not wrong, sorted(wrong)
