"""The task-environment interface that users implement for their own tasks.

An environment is built from a task (``env`` name, integer ``task_id``, options) and is
deterministic given the task and the actions taken. It speaks OpenAI's message format:

- :meth:`Environment.reset` returns the opening messages and the tool schemas;
- :meth:`Environment.step` takes one assistant message (tool calls, or plain text in the
  environment's text syntax) and returns the observation messages and ``done``;
- :meth:`Environment.check` scores the state with partial credit from named, weighted
  sub-goals;
- :meth:`Environment.expert` returns a scripted expert (see :mod:`branchpoint.sampler.expert`).

That is all an environment must write. Forking (:mod:`branchpoint.sampler.fork`) then works
by replay, for every environment: the base class records each action and its result since
the last reset in :attr:`Environment.history` (it wraps the subclass's ``reset`` and
``step`` when the class is created, so no subclass can forget), and a fresh environment of
the same task re-runs them. An environment that can copy its state cheaply also implements
:meth:`Environment.snapshot` / :meth:`Environment.restore` (or overrides
:meth:`Environment.fork`, e.g. to copy a sandbox) and declares it in ``fork_mode``, one of
:data:`FORK_MODES` (a plain attribute: a class default, or set per instance in
``__init__`` when an option decides, as ``backend="disk"`` does for the built-ins).

Stateless tools: an environment whose tools change nothing (search, retrieval, read-only
APIs) sets ``fork_mode = "stateless"``; the conversation is then its whole state, so a fork
is a fresh environment that adopts the history (:meth:`Environment.adopt`) with no replay
and no snapshot, and a recorded trajectory branches from any step even when its tool
results can no longer be reproduced exactly.

A tree's root names its environment by :attr:`Environment.env_name`: the name the registry
made it by (an entry-point name, or an import path ``package.module:Class``), so that the
registry makes the same environment again from the root whichever way it was named.

Free-text environments (text games, a shell, a chat with a simulated user) take the
assistant's text as it is, with no tool parsing: they set :attr:`Environment.free_text`,
return no tools from ``reset`` and read each action with :func:`action_text`.
:class:`TextEnvironment` does that bookkeeping (a step budget, a refusal of tool calls) so
that such an environment only writes its opening and what one message does; its expert is
a :class:`~branchpoint.sampler.expert.TextExpert`. The sampler then samples plain text
(``--action-format text``, what ``auto`` picks when there are no tools), and forks and
replays work as for any environment.

A malformed action never raises: it costs a step and the observation says what was wrong,
as a real tool server would. :func:`parse_action` turns any assistant message into
:class:`ToolCall` s, each either valid against its tool's JSON schema or carrying the exact
error text; :func:`reply` answers one call (a ``tool`` message with its ``tool_call_id``
for a tool call, a ``user`` message for a text action). :class:`ToolEnvironment` puts these
together with a step budget (``max_steps``) so that an environment only writes its tools.

The text syntax shared by the built-ins is one command per message, ``TOOL ARG ARG ...``:
arguments fill the tool's parameters in schema order, separated by spaces, and the last
string parameter takes the rest of the message verbatim (so ``write notes.txt hello world``
works). An argument may be quoted as a JSON string (``mv "a b.txt" c.txt``,
``write a.txt "line 1\\nline 2"``); :func:`tool_call_to_text` writes that form back.

Splits: :func:`split_of` assigns every non-negative task id to ``train``, ``validation``
or ``heldout`` by a hash of the id (10% held out, 10% validation, 80% train), so every
environment uses the same split and training data never comes from the other two.
"""

from __future__ import annotations

import functools
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, TypeAlias, TypeVar

import msgspec

from branchpoint.store.builder import make_task, task_options

# the split function lives in the store (light, shared with its tree filters)
from branchpoint.store.splits import SPLITS, Split, split_of

if TYPE_CHECKING:
    from branchpoint.sampler.expert import Expert

__all__ = [
    "FORK_MODES",
    "SPLITS",
    "Check",
    "Environment",
    "ForkMode",
    "HistoryEntry",
    "Message",
    "Outcome",
    "Reset",
    "Split",
    "StepResult",
    "SubGoal",
    "TextEnvironment",
    "ToolCall",
    "ToolEnvironment",
    "action_text",
    "argument_error",
    "assistant_message",
    "function_tool",
    "parse_action",
    "parse_text_action",
    "reply",
    "score_of",
    "split_of",
    "tasks_in_split",
    "text_of",
    "tool_call_to_text",
    "tool_message",
    "usage",
    "user_message",
]

