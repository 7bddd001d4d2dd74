"""The task-environment interface that users implement for their own tasks.

An environment is built from a task (``env`` name, integer ``task_id``, options) and is
deterministic given the task and the actions taken. It speaks OpenAI's message format:

- :meth:`Environment.reset` returns the opening messages and the tool schemas;
- :meth:`Environment.step` takes one assistant message (tool calls, or plain text in the
  environment's text syntax) and returns the observation messages and ``done``;
- :meth:`Environment.check` scores the state with partial credit from named, weighted
  sub-goals.

A malformed action never raises: it costs a step and the observation says what was wrong.

The text syntax shared by the built-ins is one command per message, ``TOOL ARG ARG ...``:
arguments fill the tool's parameters in schema order, separated by spaces, and the last
string parameter takes the rest of the line (so ``write notes.txt hello world`` works).
Arguments may be quoted with double quotes.

Splits: :func:`split_of` assigns every non-negative task id to ``train``, ``validation``
or ``heldout`` by a hash of the id (10% held out, 10% validation, 80% train), so every
environment uses the same split and training data never comes from the other two.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import msgspec

__all__ = [
    "SPLITS",
    "Check",
    "Environment",
    "Reset",
    "StepResult",
    "SubGoal",
    "parse_text_action",
    "split_of",
    "tasks_in_split",
    "tool_call_to_text",
]

Split = Literal["train", "validation", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "validation", "heldout")
Message = dict[str, Any]


def split_of(task_id: int) -> Split:
    """The split of a task id: the first byte of SHA-256 of its decimal form, mod 10:
    0 is ``heldout``, 1 is ``validation``, anything else ``train``."""
    if task_id < 0:
        raise ValueError(f"task ids are non-negative integers, got {task_id}")
    bucket = hashlib.sha256(str(task_id).encode()).digest()[0] % 10
    if bucket == 0:
        return "heldout"
    if bucket == 1:
        return "validation"
    return "train"


def tasks_in_split(split: Split, count: int, start: int = 0) -> list[int]:
    """The first ``count`` task ids at or after ``start`` that fall in ``split``."""
    out: list[int] = []
    task_id = start
    while len(out) < count:
        if split_of(task_id) == split:
            out.append(task_id)
        task_id += 1
    return out


class Reset(msgspec.Struct, frozen=True):
    messages: list[Message]
    tools: list[dict[str, Any]]


class StepResult(msgspec.Struct, frozen=True):
    observation: list[Message]
    done: bool


class SubGoal(msgspec.Struct, frozen=True):
    name: str
    weight: float
    met: bool


class Check(msgspec.Struct, frozen=True):
    """A score in [0, 1]: the weighted share of sub-goals met (less any penalties the
    environment documents), and whether the task fully succeeded."""

    score: float
    success: bool
    subgoals: list[SubGoal]


class Environment(ABC):
    """One task of one environment. Subclasses set ``name`` and ``description``."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, task_id: int, **options: Any) -> None:
        if task_id < 0:
            raise ValueError(f"task ids are non-negative integers, got {task_id}")
        self.task_id = task_id
        self.options = options

    @property
    def task(self) -> dict[str, Any]:
        """The task object recorded on a tree's root (``env``, ``task_id``, options)."""
        return {"env": self.name, "task_id": self.task_id, **self.options}

    @abstractmethod
    def reset(self) -> Reset:
        """Start (or restart) the task; returns the opening messages and tool schemas."""

    @abstractmethod
    def step(self, action: Message) -> StepResult:
        """Run one assistant message; never raises on a malformed action."""

    @abstractmethod
    def check(self) -> Check:
        """Score the current state."""

    @abstractmethod
    def snapshot(self) -> Any:
        """An opaque, independent copy of the state (for in-memory forks)."""

    @abstractmethod
    def restore(self, snap: Any) -> None:
        """Return to a state taken by :meth:`snapshot`; the snapshot stays reusable."""

    def close(self) -> None:  # noqa: B027 - optional hook, most environments hold nothing
        """Release what the environment holds (sandboxes, connections)."""


# --- the text syntax ------------------------------------------------------------------------


def parse_text_action(text: str, tools: Sequence[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Parse ``TOOL ARG ...`` into a tool name and arguments per that tool's schema.

    Raises:
        ValueError: with a message fit to show the agent as an observation.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty action: write one command, e.g. " + _example(tools))
    head, _, rest = text.partition(" ")
    schema = next((t["function"] for t in tools if t["function"]["name"] == head), None)
    if schema is None:
        names = ", ".join(t["function"]["name"] for t in tools)
        raise ValueError(f"unknown command {head!r}; commands: {names}")
    props: dict[str, Any] = schema.get("parameters", {}).get("properties", {})
    names = list(props)
    rest = rest.strip()
    if not names:
        if rest:
            raise ValueError(f"{head} takes no arguments")
        return head, {}
    args: dict[str, Any] = {}
    try:
        words = shlex.split(rest) if rest else []
    except ValueError as exc:
        raise ValueError(f"cannot parse arguments of {head}: {exc}") from None
    for i, pname in enumerate(names):
        if i >= len(words):
            break
        if i == len(names) - 1 and props[pname].get("type", "string") == "string":
            # The last string parameter takes the rest of the line verbatim.
            tail = rest
            for _ in range(i):
                tail = tail.split(None, 1)[1] if " " in tail.strip() else ""
            value: Any = _unquote(tail.strip())
        else:
            value = words[i]
        args[pname] = _coerce(value, props[pname])
    if len(words) > len(names) and props[names[-1]].get("type", "string") != "string":
        raise ValueError(f"{head} takes at most {len(names)} arguments")
    return head, args


def _unquote(s: str) -> str:
    if len(s) >= 2 and s[0] == s[-1] == '"':
        try:
            return str(shlex.split(s)[0])
        except ValueError:
            return s
    return s


def _coerce(value: Any, schema: dict[str, Any]) -> Any:
    kind = schema.get("type", "string")
    if kind == "integer":
        try:
            return int(value)
        except ValueError:
            return value  # left for the schema check to report
    return value


def _example(tools: Sequence[dict[str, Any]]) -> str:
    return tools[0]["function"]["name"] if tools else "submit"


def tool_call_to_text(name: str, arguments: dict[str, Any]) -> str:
    """The text-syntax line for a tool call (inverse of :func:`parse_text_action`)."""
    parts = [name]
    values = list(arguments.values())
    for i, v in enumerate(values):
        s = str(v)
        if i < len(values) - 1 and (not s or any(c.isspace() or c == '"' for c in s)):
            s = json.dumps(s)
        parts.append(s)
    return " ".join(parts)
