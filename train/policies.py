"""Batch policies for :func:`branchpoint.train.evaluate.evaluate`: a model served behind
any OpenAI-compatible endpoint (through the sampler's :class:`ChatPolicy`, text actions,
one request per live episode, bounded concurrency), or a local model folder run with
transformers (:class:`branchpoint.train.local.LocalPolicy`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from branchpoint.sampler.envs.base import Message
from branchpoint.train.evaluate import BatchPolicy

__all__ = ["endpoint_policy", "local_policy"]


def local_policy(model: str, *, temperature: float, max_tokens: int, seed: int,
                 ) -> tuple[BatchPolicy, Callable[[], None]]:
    """A local transformers model as a batch policy, and a no-op closer."""
    from branchpoint.train.local import LocalPolicy

    policy = LocalPolicy(model, temperature=temperature, max_new_tokens=max_tokens,
                         seed=seed)
    return policy, lambda: None


class _Loop:
    """One event loop on a thread of its own, so that a synchronous caller can run
    coroutines on a client that lives across calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def endpoint_policy(base_url: str, model: str, *, temperature: float, max_tokens: int,
                    seed: int, concurrency: int = 32,
                    ) -> tuple[BatchPolicy, Callable[[], None]]:
    """A served model as a batch policy (checked at once: the endpoint answers and serves
    ``model``), and the function that closes its client.

    A conversation that no longer fits the model's context gets an empty action (the
    environment answers it with an error and counts the step), as the model could not go
    on.

    Raises:
        EndpointUnusable: the endpoint cannot be reached or serves no such model.
    """
    from branchpoint.sampler.policy import ChatPolicy, Sampling
    from branchpoint.store.errors import ContextOverflow

    runner = _Loop()
    sampling = Sampling(temperature=temperature, max_tokens=max_tokens, seed=seed,
                        logprobs=False)
    chat: Any = runner.run(_make(ChatPolicy, base_url, model, sampling))
    try:
        runner.run(chat.check())
    except BaseException:
        runner.run(chat.close())
        runner.close()
        raise
    calls = [0]

    async def one(messages: list[Message], gate: asyncio.Semaphore) -> Message:
        async with gate:
            calls[0] += 1
            try:
                candidates = await chat.propose(messages, None, 1,
                                                seed=seed * 1_000_003 + calls[0])
            except ContextOverflow:
                return {"role": "assistant", "content": ""}
            message: Message = candidates[0].message
            return message

    async def batch(conversations: list[list[Message]]) -> list[Message]:
        gate = asyncio.Semaphore(concurrency)
        return list(await asyncio.gather(*(one(c, gate) for c in conversations)))

    def policy(conversations: list[list[Message]]) -> list[Message]:
        result: list[Message] = runner.run(batch(conversations))
        return result

    def close() -> None:
        runner.run(chat.close())
        runner.close()

    return policy, close


async def _make(cls: Any, base_url: str, model: str, sampling: Any) -> Any:
    # The async client binds to the loop it is made on.
    return cls(base_url, model, sampling)
