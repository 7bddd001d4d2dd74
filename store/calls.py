"""Chat completion calls as steps of a tree: where a call belongs, and what it answered.

An agent that talks to a model through the OpenAI chat API shows its whole trajectory in
every call: the opening messages, then each assistant message it got and what the tools or
the user answered to it. The OpenAI client wrapper (:mod:`branchpoint.sdk.openai_wrapper`)
and the recording proxy (:mod:`branchpoint.store.proxy`) both record calls with this module:

- :func:`place_call` finds the node whose conversation the call's history continues,
  comparing messages as JSON values with tool-call ids ignored (clients regenerate them),
  and records what the history shows that the tree lacks: the observation of a step that
  was waiting for it (the tool results the agent sends in its next call), or new steps
  where the history leaves every recorded path. So an agent that retries from an earlier
  point makes a fork without saying so.
- :func:`choice_messages` and :func:`produced_by` turn a response (a dict in the wire
  form) into the assistant messages to record and their provenance; :class:`StreamAccumulator`
  rebuilds the same response from streamed chunks.

Pure and light (stdlib and the store's builder): no I/O, no HTTP client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from branchpoint.store.actions import action_key, json_key
from branchpoint.store.builder import ROOT, TreeBuilder

__all__ = ["SAMPLING_KEYS", "StreamAccumulator", "choice_messages", "message_key",
           "place_call", "produced_by", "split_history"]

Message = dict[str, Any]

#: Request parameters recorded in ``produced_by["params"]``: how a step was sampled.
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "seed",
                 "stop", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs",
                 "tool_choice", "response_format", "reasoning_effort")


def message_key(m: Mapping[str, Any]) -> Any:
    """What makes two messages the same turn: an assistant message by its action
    (:func:`~branchpoint.store.actions.action_key`), any other by its JSON value without
    ``tool_call_id``."""
    if m.get("role") == "assistant":
        return ("assistant", action_key(dict(m)))
    return json_key({k: v for k, v in m.items() if k != "tool_call_id"})


def _same(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> bool:
    return len(a) == len(b) and all(
        message_key(x) == message_key(y) for x, y in zip(a, b, strict=True))


def split_history(history: Sequence[Message]) -> tuple[list[Message], list[tuple[Message,
                                                                             list[Message]]]]:
    """The opening messages (everything before the first assistant message) and the turns
    after them: each assistant message with the messages that answered it."""
    opening: list[Message] = []
    turns: list[tuple[Message, list[Message]]] = []
    for m in history:
        if m.get("role") == "assistant":
            turns.append((m, []))
        elif turns:
            turns[-1][1].append(m)
        else:
            opening.append(m)
    return opening, turns


def place_call(builder: TreeBuilder, history: Sequence[Message]) -> tuple[str, bool]:
    """Where a call with this message history continues the tree of ``builder``, which has
    a root. Walks the history's turns from the root: a turn whose action matches a child
    that has the same observation, or none yet, follows it (recording the observation
    where it was missing); the first turn that matches no child starts a new branch there,
    and the rest of the history becomes steps of it.

    Returns the node the call's answer hangs under, and whether the history's opening
    messages are the root's (False: they differ, and the turns were placed under the root
    anyway).

    Raises:
        InvalidEvent: from the builder, for a history it cannot record.
    """
    state = builder.state
    assert state.root is not None, "place_call needs a tree with a root"
    opening, turns = split_history(history)
    same_opening = _same(opening, state.root.messages or [])
    node = ROOT
    for action, observation in turns:
        key = message_key(action)
        pending = None
        follow = None
        for child in state.nodes[node].children:
            info = state.nodes[child]
            if info.action is None or message_key(info.action) != key:
                continue
            if info.observation is None:
                pending = pending or child
            elif _same(info.observation, observation):
                follow = child
                break
        if follow is not None:
            node = follow
        elif pending is not None:
            if observation:
                builder.executed(pending, observation, None)
            node = pending
        elif observation:
            node = builder.step(node, action, observation, None)
        else:
            node = builder.node(node, action)
    return node, same_opening


def clean_message(m: Mapping[str, Any]) -> Message:
    """An assistant message as recorded: role, content (``""`` rather than nothing), tool
    calls (id, type, function name and arguments) and reasoning text when the model gave
    one; the wire's null fields left out."""
    out: Message = {"role": "assistant", "content": m.get("content")}
    calls = m.get("tool_calls")
    if calls:
        out["tool_calls"] = [{"id": c.get("id"), "type": c.get("type") or "function",
                              "function": {"name": (c.get("function") or {}).get("name"),
                                           "arguments": (c.get("function") or {}).get(
                                               "arguments") or ""}}
                             for c in calls]
    elif out["content"] is None:
        out["content"] = ""
    for extra in ("reasoning_content", "reasoning"):
        if m.get(extra):
            out[extra] = m[extra]
    return out


