"""Replay: re-run recorded actions in a fresh environment and insist on the same answers.

This is how a trajectory recorded in production (through the SDK, a proxy or MCP) is
branched offline: a fresh environment of the recorded task is reset, each recorded action
is stepped in turn, and every observation must equal the recorded one exactly (and
``done`` too, where it was recorded). At the first difference :func:`replay` raises
:class:`~branchpoint.store.errors.ReplayDivergence` naming the step and showing both sides,
because a branch grown from a state that differs from the recording would be trained on a
lie. Steps are numbered from 1 (step 1 is the first action after reset); step 0 is the
reset, whose messages are compared when the recording has them.

Replay costs one environment step per recorded step: linear in the depth.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from branchpoint.sampler.envs.base import Environment, Message, StepResult
from branchpoint.store.errors import ReplayDivergence

__all__ = ["RecordedStep", "reach", "replay", "replay_fork", "show_difference"]


class RecordedStep(msgspec.Struct, frozen=True):
    """One recorded step: the action as given to ``step``, the observation it got, and
    whether the episode was done (None when the recorder could not know)."""

    action: Message
    observation: list[Message]
    done: bool | None = None


def _as_step(item: Any) -> RecordedStep:
    if isinstance(item, RecordedStep):
        return item
    if isinstance(item, tuple):
        action, result = item[0], item[1]
        if isinstance(result, StepResult):
            return RecordedStep(action, result.observation, result.done)
        return RecordedStep(action, list(result), item[2] if len(item) > 2 else None)
    if isinstance(item, dict):
        return RecordedStep(item["action"], item["observation"], item.get("done"))
    raise TypeError(f"cannot read a recorded step from {type(item).__name__}")


def show_difference(recorded: Any, replayed: Any) -> str:
    """A unified diff of two JSON values, one key per line."""
    a = json.dumps(recorded, indent=1, sort_keys=True, ensure_ascii=False).splitlines()
    b = json.dumps(replayed, indent=1, sort_keys=True, ensure_ascii=False).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "recorded", "replayed", lineterm="", n=2))


def _diverged(step: int, what: str, recorded: Any, replayed: Any) -> ReplayDivergence:
    exc = ReplayDivergence(f"replay diverged at step {step}: the {what} differs from the "
                           f"recording\n{show_difference(recorded, replayed)}")
    exc.step = step  # type: ignore[attr-defined]
    exc.recorded = recorded  # type: ignore[attr-defined]
    exc.replayed = replayed  # type: ignore[attr-defined]
    return exc


def replay(env: Environment, steps: Iterable[Any], *,
           opening: Sequence[Message] | None = None) -> list[Message]:
    """Reset ``env`` and re-run ``steps`` (RecordedStep, ``(action, StepResult)``,
    ``(action, observation[, done])`` or ``{"action", "observation", "done"}``), checking
    each observation. Returns the conversation so far (opening messages, then each action
    and observation), ready for a policy to continue from.

    Raises:
        ReplayDivergence: the first step whose observation or ``done`` differs (or the
            reset, when ``opening`` is given and differs); ``exc.step`` is its number,
            ``exc.recorded`` and ``exc.replayed`` the two sides.
    """
    start = env.reset()
    if opening is not None and list(opening) != start.messages:
        raise _diverged(0, "opening", list(opening), start.messages)
    messages = list(start.messages)
    for number, item in enumerate(steps, start=1):
        rec = _as_step(item)
        got = env.step(rec.action)
        if got.observation != rec.observation:
            raise _diverged(number, "observation", rec.observation, got.observation)
        if rec.done is not None and got.done != rec.done:
            raise _diverged(number, "done flag", rec.done, got.done)
        messages += [rec.action, *rec.observation]
    return messages


def reach(env: Environment, steps: Iterable[Any]) -> list[Message]:
    """Bring ``env`` to the end of recorded ``steps`` (in any form :func:`replay` takes):
    by :func:`replay` (checking every observation), or for an environment that declares its
    tools stateless (``fork_mode = "stateless"``) by resetting it and adopting the steps as
    recorded, running nothing again. Returns the conversation so far.

    Raises:
        ReplayDivergence: as :func:`replay` (never for a stateless environment).
    """
    if env.fork_mode != "stateless":
        return replay(env, steps)
    recorded = [_as_step(item) for item in steps]
    messages = list(env.reset().messages)
    # an unknown done flag (None) is taken as not done: the recording went on after it
    env.adopt([(rec.action, StepResult(list(rec.observation), bool(rec.done)))
               for rec in recorded])
    for rec in recorded:
        messages += [rec.action, *rec.observation]
    return messages


def replay_fork(env: Environment) -> Environment:
    """A copy of ``env`` made by replaying its history in a fresh environment of the same
    task (the ``replay`` way of :func:`branchpoint.sampler.fork.fork`).

    Works for every environment: the base class keeps ``env.history``.

    Raises:
        ReplayDivergence: the environment is not deterministic in its actions.
    """
    child = env.fresh()
    try:
        replay(child, env.history)
    except BaseException:
        child.close()
        raise
    return child
