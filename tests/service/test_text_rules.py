"""The admin API documents exactly the text rule it enforces (`core.text`).

schemathesis fuzzes the routes against their documented patterns, and a
labeling tool may validate against them before it sends: a pattern that
admits what `core.text` refuses is a 422 the client was promised it would not
get. The patterns are checked with the regex engine schemathesis validates
with (jsonschema-rs); characters unassigned in Python's Unicode tables are
left out, since a newer Unicode may call them letters.
"""

from __future__ import annotations

from collections.abc import Callable

import jsonschema_rs
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis.core.jsonschema import FANCY_REGEX_OPTIONS

from core.text import check_storable, clean_name, clean_text
from service.admin_schemas import NAME, STORABLE, ExampleIn

TRICKY = list(" \t\n\x00\x1c\x85\u00a0\u200b\u2060\u0301\ufe0f\ue000\u3000a1-é👍")
TEXTS = st.text(
    st.one_of(st.characters(exclude_categories=("Cs", "Cn")), st.sampled_from(TRICKY)), max_size=5
)


def _accepts(clean: Callable[[str], str], value: str) -> bool:
    try:
        clean(value)
    except ValueError:
        return False
    return True


TEXT = ExampleIn.model_json_schema()["properties"]["text"]["pattern"]
RULES = [
    (jsonschema_rs.Draft202012Validator({"pattern": p}, pattern_options=FANCY_REGEX_OPTIONS), rule)
    for p, rule in ((TEXT, clean_text), (NAME, clean_name), (STORABLE, check_storable))
]


@settings(max_examples=3000, deadline=None)
@given(TEXTS)
def test_the_documented_patterns_admit_exactly_what_the_text_rule_accepts(value: str) -> None:
    for documented, rule in RULES:
        assert documented.is_valid(value) == _accepts(rule, value)