def choice_messages(response: Mapping[str, Any]) -> list[tuple[Message, Mapping[str, Any]]]:
    """Each choice of a chat completion (wire form) as ``(assistant message, choice)``, in
    the order of their ``index``."""
    choices = sorted(response.get("choices") or (), key=lambda c: c.get("index", 0))
    return [(clean_message(c.get("message") or {}), c) for c in choices]


def produced_by(request: Mapping[str, Any], response: Mapping[str, Any],
                choice: Mapping[str, Any], *, via: str) -> dict[str, Any]:
    """What drew one choice: the model, the sampling parameters of the request, the usage
    of the response, the choice's finish reason, and its logprobs and token ids when the
    response carries them."""
    out: dict[str, Any] = {"model": response.get("model") or request.get("model"), "via": via}
    params = {k: request[k] for k in SAMPLING_KEYS if request.get(k) is not None}
    if params:
        out["params"] = params
    for key in ("usage", "id", "system_fingerprint"):
        if response.get(key) is not None:
            out["response_id" if key == "id" else key] = response[key]
    for key in ("finish_reason", "logprobs", "token_ids", "stop_reason"):
        if choice.get(key) is not None:
            out[key] = choice[key]
    if response.get("prompt_token_ids") is not None:
        out["prompt_token_ids"] = response["prompt_token_ids"]
    return out


class StreamAccumulator:
    """Rebuilds a chat completion from its streamed chunks (wire form, in order)."""

    def __init__(self) -> None:
        self.response: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: Mapping[str, Any]) -> None:
        for key in ("id", "model", "created", "system_fingerprint", "prompt_token_ids"):
            if chunk.get(key) is not None:
                self.response[key] = chunk[key]
        if chunk.get("usage"):
            self.response["usage"] = chunk["usage"]
        for c in chunk.get("choices") or ():
            slot = self._choices.setdefault(c.get("index", 0), {
                "index": c.get("index", 0), "message": {"role": "assistant", "content": None},
                "finish_reason": None})
            msg = slot["message"]
            delta = c.get("delta") or {}
            for field in ("content", "reasoning_content", "reasoning"):
                if delta.get(field):
                    msg[field] = (msg.get(field) or "") + delta[field]
            for tc in delta.get("tool_calls") or ():
                calls = msg.setdefault("tool_calls", [])
                i = tc.get("index", len(calls))
                while len(calls) <= i:
                    calls.append({"id": None, "type": "function",
                                  "function": {"name": "", "arguments": ""}})
                call = calls[i]
                if tc.get("id"):
                    call["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    call["function"]["name"] += fn["name"]
                if fn.get("arguments"):
                    call["function"]["arguments"] += fn["arguments"]
            if c.get("finish_reason") is not None:
                slot["finish_reason"] = c["finish_reason"]
            if c.get("stop_reason") is not None:
                slot["stop_reason"] = c["stop_reason"]
            lp = c.get("logprobs")
            if lp and lp.get("content"):
                slot.setdefault("logprobs", {"content": []})["content"].extend(lp["content"])
            if c.get("token_ids"):
                slot.setdefault("token_ids", []).extend(c["token_ids"])

    def extend(self, chunks: Iterable[Mapping[str, Any]]) -> None:
        for c in chunks:
            self.add(c)

    def result(self) -> dict[str, Any]:
        """The chat completion the chunks so far make up."""
        return {**self.response, "choices": [self._choices[i] for i in sorted(self._choices)]}