Message = dict[str, Any]
#: How :func:`branchpoint.sampler.fork.fork` copies an environment: ``snapshot`` (state in
#: memory, through :meth:`Environment.snapshot` / :meth:`Environment.restore` or an
#: overridden :meth:`Environment.fork`), ``sandbox`` (a real directory or database per
#: branch, copied by :meth:`Environment.fork`), ``replay`` (a fresh environment re-runs
#: :attr:`Environment.history`; works for every environment) or ``stateless`` (the tools
#: change nothing, the conversation is the whole state: a fresh environment takes the
#: history as it is, through :meth:`Environment.adopt`, and runs nothing again).
ForkMode = Literal["snapshot", "sandbox", "replay", "stateless"]
FORK_MODES: tuple[ForkMode, ...] = ("snapshot", "sandbox", "replay", "stateless")


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
    #: More to keep in the score's ``detail`` (e.g. a reward's raw value before mapping).
    detail: dict[str, Any] | None = None


def score_of(subgoals: Sequence[SubGoal]) -> Check:
    """The plain check: the weighted share of sub-goals met; success when all are met."""
    total = sum(g.weight for g in subgoals)
    met = sum(g.weight for g in subgoals if g.met)
    score = met / total if total > 0 else 0.0
    return Check(score=round(score, 6), success=all(g.met for g in subgoals),
                 subgoals=list(subgoals))


#: One entry of :attr:`Environment.history`: the action given to ``step`` and its result.
HistoryEntry: TypeAlias = tuple[Message, StepResult]

_F = TypeVar("_F", bound=Callable[..., Any])


class _Snapshot(msgspec.Struct, frozen=True):
    """What :meth:`Environment.snapshot` returns: the subclass's state and the history
    that led to it, so that a restored environment replays (and forks) like the original."""

    history: tuple[HistoryEntry, ...]
    state: Any


def _outermost(fn: _F) -> _F:
    """Wrap one of the methods the base class keeps the books for; the wrapped method runs
    its bookkeeping only in the outermost call (a subclass calling ``super().step`` is one
    step, not two)."""
    kind = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: Environment, *args: Any, **kwargs: Any) -> Any:
        if self.__dict__.get("_bp_inside"):
            return fn(self, *args, **kwargs)
        self.__dict__["_bp_inside"] = True
        try:
            if kind == "restore":
                snap = args[0] if args else kwargs["snap"]
                if not isinstance(snap, _Snapshot):
                    raise TypeError("restore takes what snapshot() returned, got "
                                    f"{type(snap).__name__}")
                fn(self, snap.state)
                self.history = list(snap.history)
                return None
            result = fn(self, *args, **kwargs)
        finally:
            self.__dict__["_bp_inside"] = False
        if kind == "reset":
            self.history = []
        elif kind == "step":
            self.history.append((args[0] if args else kwargs["action"], result))
        elif kind == "snapshot":
            return _Snapshot(tuple(self.history), result)
        return result

    wrapper.__dict__["_bp_books"] = True
    return wrapper  # type: ignore[return-value]


_BOOKKEPT = ("reset", "step", "snapshot", "restore")


