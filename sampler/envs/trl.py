"""Your tools as a Python class, the way TRL's GRPO trainer takes them
(``environment_factory``), as a branchpoint environment.

TRL 1.x (checked against the installed ``trl`` 1.16, ``GRPOTrainer``): the class is
instantiated with no arguments; ``reset(**row)`` gets the dataset row's columns and returns
``None`` or a text appended to the prompt's last user message; every public function of the
class (found with ``inspect.getmembers(cls, inspect.isfunction)``, except ``reset`` and
``get_reward``, names starting with ``_`` left out) is a tool whose schema
``transformers.utils.get_json_schema`` derives from its type hints and Google-style
docstring; a turn without tool calls ends the rollout. Rewards come from reward functions
called as ``fn(prompts=, completions=, completion_ids=, **columns, trainer_state=,
log_extra=, log_metric=, environments=)`` (each a list with one entry per rollout; here
one), or from the class's own ``get_reward()``.

Options (``--option KEY=VALUE``):

``class``
    ``package.module:Class`` (required).
``tasks_file``
    A JSON-lines file of rows; the task id is the row's 0-based line number. The root's
    ``task`` records the row itself (``task.row``) and its class (``task.class``), so a
    replay never reads the file again. A row may carry a ``prompt`` (a string or a list of
    messages, as in TRL datasets) and a ``split`` (``train`` when absent): the row's split
    is the task's split (rows are not hashed into splits), and asking for more tasks than
    a split holds stops at the end of the file.
``reward``
    ``package.module:function``, called as TRL calls a reward function; without it the
    class's ``get_reward()`` scores; with neither, the sampler's LLM judge does
    (``--judge-base-url``), and sampling without a judge is refused at start.
``reward_range``
    ``LOW:HIGH``: a raw reward is mapped linearly into [0, 1] (and clipped); by default it
    is clipped to [0, 1]. The raw value is kept in the score's detail (``reward``).
``stateless``
    ``true`` when the tools change nothing (as the class attribute ``stateless = True``
    says too): forks then copy the conversation instead of replaying it.
``max_steps``
    The step budget (default 30).

Forking: by replay (a new instance, ``reset(**row)``, the tool calls run again), or by
copying the conversation when the tools are stateless. The class, its tool schemas and
the rows read are cached per process, so a fork costs an instance and a reset.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Self

from branchpoint.sampler.envs.base import (
    Check,
    Environment,
    Message,
    Reset,
    Split,
    StepResult,
    action_text,
    parse_action,
    reply,
    user_message,
)
from branchpoint.store.builder import make_task, task_options

__all__ = ["TrlEnv", "load_object", "reward_range", "scaled_reward", "tool_schemas"]

_NOT_TOOLS = frozenset({"reset", "get_reward"})


def load_object(spec: str, what: str) -> Any:
    """The object named ``package.module:attr``.

    Raises:
        ValueError: the spec has no ``:``, or the module or attribute cannot be found.
    """
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} must be package.module:name, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {spec!r}: cannot import {module_name!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: {module_name} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def reward_range(spec: Any) -> tuple[float, float] | None:
    """``LOW:HIGH`` as two floats (None when not given).

    Raises:
        ValueError: not two numbers with LOW < HIGH.
    """
    if spec is None:
        return None
    low_s, sep, high_s = str(spec).partition(":")
    try:
        low, high = float(low_s), float(high_s)
    except ValueError:
        raise ValueError(f"reward_range must be LOW:HIGH, got {spec!r}") from None
    if not sep or not low < high:
        raise ValueError(f"reward_range must be LOW:HIGH with LOW < HIGH, got {spec!r}")
    return low, high


def scaled_reward(raw: float, bounds: tuple[float, float] | None) -> float:
    """A raw reward as a score in [0, 1]: mapped linearly from ``bounds`` (LOW, HIGH) and
    clipped, or only clipped when there are no bounds."""
    if bounds is not None:
        low, high = bounds
        raw = (raw - low) / (high - low)
    return round(min(1.0, max(0.0, raw)), 6)


def _methods(cls: type) -> list[str]:
    return [name for name, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
            if name not in _NOT_TOOLS and not name.startswith("_")]


@cache
def tool_schemas(cls: type) -> tuple[dict[str, Any], ...]:
    """The OpenAI tool schemas of ``cls``'s public methods, derived as TRL derives them
    (``transformers.utils.get_json_schema`` on each bound method).

    Raises:
        ValueError: a method lacks the type hints or docstring TRL needs (the message
            names it), or transformers is not installed.
    """
    try:
        from transformers.utils.chat_template_utils import get_json_schema
    except ImportError:
        raise ValueError("the trl environment derives tool schemas with transformers, as "
                         "TRL does: pip install 'branchpoint[train]' (or transformers)"
                         ) from None
    out = []
    for name in _methods(cls):
        try:
            schema = get_json_schema(getattr(cls, name))
        except Exception as exc:  # transformers raises its own TypeError subclasses
            raise ValueError(f"{cls.__qualname__}.{name} is not a tool TRL can describe: "
                             f"{exc}") from None
        # transformers gives the whole OpenAI tool: {"type": "function", "function": ...}
        out.append(schema if "function" in schema else {"type": "function", "function": schema})
    return tuple(out)


@cache
def _rows(path: str) -> tuple[dict[str, Any], ...]:
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f):
            if not line.strip():
                raise ValueError(f"{path}:{number + 1}: a blank line (each line is one row; "
                                 "the task id is the line number)")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number + 1}: not a JSON object ({exc.msg})"
                                 ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number + 1}: a row is a JSON object")
            rows.append(row)
    return tuple(rows)


def _split_of_row(row: Mapping[str, Any]) -> str:
    split = row.get("split", "train")
    return split if isinstance(split, str) else "train"


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class TrlEnv(Environment):
    """A TRL ``environment_factory`` class, one task per row of ``tasks_file``."""

    name: ClassVar[str] = "trl"
    description: ClassVar[str] = ("a TRL-style tool class: --option class=pkg.mod:Class "
                                  "--option tasks_file=rows.jsonl")

    def __init__(self, task_id: int, *, row: Mapping[str, Any] | None = None,
                 **options: Any) -> None:
        super().__init__(task_id, **options)
        spec = options.get("class")
        if not spec:
            raise ValueError("the trl environment needs --option class=package.module:Class")
        self.cls: type = load_object(spec, "class")
        if not isinstance(self.cls, type):
            raise ValueError(f"class {spec!r} is not a class")
        if not callable(getattr(self.cls, "reset", None)):
            raise ValueError(f"{spec} has no reset method (TRL requires one)")
        if row is None:
            path = options.get("tasks_file")
            if not path:
                raise ValueError("the trl environment needs --option tasks_file=rows.jsonl "
                                 "(one JSON row per line)")
            rows = _rows(str(path))
            if task_id >= len(rows):
                raise ValueError(f"task {task_id} is past the end of {path} ({len(rows)} "
                                 "rows; task ids are 0-based line numbers)")
            row = rows[task_id]
        self.row = dict(row)
        self.reward_fn: Callable[..., Any] | None = None
        if options.get("reward"):
            self.reward_fn = load_object(options["reward"], "reward")
            if not callable(self.reward_fn):
                raise ValueError(f"reward {options['reward']!r} is not callable")
        # with neither a reward function nor get_reward(), the sampler's judge scores
        self.has_checker = self.reward_fn is not None or \
            callable(getattr(self.cls, "get_reward", None))
        self.range = reward_range(options.get("reward_range"))
        limit = options.get("max_steps", 30)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_steps must be a positive integer, got {limit!r}")
        self.max_steps = limit
        stateless = options.get("stateless", getattr(self.cls, "stateless", False))
        if not isinstance(stateless, bool):
            raise ValueError(f"stateless must be true or false, got {stateless!r}")
        self.fork_mode = "stateless" if stateless else "replay"
        self.tools = [dict(t) for t in tool_schemas(self.cls)]
        self.instance: Any = None
        self.prompt: list[Message] = []
        self.completion: list[Message] = []
        self.steps = 0
        self.done = False

    # --- what the root records, and making the environment again from it ------------------

    @property
    def split(self) -> str:
        return _split_of_row(self.row)

    def task_fields(self) -> dict[str, Any]:
        return {"row": self.row, "class": self.options["class"]}

    @property
    def task(self) -> dict[str, Any]:
        return make_task(self.env_name, self.task_id, split=self.split, options=self.options,
                         **self.task_fields())

    @classmethod
    def from_task(cls, task: Mapping[str, Any]) -> Self:
        row = task.get("row")
        return cls(task["task_id"], row=row if isinstance(row, dict) else None,
                   **task_options(task))

    def fresh(self) -> Self:
        child = type(self)(self.task_id, row=self.row, **self.options)
        child.env_name = self.env_name
        return child

    @classmethod
    def select_tasks(cls, split: Split, *, count: int | None = None, start: int = 0,
                     end: int | None = None, **options: Any) -> list[int]:
        """The rows of ``tasks_file`` in ``split`` (a row's ``split`` column, ``train``
        when absent), in file order; fewer than ``count`` when the file ends first."""
        path = options.get("tasks_file")
        if not path:
            raise ValueError("the trl environment needs --option tasks_file=rows.jsonl")
        rows = _rows(str(path))
        stop = len(rows) if end is None else min(end, len(rows))
        ids = [i for i in range(start, stop) if _split_of_row(rows[i]) == split]
        return ids if count is None else ids[:count]

    # --- the episode ------------------------------------------------------------------------

    def reset(self) -> Reset:
        self.close()
        self.instance = self.cls()
        opening = self.instance.reset(**self.row)
        prompt = self.row.get("prompt")
        if isinstance(prompt, str):
            messages = [user_message(prompt)]
        elif isinstance(prompt, list):
            messages = [dict(m) for m in prompt]
        else:
            messages = []
        if opening is not None:
            # as TRL does: the text joins the last user message, or opens the conversation
            if messages and messages[-1].get("role") == "user" and \
                    isinstance(messages[-1].get("content"), str):
                messages[-1] = {**messages[-1],
                                "content": messages[-1]["content"] + str(opening)}
            else:
                messages.append(user_message(str(opening)))
        self.prompt = messages
        self.completion = []
        self.steps = 0
        self.done = False
        return Reset(messages=[dict(m) for m in messages], tools=[dict(t) for t in self.tools])

    def _is_command(self, action: Message) -> bool:
        text = action_text(action)
        names = {t["function"]["name"] for t in self.tools}
        return text is not None and bool(text.split()) and text.split()[0] in names

    def step(self, action: Message) -> StepResult:
        if self.done or self.instance is None:
            return StepResult([user_message("error: the episode is over")], True)
        self.steps += 1
        self.completion.append(dict(action))
        observation: list[Message] = []
        if not action.get("tool_calls") and not self._is_command(action):
            self.done = True  # a turn without a tool call ends a TRL rollout
            return StepResult(observation, True)
        for call in parse_action(action, self.tools):
            if call.error is not None:
                observation.append(reply(call, f"error: {call.error}"))
                continue
            try:
                result = getattr(self.instance, call.name)(**call.arguments)
            except Exception as exc:  # a tool's own failure is what the agent reads
                observation.append(reply(call, f"error: {type(exc).__name__}: {exc}"))
                continue
            observation.append(reply(call, result if isinstance(result, str)
                                     else json.dumps(result, default=str)))
        if self.steps >= self.max_steps:
            self.done = True
            observation.append(user_message(
                f"step limit reached ({self.max_steps} steps): the episode is over"))
        self.completion += observation
        return StepResult(observation, self.done)

    def adopt(self, steps: Any) -> None:
        super().adopt(steps)
        for action, result in steps:
            self.completion += [dict(action), *result.observation]
            self.steps += 1
            self.done = self.done or result.done

    def raw_reward(self) -> float:
        """The reward as the class or the reward function gives it (before mapping).

        Raises:
            NotImplementedError: no reward function and no ``get_reward()`` (the judge
                scores this environment).
            ValueError: the reward is not a number.
        """
        if not self.has_checker:
            raise NotImplementedError(
                f"no reward for {self.options['class']}: it is scored by the LLM judge "
                "(--judge-base-url URL --judge-model MODEL); give --option "
                "reward=package.module:fn or define get_reward() on the class to score it "
                "without one")
        if self.instance is None:
            self.reset()
        if self.reward_fn is not None:
            columns = {k: [v] for k, v in self.row.items()
                       if k not in ("prompt", "completion", "completion_ids")}
            out = self.reward_fn(prompts=[self.prompt], completions=[self.completion],
                                 completion_ids=[[]], **columns, trainer_state=None,
                                 log_extra=_noop, log_metric=_noop,
                                 environments=[self.instance])
            value = out[0] if isinstance(out, list | tuple) else out
        else:
            value = self.instance.get_reward()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"the reward is not a number: {value!r}")
        return float(value)

    def check(self) -> Check:
        """The reward mapped into [0, 1], its raw value in the detail.

        Raises:
            NotImplementedError: no reward function and no ``get_reward()``: the sampler's
                LLM judge scores this environment's leaves.
            ValueError: the reward is not a number.
        """
        raw = self.raw_reward()
        score = scaled_reward(raw, self.range)
        return Check(score=score, success=score >= 1.0, subgoals=[], detail={"reward": raw})

    def close(self) -> None:
        closer = getattr(self.instance, "close", None)
        if callable(closer):
            closer()
        self.instance = None
