"""The options shared by every command that makes environments: ``--option KEY=VALUE``
(repeatable; the value read as JSON when it parses, else kept as a string) and
``--action-format``, with the one parser they all use."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

__all__ = ["ActionFormat", "EnvOptions", "ExpertFormat", "option_value", "parse_options"]


class ActionFormat(StrEnum):
    auto = "auto"
    text = "text"
    tools = "tools"


class ExpertFormat(StrEnum):
    text = "text"
    tools = "tools"


EnvOptions = Annotated[list[str] | None, typer.Option(
    "--option", help="Environment option KEY=VALUE, repeatable (the value read as JSON "
    "when it parses, else a string); recorded in the root's task.options.")]


def option_value(text: str) -> Any:
    """An option's value: ``text`` read as JSON when it parses, else ``text`` itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; the value read as JSON when it parses, else as a string. A key
    given twice keeps its last value.

    Raises:
        ValueError: an item without ``=`` or without a key.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        out[key.strip()] = option_value(value)
    return out
