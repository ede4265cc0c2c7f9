"""Unsafe settings are refused at start, with what to change."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import ValidationError

from service.settings import MAKE_A_TOKEN, Settings
from tests.helpers import LIMITS, ROOT, bentoml_serve, free_port, kill_tree


def test_more_threads_than_cores_is_refused_unless_allowed() -> None:
    cores = os.cpu_count() or 1
    with pytest.raises(ValidationError, match=r"exceeds the .* CPU cores; lower one of them"):
        Settings(workers=cores + 1)
    with pytest.raises(ValidationError, match="ALLOW_OVERSUBSCRIPTION"):
        Settings(workers=1, ort_threads=cores + 1)
    assert Settings(workers=cores + 1, allow_oversubscription=True).threads_per_worker == 1


def test_default_threads_share_the_cores_evenly() -> None:
    cores = os.cpu_count() or 1
    assert Settings(workers=1).threads_per_worker == cores


def placeholder_token() -> str:
    """The admin token k8s/secret.example.yaml ships: what a hurried operator applies."""
    secret = yaml.safe_load((ROOT / "k8s" / "secret.example.yaml").read_text())
    token: str = secret["stringData"]["admin-token"]
    return token


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("short", "fewer than 16 distinct characters"),
        ("abababababababababababababababab", "fewer than 16 distinct characters"),
        ("0123456789-0123456789-0123456789", "fewer than 16 distinct characters"),
        ("Xq9vL2mR7tK4wB8n Zc1yH5jD3fG6sP0", "contains whitespace"),
        ("Xq9vL2mR7tK4wB8n\tZc1yH5jD3fG6sP0", "contains whitespace"),
        (None, "is the template's placeholder"),
    ],
)
def test_a_weak_admin_token_is_refused_with_how_to_make_one(token: str | None, says: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(admin_token=token if token is not None else placeholder_token())
    assert says in str(refused.value)
    assert MAKE_A_TOKEN in str(refused.value)


def test_a_random_token_is_taken_without_its_trailing_newline() -> None:
    token = secrets.token_urlsafe(32)
    for given in (token, token + "\n", token + "\r\n"):
        settings = Settings(admin_token=given)
        assert settings.admin_token is not None
        assert settings.admin_token.get_secret_value() == token


def test_a_token_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    path = tmp_path / "admin-token"
    path.write_text(token + "\n")
    settings = Settings(admin_token_file=path)
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == token


def test_a_token_file_is_held_to_the_same_rules(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text(placeholder_token() + "\n")
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(admin_token_file=path)


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"admin_token_file": "missing"}, "cannot be read (FileNotFoundError); mount the token"),
        (
            {"admin_token_file": "token", "admin_token": secrets.token_urlsafe(32)},
            "set ADMIN_TOKEN or ADMIN_TOKEN_FILE, not both",
        ),
    ],
)
def test_a_token_file_that_cannot_be_used_says_what_to_do(
    tmp_path: Path, given: dict[str, str], says: str
) -> None:
    (tmp_path / "token").write_text(secrets.token_urlsafe(32))
    given = {**given, "admin_token_file": str(tmp_path / given["admin_token_file"])}
    with pytest.raises(ValidationError) as refused:
        Settings(**given)  # type: ignore[arg-type]
    assert says in str(refused.value)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("ADMIN_TOKEN", "s3cr3t-Xq9", "fewer than 16 distinct characters"),
        ("MODEL_POLL_SECONDS", "pw-Zk42-9x9q", "model_poll_seconds"),
    ],
)
def test_a_refused_setting_never_prints_its_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    """A refused value may be a secret (a token, a URL's password): the error names the field."""
    monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError) as refused:
        Settings()

    assert says in str(refused.value)
    assert value not in str(refused.value) and value[-4:] not in str(refused.value)


def test_the_server_refuses_to_start_with_the_placeholder_token() -> None:
    """`bentoml serve` with the template's token stops at once and says how to make one."""
    env = {**os.environ, **LIMITS, "PORT": str(free_port()), "ADMIN_TOKEN": placeholder_token()}
    server = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service.service:TextClassifier"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = server.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        kill_tree(server.pid)  # the workers too: they sit in process groups of their own
        server.communicate()
        pytest.fail("the server started with the placeholder token")
    assert server.returncode != 0
    assert "ADMIN_TOKEN is the template's placeholder" in output
    assert MAKE_A_TOKEN in output


def test_the_server_takes_its_token_from_a_mounted_file(tiny_version: str, tmp_path: Path) -> None:
    """A Secret mounted as a file ends with a newline; the token is the line, not the newline."""
    token = secrets.token_urlsafe(32)
    (tmp_path / "admin-token").write_text(token + "\n")
    env = {"ADMIN_TOKEN_FILE": str(tmp_path / "admin-token"), "STATE_DIR": str(tmp_path)}
    with (
        bentoml_serve(tiny_version.split(":")[0], tmp_path / "serve.log", env) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        right = client.get("/models", headers={"Authorization": f"Bearer {token}"})
        assert right.status_code == 200, right.text
        wrong = client.get("/models", headers={"Authorization": f"Bearer {token}x"})
        assert wrong.status_code == 401, wrong.text
