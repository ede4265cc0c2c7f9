"""A Label Studio label config, read for what a text classifier needs from it.

The config is XML from the network, so it is parsed with `defusedxml`: entity
declarations (the billion-laughs bomb), external entities and DTD fetches are
refused, never expanded. What we need is one `<Choices>` control, the `<Text>`
object it labels (`toName`), the task data field that object shows
(`value="$text"`) and the choice values (a choice's `alias`, when set, is
what Label Studio writes into results).
"""

from __future__ import annotations

from functools import lru_cache
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from store.label_studio import Mapping

MAX_CONFIG_CHARS = 1_000_000


class LabelConfigError(ValueError):
    """The label config cannot be used; the message says why and what to change."""


@lru_cache(maxsize=64)
def parse(xml: str) -> Mapping:
    """The text-classification mapping of a label config; LabelConfigError if it has none."""
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"the label config is over {MAX_CONFIG_CHARS} characters")
    try:
        root = fromstring(xml, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise LabelConfigError(
            f"the label config was refused: {type(exc).__name__} (DTDs and entity "
            "declarations are not allowed; Label Studio's configs need none)"
        ) from None
    except ParseError as exc:
        raise LabelConfigError(f"the label config is not well-formed XML: {exc}") from None
    controls = [c for c in root.iter("Choices") if _text_object(root, c.get("toName")) is not None]
    if len(controls) != 1:
        found = "no <Choices> control" if not controls else f"{len(controls)} <Choices> controls"
        raise LabelConfigError(
            f"the label config has {found} labeling a <Text> object; a text classifier needs "
            'exactly one, e.g. <Choices name="sentiment" toName="text"> with <Choice value=...>'
        )
    control = controls[0]
    text = _text_object(root, control.get("toName"))
    assert text is not None
    value = text.get("value", "")
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(
            f'the <Text name="{text.get("name")}"> object shows {value!r}, not a task data field '
            'such as "$text"'
        )
    choices = [c.get("alias") or c.get("value") or "" for c in control.iter("Choice")]
    if not choices or not all(choices):
        raise LabelConfigError(
            f'the <Choices name="{control.get("name")}"> control needs <Choice value=...> '
            "children, each with a value"
        )
    return Mapping(
        from_name=control.get("name", ""),
        to_name=text.get("name", ""),
        text_field=value[1:],
        choices=choices,
    )


def _text_object(root: Element, name: str | None) -> Element | None:
    return next((t for t in root.iter("Text") if name and t.get("name") == name), None)
