"""Unsafe settings are refused at start, with what to change."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from service.settings import Settings


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


def test_a_lone_text_goes_wide_only_when_there_is_more_than_one_worker_to_borrow_from() -> None:
    many = dict(workers=2, ort_threads=1, allow_oversubscription=True)
    assert Settings(**many).wide_threads == 2
    assert Settings(**many, wide_lone_texts=False).wide_threads == 0
    assert Settings(workers=1, ort_threads=1).wide_threads == 0


def test_a_short_admin_token_is_refused_with_how_to_make_one() -> None:
    with pytest.raises(ValidationError, match=r"at least 16 characters.*secrets.token_urlsafe"):
        Settings(admin_token="short")


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("ADMIN_TOKEN", "s3cr3t-Xq9", "at least 16 characters"),
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
