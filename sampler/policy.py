"""A policy behind an OpenAI-compatible endpoint (vLLM in production).

:class:`ChatPolicy` asks the endpoint for ``n`` candidate next steps of a conversation in
one request (so the server shares the prompt's prefix among them), turns each choice into
an assistant message, merges identical candidates (:func:`~branchpoint.store.actions.same_action`;
their count is kept) and describes what produced each one (``produced_by``: model,
sampling parameters, the request's seed, usage, finish reason, and the candidate's
logprobs and token ids where the server returns them, as vLLM does with ``logprobs`` and
``return_token_ids``).

Failures: timeouts, refused connections, 429 and 5xx answers are retried with exponential
backoff, then raised as :class:`~branchpoint.store.errors.EndpointError`; a request longer
than the model's context raises :class:`~branchpoint.store.errors.ContextOverflow` at once;
any other 4xx raises ``EndpointError`` at once. :meth:`ChatPolicy.check` verifies at start
that the endpoint answers and serves the model
(:class:`~branchpoint.store.errors.EndpointUnusable` otherwise), and
:meth:`ChatPolicy.accepts_tools` tells whether the server takes ``tools`` (vLLM started
without a tool-call parser answers such a request with HTTP 400).

Actions in text mode: :func:`text_opening` writes the tools into the opening messages as
compact usage lines (``mv SRC DST: move a file``) instead of JSON schemas, so that small
context windows hold them; the environment then parses the model's plain-text commands.
``branchpoint eval`` reuses this module.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from branchpoint.store.errors import ContextOverflow, EndpointError, EndpointUnusable

__all__ = [
    "Candidate",
    "ChatPolicy",
    "EndpointInfo",
    "Sampling",
    "merge_candidates",
    "text_opening",
    "usage_lines",
]

Message = dict[str, Any]


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters sent with every request (``seed`` is the run's base seed; each
    request derives its own from it and the node, see :meth:`ChatPolicy.propose`)."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    logprobs: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens}


@dataclass
class Candidate:
    """One distinct candidate step: the assistant message, how many of the request's
    choices were this same step, and what produced it."""

    message: Message
    count: int
    produced_by: dict[str, Any]
    completion_tokens: int = 0
    finish_reason: str | None = None


@dataclass(frozen=True)
class EndpointInfo:
    model: str
    max_model_len: int | None
    models: list[str] = field(default_factory=list)


def usage_lines(tools: Sequence[dict[str, Any]]) -> list[str]:
    """One line per tool: ``USAGE: DESCRIPTION`` (``mv SRC DST: Move a file.``)."""
    from branchpoint.sampler.envs.base import usage

    out = []
    for tool in tools:
        fn = tool.get("function", tool)
        desc = str(fn.get("description") or "").strip()
        out.append(f"{usage(tool)}: {desc}" if desc else usage(tool))
    return out


def text_opening(messages: Sequence[Message], tools: Sequence[dict[str, Any]]) -> list[Message]:
    """The opening messages for text-mode actions: the tools' usage lines appended to the
    system message (one is added in front when there is none)."""
    if not tools:
        return [dict(m) for m in messages]
    block = ("Write exactly one command per message, no other text. Commands:\n"
             + "\n".join(usage_lines(tools)))
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system" and isinstance(out[0].get("content"), str):
        out[0]["content"] = f"{out[0]['content']}\n\n{block}"
    else:
        out.insert(0, {"role": "system", "content": block})
    return out


def _assistant(msg: dict[str, Any]) -> Message:
    """The assistant message of a choice, as the environment and the store take it."""
    out: Message = {"role": "assistant", "content": msg.get("content")}
    calls = msg.get("tool_calls") or []
    if calls:
        out["tool_calls"] = [
            {"id": c.get("id") or f"call_{i}", "type": "function",
             "function": {"name": (c.get("function") or {}).get("name"),
                          "arguments": (c.get("function") or {}).get("arguments") or ""}}
            for i, c in enumerate(calls)]
    elif out["content"] is None:
        out["content"] = ""
    return out


def merge_candidates(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Identical steps (same role, content, tool names and arguments) merged into the
    first of them, their counts added; order of first appearance kept."""
    from branchpoint.store.actions import same_action

    out: list[Candidate] = []
    for cand in candidates:
        for kept in out:
            if same_action(kept.message, cand.message):
                kept.count += cand.count
                kept.produced_by["count"] = kept.count
                kept.produced_by.setdefault("merged_choices", [kept.produced_by["choice"]])
                kept.produced_by["merged_choices"].append(cand.produced_by["choice"])
                break
        else:
            out.append(cand)
    return out


def _overflow(message: str) -> bool:
    text = message.lower()
    return any(s in text for s in ("maximum context length", "max_model_len",
                                   "maximum model length", "context length",
                                   "too long", "longer than"))