class Environment(ABC):
    """One task of one environment. Subclasses set ``name`` and ``description`` and
    implement :meth:`reset`, :meth:`step` and :meth:`check`; :meth:`snapshot` /
    :meth:`restore` (or :meth:`fork`) where the state can be copied, else forks replay.

    ``fork_mode`` (one of :data:`FORK_MODES`) names the way
    :func:`branchpoint.sampler.fork.fork` copies this environment by default. It is a plain
    attribute: ``replay`` unless a subclass sets another default, or an instance sets its
    own in ``__init__``.

    :attr:`history` holds each ``(action, StepResult)`` since the last :meth:`reset`, kept
    by this base class whatever the subclass's ``step`` does; it is what a replay fork
    re-runs, and it travels with a snapshot.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    fork_mode: ForkMode = "replay"
    #: Whether actions are free text, taken as the assistant wrote them (no tools, no tool
    #: parsing; :func:`action_text` reads them). :class:`TextEnvironment` sets it.
    free_text: ClassVar[bool] = False
    #: Whether :meth:`check` scores. ``False`` for an environment with no checker of its
    #: own (its ``check`` raises ``NotImplementedError``): the sampler's LLM judge scores
    #: its leaves, and sampling without a judge is refused at start (a plain attribute,
    #: set per instance when an option decides, as the ``trl`` environment does).
    has_checker: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for attr in _BOOKKEPT:
            fn = cls.__dict__.get(attr)
            if callable(fn) and not getattr(fn, "_bp_books", False):
                setattr(cls, attr, _outermost(fn))
        mode = cls.__dict__.get("fork_mode")
        if mode is not None and mode not in FORK_MODES:
            raise TypeError(f"{cls.__qualname__}.fork_mode must be one of "
                            f"{', '.join(FORK_MODES)}, got {mode!r}")

    def __init__(self, task_id: int, **options: Any) -> None:
        if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id < 0:
            raise ValueError(f"task ids are non-negative integers, got {task_id!r}")
        self.task_id = task_id
        self.options = options
        self.history: list[HistoryEntry] = []
        self._env_name: str | None = None

    @property
    def env_name(self) -> str:
        """The name that makes this environment again through
        :func:`branchpoint.sampler.envs.registry.get_env`: the name the registry made it
        by, else the class's ``name`` when that is registered for this class, else its
        import path ``package.module:Class``."""
        if self._env_name is None:
            from branchpoint.sampler.envs.registry import name_of

            self._env_name = name_of(type(self))
        return self._env_name

    @env_name.setter
    def env_name(self, value: str) -> None:
        self._env_name = value

    @property
    def task(self) -> dict[str, Any]:
        """The task object recorded on a tree's root: ``env`` (:attr:`env_name`),
        ``task_id``, the options under ``options`` and :meth:`task_fields`
        (:func:`branchpoint.store.builder.make_task`)."""
        return make_task(self.env_name, self.task_id, options=self.options,
                         **self.task_fields())

    def task_fields(self) -> dict[str, Any]:
        """Reserved task keys (``row``, ``class``, ``url`` ...) this environment records on
        a root beside its options, so that :meth:`from_task` makes it again without what
        it was first read from (a file of rows); none by default."""
        return {}

    @classmethod
    def from_task(cls, task: Mapping[str, Any]) -> Self:
        """The environment of a recorded root's ``task``, not yet reset: by default
        ``cls(task_id, **options)``; an environment that records :meth:`task_fields`
        reads them back here.

        Raises:
            ValueError: a bad task id or option.
        """
        return cls(task["task_id"], **task_options(task))

    @classmethod
    def select_tasks(cls, split: Split, *, count: int | None = None, start: int = 0,
                     end: int | None = None, **options: Any) -> list[int]:
        """The task ids of ``split``: the first ``count`` at or after ``start``, or those
        in ``[start, end)``. By default every non-negative id is a task and the split is
        :func:`split_of`'s hash; an environment with a finite list of tasks (rows of a
        file) returns fewer when the list ends first.

        Raises:
            ValueError: neither ``count`` nor ``end`` given, or a bad option.
        """
        if end is not None:
            return [t for t in range(start, end) if split_of(t) == split]
        if count is None:
            raise ValueError("select_tasks needs a count or an end")
        return tasks_in_split(split, count, start)

    def fresh(self) -> Self:
        """A new environment of the same task and name, not yet reset."""
        child = type(self)(self.task_id, **self.options)
        child.env_name = self.env_name
        return child

    @abstractmethod
    def reset(self) -> Reset:
        """Start (or restart) the task; returns the opening messages and tool schemas."""

    @abstractmethod
    def step(self, action: Message) -> StepResult:
        """Run one assistant message; never raises on a malformed action."""

    @abstractmethod
    def check(self) -> Check:
        """Score the current state."""

    def snapshot(self) -> Any:
        """An opaque, independent copy of the state (for in-memory forks); optional.

        Raises:
            NotImplementedError: the environment cannot copy its state (fork by replay).
        """
        raise NotImplementedError(f"{self.env_name!r} environments cannot take a snapshot; "
                                  "fork them by replay")

    def restore(self, snap: Any) -> None:
        """Return to a state taken by :meth:`snapshot`; the snapshot stays reusable.

        Raises:
            NotImplementedError: the environment cannot copy its state (fork by replay).
        """
        raise NotImplementedError(f"{self.env_name!r} environments cannot restore a "
                                  "snapshot; fork them by replay")

    @classmethod
    def can_snapshot(cls) -> bool:
        """Whether this environment copies its state itself (implements snapshot and
        restore, or overrides :meth:`fork`), so that ``snapshot`` and ``sandbox`` forks
        work; ``replay`` works for every environment."""
        return cls.fork is not Environment.fork or (
            cls.snapshot is not Environment.snapshot and cls.restore is not Environment.restore)

    def fork(self) -> Environment:
        """An independent copy of this environment in its current state.

        The default builds a fresh environment of the same task, resets it and restores a
        snapshot of this one; environments with cheaper or sandboxed copies override it.

        Raises:
            NotImplementedError: the environment implements no snapshot (fork by replay).
        """
        child = self.fresh()
        child.reset()
        child.restore(self.snapshot())
        return child

    def adopt(self, steps: Sequence[HistoryEntry]) -> None:
        """Take ``steps`` (``(action, StepResult)`` pairs, after :meth:`reset` or the steps
        already taken) as having happened, without running them: how an environment whose
        ``fork_mode`` is ``stateless`` forks and continues a recorded trajectory (whose
        tool results may no longer be reproducible). The base class appends them to
        :attr:`history`; an environment that counts steps extends it (as
        :class:`ToolEnvironment` and :class:`TextEnvironment` do, for the step budget)."""
        self.history.extend((dict(action), result) for action, result in steps)

    def expert(self, mistakes: float = 0.0, seed: int | str | None = None) -> Expert:
        """A scripted expert for this task (see :class:`branchpoint.sampler.expert.Expert`):
        it solves the task when ``mistakes`` is 0 and otherwise takes a plausible, valid
        but wrong action with probability ``mistakes``, drawn from ``seed`` (default: the
        task id).

        Raises:
            NotImplementedError: the environment has no expert.
        """
        raise NotImplementedError(f"environment {self.name!r} has no scripted expert")

    def close(self) -> None:  # noqa: B027 - optional hook, most environments hold nothing
        """Release what the environment holds (sandboxes, connections)."""

    def __enter__(self) -> Environment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- tool schemas and argument validation ---------------------------------------------------


def function_tool(name: str, description: str, params: dict[str, dict[str, Any]] | None = None,
                  required: Sequence[str] | None = None) -> dict[str, Any]:
    """An OpenAI function-tool schema. ``params`` maps parameter names (in text-syntax
    order) to JSON schemas; every parameter is required unless ``required`` says which."""
    params = params or {}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": params,
                "required": list(params if required is None else required),
                "additionalProperties": False,
            },
        },
    }


def _fn(tool: dict[str, Any]) -> dict[str, Any]:
    """The ``function`` part of a tool schema (accepts either form)."""
    fn = tool.get("function", tool)
    return fn if isinstance(fn, dict) else {}


_JSON_TYPES: dict[str, str] = {
    "string": "a string", "integer": "an integer", "number": "a number",
    "boolean": "a boolean", "array": "an array", "object": "an object", "null": "null",
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


_SURROGATE = re.compile("[\ud800-\udfff]")


def _fits(value: Any, kind: str) -> bool:
    actual = _type_name(value)
    if kind == "number":
        return actual in ("integer", "number")
    return actual == kind


def _value_error(value: Any, schema: dict[str, Any], where: str) -> str | None:
    kind = schema.get("type")
    kinds = [kind] if isinstance(kind, str) else list(kind or [])
    if kinds and not any(_fits(value, k) for k in kinds):
        want = " or ".join(_JSON_TYPES.get(k, k) for k in kinds)
        return f"{where} must be {want}, got {_type_name(value)}"
    if isinstance(value, str) and _SURROGATE.search(value):
        # JSON may escape a lone surrogate ("\\ud800"); it is no text a file or database
        # can hold, so it is refused here rather than raising deep inside a tool.
        return f"{where} is not valid Unicode text (a lone surrogate)"
    if "enum" in schema and value not in schema["enum"]:
        options = ", ".join(json.dumps(v) for v in schema["enum"])
        return f"{where} must be one of {options}, got {json.dumps(value)}"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            err = _value_error(item, schema["items"], f"{where}[{i}]")
            if err:
                return err
    if isinstance(value, dict) and "properties" in schema:
        return _object_error(value, schema, where)
    return None


def _object_error(args: dict[str, Any], schema: dict[str, Any], where: str) -> str | None:
    props: dict[str, Any] = schema.get("properties", {})
    for pname in schema.get("required", []):
        if pname not in args:
            return f"missing required argument {pname!r}" + (f" in {where}" if where else "")
    if schema.get("additionalProperties", False) is False:
        for pname in args:
            if pname not in props:
                known = ", ".join(props) or "none"
                return f"unknown argument {pname!r} (arguments: {known})"
    for pname, value in args.items():
        if pname in props:
            err = _value_error(value, props[pname], f"argument {pname!r}")
            if err:
                return err
    return None


def argument_error(tool: dict[str, Any], arguments: Any) -> str | None:
    """What is wrong with ``arguments`` for ``tool`` (an OpenAI tool schema or its
    ``function`` part), or None when they fit: required parameters present, no parameter
    the schema does not name (unless ``additionalProperties`` allows it), each value of its
    JSON type (an integer is a number; a boolean is neither), in its ``enum``, and no string
    holding a lone surrogate.

    The text is what the agent is shown, prefixed with the tool's name, e.g.
    ``mv: missing required argument 'dst'``.
    """
    fn = _fn(tool)
    name = fn.get("name", "?")
    if not isinstance(arguments, dict):
        return f"{name}: arguments must be a JSON object, got {_type_name(arguments)}"
    schema = fn.get("parameters") or {"type": "object", "properties": {}}
    err = _object_error(arguments, schema, "")
    return f"{name}: {err}" if err else None


def usage(tool: dict[str, Any]) -> str:
    """The text-syntax usage line of a tool: ``mv SRC DST``, optional ones in brackets."""
    fn = _fn(tool)
    params = fn.get("parameters", {})
    required = set(params.get("required", []))
    words = [fn.get("name", "?")]
    for pname in params.get("properties", {}):
        words.append(pname.upper() if pname in required else f"[{pname.upper()}]")
    return " ".join(words)


# --- actions: parsing any assistant message into calls --------------------------------------


class ToolCall(msgspec.Struct, frozen=True):
    """One call read from an assistant message.

    ``call_id`` is the ``tool_call_id`` to answer with, or None for a text action (answered
    by a user message). ``error`` is None for a call whose tool exists and whose arguments
    fit its schema; otherwise it is the text to show the agent and ``name`` / ``arguments``
    hold what could be read.
    """

    name: str
    arguments: dict[str, Any]
    call_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def text_of(content: Any) -> str | None:
    """The text of a message's content: a string, or the text parts of a list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        if all(isinstance(p, str) for p in parts) and parts:
            return "".join(p for p in parts if isinstance(p, str))
    return None


