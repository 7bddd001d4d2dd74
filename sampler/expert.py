"""Scripted experts: policies that solve an environment's tasks from the conversation alone.

How an expert receives the conversation: :meth:`Expert.act` takes the whole message list
so far (the opening messages from ``reset`` followed by every assistant message and its
observation messages, exactly as a model would see them) and returns the next assistant
message. It keeps no state between calls: the action is a pure function of the messages,
the mistake rate and the seed, so an expert can continue any prefix (its own, a model's,
a recorded production trajectory) and a forked branch can be continued by an expert with
another seed.

It acts only on what the messages show: it reads the task from the opening messages and
what it learnt from the observations of earlier calls (:func:`read_turns`), never the
environment's hidden state.

Mistakes: at each turn the expert draws from ``random.Random(f"{seed}/{turn}")`` (``turn``
is the number of assistant messages so far); with probability ``mistakes`` it takes a
plausible, valid but wrong action that the environment's expert defines. ``seed`` defaults
to the task id, so each task has its own draw; another seed is another draw.

Ground truth: :meth:`Expert.decide` also says whether the action is a *mistake*: a turn
that drew an error and whose action differs from the one the expert takes without it (a
drawn error can leave the action unchanged, e.g. a lookup with nothing to get wrong).
Recorders store it as ``produced_by.mistake``, which is what pair precision is measured
against.
"""

from __future__ import annotations

import inspect
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from branchpoint.sampler.envs.base import (
    Message,
    ToolCall,
    assistant_message,
    parse_action,
    text_of,
)

if TYPE_CHECKING:
    from branchpoint.sampler.envs.base import Environment

__all__ = [
    "Decision",
    "Expert",
    "TextExpert",
    "TextTurn",
    "Turn",
    "expert_for",
    "read_text_turns",
    "read_turns",
]


class Turn(msgspec.Struct, frozen=True):
    """One call the agent made and what the environment answered (``None`` when the
    conversation holds no answer to it)."""

    call: ToolCall
    output: str | None

    @property
    def ok(self) -> bool:
        """Whether the call ran without an error (a valid call whose output does not start
        with ``error``)."""
        return self.call.ok and self.output is not None and not self.output.startswith("error")


def read_turns(messages: Sequence[Message],
               tools: Sequence[dict[str, Any]]) -> tuple[list[Message], list[Turn]]:
    """Split a conversation into its opening messages (before the first assistant message)
    and the calls made since, each paired with its answer: the tool message with the
    call's ``tool_call_id``, or for a text action the user message that follows it."""
    first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"),
                 len(messages))
    opening = list(messages[:first])
    turns: list[Turn] = []
    i = first
    while i < len(messages):
        msg = messages[i]
        i += 1
        if msg.get("role") != "assistant":
            continue
        answers: list[Message] = []
        while i < len(messages) and messages[i].get("role") != "assistant":
            answers.append(messages[i])
            i += 1
        by_id = {m.get("tool_call_id"): m for m in answers if m.get("role") == "tool"}
        users = [m for m in answers if m.get("role") == "user"]
        for call in parse_action(msg, tools):
            if call.call_id is not None:
                answer = by_id.get(call.call_id)
            else:
                answer = users[0] if users else None
            turns.append(Turn(call, text_of(answer.get("content")) if answer else None))
    return opening, turns


class Decision(NamedTuple):
    """The expert's next message, and whether it is a drawn mistake."""

    message: Message
    mistake: bool


class Expert(ABC):
    """A scripted policy for one task. Subclasses implement :meth:`choose`.

    ``text=True`` makes it answer in the environment's text syntax instead of tool calls.
    """

    def __init__(self, tools: Sequence[dict[str, Any]], *, mistakes: float = 0.0,
                 seed: int | str = 0, text: bool = False) -> None:
        if not 0.0 <= mistakes <= 1.0:
            raise ValueError(f"mistakes is a probability in [0, 1], got {mistakes}")
        self.tools = list(tools)
        self.mistakes = mistakes
        self.seed = seed
        self.text = text

    def act(self, messages: Sequence[Message]) -> Message:
        """The next assistant message for the conversation ``messages``."""
        return self.decide(messages).message

    def decide(self, messages: Sequence[Message]) -> Decision:
        """The next assistant message for ``messages``, and whether it is a mistake."""
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        rng = random.Random(f"{self.seed}/{turn}")
        wrong = rng.random() < self.mistakes
        choice = self._choose_from(messages, rng, wrong)
        mistake = False
        if wrong:
            # The same turn without the error: the same generator state, so a choice that
            # draws from it for other reasons draws the same.
            right_rng = random.Random(f"{self.seed}/{turn}")
            right_rng.random()
            mistake = choice != self._choose_from(messages, right_rng, False)
        return Decision(self._message(choice, turn), mistake)

    def _choose_from(self, messages: Sequence[Message], rng: random.Random, wrong: bool) -> Any:
        opening, turns = read_turns(messages, self.tools)
        return self.choose(opening, turns, rng, wrong)

    def _message(self, choice: Any, turn: int) -> Message:
        name, args = choice
        return assistant_message(name, args, call_id=f"call_{turn}", text=self.text,
                                 tools=self.tools)

    @abstractmethod
    def choose(self, opening: list[Message], turns: list[Turn], rng: random.Random,
               wrong: bool) -> tuple[str, dict[str, Any]]:
        """The next call ``(tool name, arguments)``: the right one, or when ``wrong`` a
        plausible, valid but wrong one drawn with ``rng``."""

    @staticmethod
    def failed_before(turns: Sequence[Turn], name: str, arguments: dict[str, Any]) -> bool:
        """Whether exactly this call was made before and failed (so retrying is useless)."""
        return any(t.call.name == name and t.call.arguments == arguments and not t.ok
                   for t in turns)


