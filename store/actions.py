"""Assistant actions: the one form an action is stored in, and when two actions are the
same step.

Every writer (the sampler, the SDK, the MCP server, the recording proxy) and every reader
(pair extraction) agrees on these two questions through this module. It is light (stdlib
only), so the SDK can import it.

- :func:`normalize_action` is the one place where actions enter: OpenAI sends
  ``function.arguments`` as a JSON *string*, but clients and environments also accept an
  object. An object becomes its compact JSON string here, before the environment runs it
  and before it is recorded, so what ran is what is stored.
- :func:`same_action` compares JSON values with their JSON types: ``true`` never equals
  ``1`` (Python's ``True == 1`` would merge two different tool calls), while ``1`` and
  ``1.0`` are the same JSON number.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["action_key", "json_key", "normalize_action", "same_action"]

Message = dict[str, Any]


def normalize_action(message: Message) -> Message:
    """``message`` with every tool call's object ``function.arguments`` turned into its JSON
    string (compact, keys in the order given). Returns the same object when nothing
    changes; never mutates the input."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return message
    for c in calls:  # (a loop, not any(): every recorded step passes here)
        fn = c.get("function") if isinstance(c, dict) else None
        if isinstance(fn, dict) and not isinstance(fn.get("arguments"), str | None):
            break
    else:
        return message
    fixed: list[Any] = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and not isinstance(fn.get("arguments"), str | None):
            args = json.dumps(fn["arguments"], ensure_ascii=False, separators=(",", ":"))
            fixed.append({**call, "function": {**fn, "arguments": args}})
        else:
            fixed.append(call)
    return {**message, "tool_calls": fixed}


def json_key(value: Any) -> Any:
    """A hashable key equal for equal JSON values and different across JSON types
    (booleans are not numbers; object key order does not matter)."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("num", value)  # 1 == 1.0 in Python, as in JSON
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, list | tuple):
        return ("list", tuple(json_key(v) for v in value))
    if isinstance(value, dict):
        return ("obj", tuple(sorted((str(k), json_key(v)) for k, v in value.items())))
    return ("other", repr(value))


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return ("json", json_key(json.loads(raw)))
        except ValueError:
            return ("raw", raw)
    return ("json", json_key(raw))


def action_key(m: Message) -> tuple[Any, ...]:
    """What makes an assistant message the step it is: role, content, and each tool call's
    name and parsed arguments in order. Tool-call ids, and fields such as ``refusal`` or
    ``reasoning_content``, are left out; arguments that are not valid JSON count as raw
    strings."""
    calls = tuple(
        (c.get("function", {}).get("name"), _arguments(c.get("function", {}).get("arguments")))
        for c in m.get("tool_calls") or () if isinstance(c, dict)
    )
    content = m.get("content")
    # No text is no text, whether the client sent null or "".
    return (m.get("role"), json_key(content if content != "" else None), calls)


def same_action(a: Message, b: Message) -> bool:
    """Whether two assistant messages are the same step (see :func:`action_key`)."""
    return action_key(a) == action_key(b)