def _tool_index(tools: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {_fn(t).get("name", ""): t for t in tools}


def _unknown_tool(name: str, tools: Sequence[dict[str, Any]]) -> str:
    names = ", ".join(_fn(t).get("name", "?") for t in tools)
    return f"unknown tool {name!r}; tools: {names}"


def parse_action(action: Any, tools: Sequence[dict[str, Any]]) -> list[ToolCall]:
    """Read an assistant message into the calls it makes; never raises.

    Tool calls (OpenAI form, ``function.arguments`` a JSON string; an empty string counts as
    ``{}``) are used when present and any content beside them is the model's thinking.
    Otherwise the content is one command in the text syntax. A message that is neither
    gives one call with an error and no ``call_id``. A tool call without an ``id`` is
    answered with ``call_N`` (N its position in the message).
    """
    if not isinstance(action, dict) or action.get("role") != "assistant":
        role = action.get("role") if isinstance(action, dict) else None
        return [ToolCall("", {}, None, f"an action is an assistant message, got role {role!r}")]
    calls = action.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            return [ToolCall("", {}, None, "tool_calls must be a list")]
        return [_parse_tool_call(c, i, tools) for i, c in enumerate(calls)]
    text = text_of(action.get("content"))
    if text is None:
        return [ToolCall("", {}, None, "empty action: call a tool or write one command")]
    try:
        name, args = parse_text_action(text, tools)
    except ValueError as exc:
        return [ToolCall(text.strip().partition(" ")[0], {}, None, str(exc))]
    err = argument_error(_tool_index(tools)[name], args)
    if err:
        err = f"{err} (usage: {usage(_tool_index(tools)[name])})"
    return [ToolCall(name, args, None, err)]


def _parse_tool_call(call: Any, i: int, tools: Sequence[dict[str, Any]]) -> ToolCall:
    call_id = call.get("id") if isinstance(call, dict) else None
    if not isinstance(call_id, str) or not call_id:
        call_id = f"call_{i}"
    fn = call.get("function") if isinstance(call, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(fn, dict) or not isinstance(name, str):
        return ToolCall("", {}, call_id, "a tool call needs function.name")
    tool = _tool_index(tools).get(name)
    if tool is None:
        return ToolCall(name, {}, call_id, _unknown_tool(name, tools))
    raw = fn.get("arguments", "")
    if isinstance(raw, dict):
        args: Any = raw
    elif isinstance(raw, str):
        if not raw.strip():
            args = {}
        else:
            try:
                args = json.loads(raw)
            except json.JSONDecodeError as exc:
                return ToolCall(name, {}, call_id,
                                f"{name}: arguments are not valid JSON ({exc.msg} at "
                                f"position {exc.pos})")
    else:
        return ToolCall(name, {}, call_id, f"{name}: arguments must be a JSON string")
    err = argument_error(tool, args)
    return ToolCall(name, args if isinstance(args, dict) else {}, call_id, err)


# --- observations ---------------------------------------------------------------------------


def tool_message(call_id: str, content: str) -> Message:
    """The answer to a tool call."""
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def user_message(content: str) -> Message:
    """The answer to a text action (or a note from the environment)."""
    return {"role": "user", "content": content}


def reply(call: ToolCall, content: str) -> Message:
    """The observation message answering ``call``: a tool message for a tool call, a user
    message for a text action."""
    if call.call_id is None:
        return user_message(content)
    return tool_message(call.call_id, content)


def assistant_message(name: str, arguments: dict[str, Any], *, call_id: str = "call_0",
                      text: bool = False, tools: Sequence[dict[str, Any]] = ()) -> Message:
    """An assistant message calling ``name``: an OpenAI tool call (``arguments`` encoded as
    a JSON string), or with ``text=True`` one command in the text syntax (``tools`` then
    gives the parameter order, so optional arguments left out still parse back)."""
    if text:
        tool = _tool_index(tools).get(name)
        if tool is not None:
            order = list(_fn(tool).get("parameters", {}).get("properties", {}))
            arguments = {k: arguments[k] for k in order if k in arguments}
        return {"role": "assistant", "content": tool_call_to_text(name, arguments)}
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": call_id, "type": "function",
                        "function": {"name": name, "arguments": json.dumps(arguments)}}],
    }