# --- experts of free-text environments ------------------------------------------------------


class TextTurn(msgspec.Struct, frozen=True):
    """One thing the agent said to a free-text environment and what it answered (the text
    of the user messages that followed, joined by newlines; ``None`` when none did)."""

    text: str | None
    output: str | None


def read_text_turns(messages: Sequence[Message]) -> tuple[list[Message], list[TextTurn]]:
    """Split a free-text conversation into its opening messages (before the first assistant
    message) and what the agent said since, each with the environment's answer."""
    first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"),
                 len(messages))
    opening = list(messages[:first])
    turns: list[TextTurn] = []
    i = first
    while i < len(messages):
        msg = messages[i]
        i += 1
        if msg.get("role") != "assistant":
            continue
        answers: list[str] = []
        while i < len(messages) and messages[i].get("role") != "assistant":
            text = text_of(messages[i].get("content"))
            if text is not None:
                answers.append(text)
            i += 1
        turns.append(TextTurn(text_of(msg.get("content")),
                              "\n".join(answers) if answers else None))
    return opening, turns


class TextExpert(Expert):
    """The scripted expert of a free-text environment
    (:attr:`~branchpoint.sampler.envs.base.Environment.free_text`): it answers with plain
    text, written by :meth:`say` from the opening messages and the turns so far
    (:func:`read_text_turns`). Mistakes, seeds and :meth:`decide` work as for
    :class:`Expert`."""

    def __init__(self, *, mistakes: float = 0.0, seed: int | str = 0) -> None:
        super().__init__((), mistakes=mistakes, seed=seed, text=True)

    @abstractmethod
    def say(self, opening: list[Message], turns: list[TextTurn], rng: random.Random,
            wrong: bool) -> str:
        """The next thing to say: the right one, or when ``wrong`` a plausible but wrong
        one drawn with ``rng``."""

    def choose(self, opening: list[Message], turns: list[Turn], rng: random.Random,
               wrong: bool) -> tuple[str, dict[str, Any]]:
        """Not used: a text expert says text (:meth:`say`).

        Raises:
            TypeError: always.
        """
        raise TypeError(f"{type(self).__name__} is a TextExpert: it says text with say()")

    def _choose_from(self, messages: Sequence[Message], rng: random.Random, wrong: bool) -> Any:
        opening, turns = read_text_turns(messages)
        return self.say(opening, turns, rng, wrong)

    def _message(self, choice: Any, turn: int) -> Message:
        return {"role": "assistant", "content": str(choice)}


def expert_for(env: Environment, *, mistakes: float = 0.0, seed: int | str | None = None,
               action_format: str | None = None) -> Expert:
    """``env``'s scripted expert, answering in ``action_format`` (``text`` or ``tools``;
    ``None``: the environment's default).

    Raises:
        ValueError: the environment cannot answer in that format (a free-text environment
            has no tools; an expert whose ``expert()`` takes no ``text`` parameter has one
            format only), or the format is neither.
        NotImplementedError: the environment has no expert.
    """
    if action_format is None:
        return env.expert(mistakes=mistakes, seed=seed)
    if action_format not in ("text", "tools"):
        raise ValueError(f"action format must be text or tools, got {action_format!r}")
    if env.free_text:
        if action_format == "tools":
            raise ValueError(f"{env.env_name!r} takes free text: it has no tools "
                             "(action format text only)")
        return env.expert(mistakes=mistakes, seed=seed)
    if "text" not in inspect.signature(env.expert).parameters:
        raise ValueError(f"the expert of {env.env_name!r} has one action format (its "
                         "expert() takes no text parameter); leave the action format out")
    expert: Expert = env.expert(mistakes=mistakes, seed=seed,  # type: ignore[call-arg]
                                text=action_format == "text")
    return expert