class ChatPolicy:
    """Candidates for the next step, from ``model`` at ``base_url``.

    ``client`` is an ``openai.AsyncOpenAI`` (one is made when None). ``retries`` and
    ``backoff`` (seconds, doubled each try, with jitter) bound how long endpoint errors are
    retried before :class:`EndpointError` is raised.
    """

    def __init__(self, base_url: str, model: str, sampling: Sampling | None = None, *,
                 api_key: str = "EMPTY", timeout: float = 300.0, retries: int = 4,
                 backoff: float = 0.5, client: Any = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.sampling = sampling or Sampling()
        self.retries = retries
        self.backoff = backoff
        self.retried = 0
        if client is None:
            from openai import AsyncOpenAI

            client = AsyncOpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout,
                                 max_retries=0)
        self.client = client

    async def close(self) -> None:
        await self.client.close()

    async def check(self) -> EndpointInfo:
        """The endpoint answers and serves ``model``.

        Raises:
            EndpointUnusable: it cannot be reached, or lists no such model.
        """
        import openai

        try:
            page = await self.client.models.list()
        except openai.APIConnectionError as exc:
            raise EndpointUnusable(f"cannot reach the model endpoint {self.base_url}: {exc}",
                                   kind="connection") from exc
        except openai.APIStatusError as exc:
            raise EndpointUnusable(f"the model endpoint {self.base_url} answered "
                                   f"/models with HTTP {exc.status_code}",
                                   kind=f"http_{exc.status_code}") from exc
        models = [m.model_dump() for m in page.data]
        names = [str(m.get("id")) for m in models]
        for m in models:
            if m.get("id") == self.model:
                mml = m.get("max_model_len")
                return EndpointInfo(self.model, int(mml) if isinstance(mml, int) else None,
                                    names)
        raise EndpointUnusable(f"the endpoint {self.base_url} serves no model named "
                               f"{self.model!r}; it serves: {', '.join(names) or 'none'}",
                               kind="unknown_model")

    async def accepts_tools(self, messages: Sequence[Message],
                            tools: Sequence[dict[str, Any]]) -> bool:
        """Whether the server takes a request with ``tools`` (one token asked for).

        Raises:
            EndpointError: the endpoint failed for another reason.
        """
        import openai

        try:
            await self._create(list(messages), list(tools), n=1, max_tokens=1, seed=None,
                               logprobs=False)
        except EndpointError as exc:
            cause = exc.__cause__
            if isinstance(cause, openai.BadRequestError) and "tool" in str(cause).lower():
                return False
            raise
        return True

    async def _create(self, messages: list[Message], tools: list[dict[str, Any]] | None, *,
                      n: int, max_tokens: int, seed: int | None, logprobs: bool) -> Any:
        import openai

        s = self.sampling
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "n": n,
                                  "temperature": s.temperature, "top_p": s.top_p,
                                  "max_tokens": max_tokens}
        if tools:
            kwargs["tools"] = tools
        if seed is not None:
            kwargs["seed"] = seed
        if logprobs:
            kwargs["logprobs"] = True
            kwargs["extra_body"] = {"return_token_ids": True}
        attempt = 0
        while True:
            try:
                return await self.client.chat.completions.create(**kwargs)
            except openai.BadRequestError as exc:
                if _overflow(str(exc)):
                    raise ContextOverflow(f"the request is longer than the model's "
                                          f"context: {_detail(exc)}",
                                          kind="context_overflow") from exc
                raise EndpointError(f"the endpoint refused the request (HTTP 400): "
                                    f"{_detail(exc)}", kind="http_400") from exc
            except (openai.APIConnectionError, openai.RateLimitError,
                    openai.InternalServerError) as exc:
                kind = ("timeout" if isinstance(exc, openai.APITimeoutError) else
                        "connection" if isinstance(exc, openai.APIConnectionError) else
                        f"http_{getattr(exc, 'status_code', 500)}")
                if attempt >= self.retries:
                    raise EndpointError(f"the endpoint kept failing after {attempt + 1} "
                                        f"tries ({kind}): {exc}", kind=kind) from exc
                self.retried += 1
                delay = self.backoff * (2 ** attempt) * (0.5 + random.random())
                attempt += 1
                await asyncio.sleep(delay)
            except openai.APIStatusError as exc:
                raise EndpointError(f"the endpoint answered HTTP {exc.status_code}: "
                                    f"{_detail(exc)}", kind=f"http_{exc.status_code}") from exc

    async def propose(self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None,
                      n: int, *, seed: int | None = None) -> list[Candidate]:
        """``n`` candidates for the next step, identical ones merged.

        Raises:
            ContextOverflow: the conversation no longer fits the model's context.
            EndpointError: the endpoint kept failing, or refused the request.
        """
        s = self.sampling
        resp = await self._create(list(messages), list(tools) if tools else None, n=n,
                                  max_tokens=s.max_tokens, seed=seed, logprobs=s.logprobs)
        data = resp.model_dump()
        usage = data.get("usage") or {}
        base = {"policy": "openai", "model": self.model, "sampling": {**s.as_dict(), "n": n},
                "seed": seed, "request_id": data.get("id"),
                "usage": {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens")}}
        out = []
        for choice in data.get("choices") or []:
            message = _assistant(choice.get("message") or {})
            pb = {**base, "choice": choice.get("index"), "count": 1,
                  "finish_reason": choice.get("finish_reason")}
            ids = choice.get("token_ids")
            if isinstance(ids, list):
                pb["token_ids"] = ids
            lp = (choice.get("logprobs") or {}).get("content")
            if isinstance(lp, list):
                pb["logprobs"] = [t.get("logprob") for t in lp]
            tokens = len(ids) if isinstance(ids, list) else (len(lp) if isinstance(lp, list)
                                                             else 0)
            out.append(Candidate(message, 1, pb, tokens, choice.get("finish_reason")))
        if not out:
            raise EndpointError("the endpoint answered with no choices", kind="empty")
        if not any(c.completion_tokens for c in out):
            # Without token ids or logprobs, share the request's completion tokens out.
            total = int(usage.get("completion_tokens") or 0)
            for c in out:
                c.completion_tokens = total // len(out)
        return merge_candidates(out)


def _detail(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        msg = body.get("message") or (body.get("error") or {}).get("message")
        if msg:
            return str(msg)[:500]
    return str(exc)[:500]


def seed_for(base: int | None, key: str) -> int | None:
    """A request's seed: derived from the run's ``--seed`` and the node (stable across
    runs, so a resumed or repeated run asks the same questions); None without a seed."""
    if base is None:
        return None
    import hashlib

    digest = hashlib.sha256(f"{base}/{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
