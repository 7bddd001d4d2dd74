"""Playing whole episodes of an environment with any policy, and the scripted expert's
demonstrations: the text a tokenizer is trained on and what supervised fine-tuning learns.

Light: no torch here. A policy is a function from the conversation so far to the next
assistant message, so the scripted expert, a local transformers model and a served model
all play through :func:`play`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from branchpoint.sampler.envs.base import Message, Split, tasks_in_split
from branchpoint.sampler.envs.registry import make_env

__all__ = ["Episode", "Policy", "demonstrations", "play", "texts_of"]

Policy = Callable[[list[Message]], Message]


@dataclass(frozen=True)
class Episode:
    """One played episode: the conversation (opening messages, then each action and its
    observation), the check's score and success, and the number of steps."""

    env: str
    task_id: int
    messages: list[Message]
    score: float
    success: bool
    steps: int


def play(env_name: str, task_id: int, policy: Policy, options: dict[str, Any] | None = None,
         ) -> Episode:
    """Play one task to its end (``submit`` or the environment's step limit)."""
    env = make_env(env_name, task_id, **(options or {}))
    try:
        messages = list(env.reset().messages)
        while True:
            action = policy(messages)
            result = env.step(action)
            messages.append(action)
            messages.extend(result.observation)
            if result.done:
                break
        check = env.check()
        return Episode(env_name, task_id, messages, check.score, check.success,
                       len([m for m in messages if m.get("role") == "assistant"]))
    finally:
        env.close()


def demonstrations(env_name: str, count: int, *, mistakes: float = 0.0,
                   split: Split = "train", start: int = 0,
                   options: dict[str, Any] | None = None) -> Iterator[Episode]:
    """The scripted expert's episodes on the first ``count`` tasks of ``split`` (from task
    id ``start``), in the environment's text syntax (one command per message), with the
    expert's mistake rate ``mistakes``."""
    for task_id in tasks_in_split(split, count, start):
        env = make_env(env_name, task_id, **(options or {}))
        try:
            expert = env.expert(mistakes=mistakes, text=True)  # type: ignore[call-arg]
        finally:
            env.close()
        yield play(env_name, task_id, expert.act, options)


def texts_of(episodes: Sequence[Episode]) -> Iterator[str]:
    """Every message of ``episodes`` as its role and text on two lines, as the chat template
    writes it (what a tokenizer is trained on)."""
    for ep in episodes:
        for m in ep.messages:
            content = m.get("content")
            if isinstance(content, str):
                yield f"{m.get('role')}\n{content}"
