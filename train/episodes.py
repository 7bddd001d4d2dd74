"""Playing whole episodes of an environment with any policy, and the scripted expert's
demonstrations: the text a tokenizer is trained on and what supervised fine-tuning learns.

Light: no torch here. A policy is a function from the conversation so far to the next
assistant message, so the scripted expert, a local transformers model and a served model
all play through :func:`play`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from branchpoint.sampler.envs.base import Message, tasks_in_split, usage
from branchpoint.sampler.envs.registry import make_env
from branchpoint.store.splits import Split

__all__ = ["Episode", "Policy", "demonstrations", "play", "step_windows", "text_opening",
           "texts_of"]

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


def text_opening(messages: Sequence[Message],
                 tools: Sequence[dict[str, Any]]) -> list[Message]:
    """The opening messages for text-mode actions, exactly as the sampler sends them to a
    server without a tool-call parser: the tools' usage lines appended to the system
    message (one is added in front when there is none). A model is trained, sampled and
    evaluated on this same opening.

    The same function as ``branchpoint.sampler.policy.text_opening``, which it defers to
    when that module is installed.
    """
    try:
        from branchpoint.sampler.policy import text_opening as shared
    except ImportError:
        pass
    else:
        opened: list[Message] = shared(messages, tools)
        return opened
    if not tools:
        return [dict(m) for m in messages]
    lines = []
    for tool in tools:
        fn = tool.get("function", tool)
        desc = str(fn.get("description") or "").strip()
        lines.append(f"{usage(tool)}: {desc}" if desc else usage(tool))
    block = ("Write exactly one command per message, no other text. Commands:\n"
             + "\n".join(lines))
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system" and isinstance(out[0].get("content"), str):
        out[0]["content"] = f"{out[0]['content']}\n\n{block}"
    else:
        out.insert(0, {"role": "system", "content": block})
    return out


def play(env_name: str, task_id: int, policy: Policy, options: dict[str, Any] | None = None,
         ) -> Episode:
    """Play one task to its end (``submit`` or the environment's step limit), opening with
    :func:`text_opening` (actions are text commands)."""
    env = make_env(env_name, task_id, **(options or {}))
    try:
        reset = env.reset()
        messages = text_opening(reset.messages, reset.tools)
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


def step_windows(conversations: Iterable[Episode | Sequence[Message]], turns: int = 3,
                 ) -> Iterator[dict[str, Any]]:
    """Short conversations for a first stage of supervised fine-tuning: for each action of
    each episode (or conversation: its messages), the request (the opening's user messages,
    without the system message), the ``turns`` actions and observations just before it,
    then the action.

    A model built from scratch learns to copy from its context (the request's tag, a path
    from the last ``find``) in windows of a hundred tokens long before it does in whole
    episodes, and the lookups it learns there carry over to whole episodes.

    Raises:
        ValueError: ``turns`` below 0.
    """
    if turns < 0:
        raise ValueError(f"turns must be 0 or more, got {turns}")
    for conversation in conversations:
        messages = conversation.messages if isinstance(conversation, Episode) else conversation
        first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"),
                     len(messages))
        request = [m for m in messages[:first] if m.get("role") == "user"]
        history: list[list[Message]] = []  # each action with the observations after it
        for m in messages[first:]:
            if m.get("role") == "assistant":
                recent = [x for turn in history[-turns:] for x in turn] if turns else []
                yield {"messages": [*request, *recent, m]}
                history.append([m])
            elif history:
                history[-1].append(m)
