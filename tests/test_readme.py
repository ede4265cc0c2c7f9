"""The README documents every setting the service reads, and no other (they cannot drift apart)."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in README]
    assert missing == []


def test_the_settings_table_names_only_settings_the_service_reads() -> None:
    table = README.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([A-Z_]+)`", row)}
    known = {name.upper() for name in Settings.model_fields} | {"BENTOML_HOME"}  # BentoML's own
    assert named - known == set()


def test_readme_opens_with_the_two_commands() -> None:
    opening = README[:400]
    assert "make serve" in opening and "make test" in opening