# --- a base that does the bookkeeping -------------------------------------------------------


class Outcome(msgspec.Struct, frozen=True):
    """What one valid tool call did: the text to show, and whether it ended the episode."""

    content: str
    done: bool = False


def _step_limit(options: dict[str, Any], default: int) -> int:
    """The ``max_steps`` option, or the class default.

    Raises:
        ValueError: not a positive integer.
    """
    limit = options.get("max_steps", default)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_steps must be a positive integer, got {limit!r}")
    return limit


class ToolEnvironment(Environment):
    """An environment made of tools: subclasses give the tools, the opening messages and
    what each valid call does; this class parses actions, answers malformed ones, counts
    steps and ends the episode after ``max_steps`` (a class default, overridable with the
    ``max_steps`` option).

    Subclasses implement :meth:`_start` (build the task state, return the opening
    messages), :meth:`_call` (run one valid call), :meth:`_save` / :meth:`_load` (copy the
    task state for snapshots) and :meth:`check`; :attr:`tools` is the list of schemas.
    It forks by snapshot (``fork_mode = "snapshot"``); an environment whose tools change
    nothing (search, lookups) sets ``fork_mode = "stateless"`` and implements ``_save`` /
    ``_load`` as no-ops.
    """

    fork_mode: ForkMode = "snapshot"
    max_steps: int = 30
    tools: list[dict[str, Any]]

    def __init__(self, task_id: int, **options: Any) -> None:
        super().__init__(task_id, **options)
        self.max_steps = _step_limit(options, type(self).max_steps)
        self.steps = 0
        self.done = False

    @abstractmethod
    def _start(self) -> list[Message]:
        """Build the task's initial state; return the opening messages."""

    @abstractmethod
    def _call(self, name: str, arguments: dict[str, Any]) -> Outcome:
        """Run one call whose tool exists and whose arguments fit its schema. Errors the
        agent made (a missing file, a refused change) are an Outcome whose content says
        so, never an exception."""

    @abstractmethod
    def _save(self) -> Any:
        """An independent copy of the task state (not the step count or history)."""

    @abstractmethod
    def _load(self, state: Any) -> None:
        """Return the task state to one taken by :meth:`_save` (which stays reusable)."""

    def reset(self) -> Reset:
        self.steps = 0
        self.done = False
        return Reset(messages=self._start(), tools=self.tools)

    def step(self, action: Message) -> StepResult:
        calls = parse_action(action, self.tools)
        observation: list[Message] = []
        if self.done:
            observation = [reply(c, "error: the episode is over") for c in calls]
            return StepResult(observation, True)
        self.steps += 1
        for call in calls:
            if self.done:
                observation.append(reply(call, "error: the episode is over"))
            elif call.error is not None:
                observation.append(reply(call, f"error: {call.error}"))
            else:
                outcome = self._call(call.name, call.arguments)
                observation.append(reply(call, outcome.content))
                self.done = self.done or outcome.done
        if not self.done and self.steps >= self.max_steps:
            self.done = True
            observation.append(user_message(
                f"step limit reached ({self.max_steps} steps): the episode is over"))
        return StepResult(observation, self.done)

    def adopt(self, steps: Sequence[HistoryEntry]) -> None:
        super().adopt(steps)
        self.steps += len(steps)
        self.done = self.done or any(result.done for _, result in steps)

    def snapshot(self) -> Any:
        return (self.steps, self.done, self._save())

    def restore(self, snap: Any) -> None:
        self.steps, self.done, state = snap
        self._load(state)


class TextEnvironment(Environment):
    """An environment whose actions are free text (:attr:`Environment.free_text`): each
    assistant message's text goes to :meth:`_act` as it is; ``reset`` offers no tools.

    Subclasses implement :meth:`_start` (build the task state, return the opening
    messages), :meth:`_act` (what one message does: an :class:`Outcome` whose content the
    agent reads as a ``user`` message) and :meth:`check`. A message that calls tools
    instead costs a step and is answered with an error. The episode ends when an outcome
    says so or after ``max_steps`` (a class default, overridable with the ``max_steps``
    option). It forks by replay; a subclass that can copy its state implements
    :meth:`snapshot` / :meth:`restore` (including :attr:`steps` and :attr:`done`) and sets
    ``fork_mode = "snapshot"``.
    """

    free_text: ClassVar[bool] = True
    max_steps: int = 30

    def __init__(self, task_id: int, **options: Any) -> None:
        super().__init__(task_id, **options)
        self.max_steps = _step_limit(options, type(self).max_steps)
        self.steps = 0
        self.done = False

    @abstractmethod
    def _start(self) -> list[Message]:
        """Build the task's initial state; return the opening messages."""

    @abstractmethod
    def _act(self, text: str) -> Outcome:
        """Run one message's text. What the agent got wrong (a verb the game does not know)
        is an Outcome whose content says so, never an exception."""

    def reset(self) -> Reset:
        self.steps = 0
        self.done = False
        return Reset(messages=self._start(), tools=[])

    def step(self, action: Message) -> StepResult:
        if self.done:
            return StepResult([user_message("error: the episode is over")], True)
        self.steps += 1
        text = action_text(action)
        if text is None:
            observation = [user_message("error: this environment takes plain text, not tool "
                                        "calls; write what you want to do")]
        else:
            outcome = self._act(text)
            self.done = outcome.done
            observation = [user_message(outcome.content)]
        if not self.done and self.steps >= self.max_steps:
            self.done = True
            observation.append(user_message(
                f"step limit reached ({self.max_steps} steps): the episode is over"))
        return StepResult(observation, self.done)


    def adopt(self, steps: Sequence[HistoryEntry]) -> None:
        super().adopt(steps)
        self.steps += len(steps)
        self.done = self.done or any(result.done for _, result in steps)


def action_text(action: Message) -> str | None:
    """The text of an assistant message as the assistant wrote it (a string, or its text
    parts joined), for free-text environments; ``None`` when it calls tools or holds no
    text."""
    if action.get("tool_calls"):
        return None
    return text_of(action.get("content"))


# --- the text syntax ------------------------------------------------------------------------


def _token(text: str, i: int) -> tuple[str, int]:
    """Read one argument starting at ``text[i]`` (not whitespace); return it and the index
    after it. A token starting with ``"`` is a JSON string."""
    if text[i] == '"':
        j = i + 1
        while j < len(text):
            if text[j] == "\\":
                j += 2
                continue
            if text[j] == '"':
                break
            j += 1
        if j >= len(text):
            raise ValueError("unclosed quote")
        try:
            value = json.loads(text[i:j + 1])
        except json.JSONDecodeError as exc:
            raise ValueError(f"bad quoted argument ({exc.msg})") from None
        return str(value), j + 1
    j = i
    while j < len(text) and not text[j].isspace():
        j += 1
    return text[i:j], j


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def parse_text_action(text: str, tools: Sequence[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Parse ``TOOL ARG ...`` into a tool name and arguments per that tool's schema.

    Integer, number and boolean parameters are converted where the word allows; anything
    else is left for :func:`argument_error` to report.

    Raises:
        ValueError: with a message fit to show the agent as an observation.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty action: write one command, e.g. " + _example(tools))
    head = text.split(None, 1)[0]
    i = len(head)
    tool = _tool_index(tools).get(head)
    if tool is None:
        raise ValueError(_unknown_tool(head, tools))
    props: dict[str, Any] = _fn(tool).get("parameters", {}).get("properties", {})
    names = list(props)
    i = _skip_space(text, i)
    if not names:
        if i < len(text):
            raise ValueError(f"{head} takes no arguments (usage: {usage(tool)})")
        return head, {}
    args: dict[str, Any] = {}
    for k, pname in enumerate(names):
        if i >= len(text):
            break
        last = k == len(names) - 1
        if last and props[pname].get("type", "string") == "string":
            rest = text[i:]
            # The last string parameter takes the rest verbatim, unless it is one quoted
            # string (which is how values with newlines or edge spaces are written).
            if rest.startswith('"'):
                try:
                    value, end = _token(rest, 0)
                except ValueError:
                    value, end = rest, len(rest)
                if _skip_space(rest, end) < len(rest):
                    value = rest
            else:
                value = rest
            args[pname] = value
            i = len(text)
            break
        try:
            word, i = _token(text, i)
        except ValueError as exc:
            raise ValueError(f"cannot parse arguments of {head}: {exc}") from None
        args[pname] = _coerce(word, props[pname])
        i = _skip_space(text, i)
    if i < len(text):
        raise ValueError(f"{head} takes at most {len(names)} arguments (usage: {usage(tool)})")
    return head, args


def _coerce(value: str, schema: dict[str, Any]) -> Any:
    kind = schema.get("type", "string")
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return value  # left for the schema check to report
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    return value


def _example(tools: Sequence[dict[str, Any]]) -> str:
    return usage(tools[0]) if tools else "submit"


def _needs_quotes(s: str, last: bool) -> bool:
    if not s:
        return True
    if last:
        return s[0] == '"' or s != s.strip() or "\n" in s or "\r" in s
    return any(c.isspace() or c in '"\\' for c in s)


def tool_call_to_text(name: str, arguments: dict[str, Any]) -> str:
    """The text-syntax line for a tool call (inverse of :func:`parse_text_action` when the
    arguments are given in the schema's parameter order)."""
    parts = [name]
    values = list(arguments.values())
    for i, v in enumerate(values):
        s = v if isinstance(v, str) else json.dumps(v)
        if _needs_quotes(s, i == len(values) - 1):
            s = json.dumps(s)
        parts.append(s)
    return " ".join(parts)
