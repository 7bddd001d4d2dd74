"""Scripted policies for tests that grow trees or episodes without a model."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from branchpoint.sampler.envs.base import Message
from branchpoint.sampler.envs.registry import make_env


def erring_expert(mistakes: float, seed: int, env: str = "fs",
                  options: dict[str, Any] | None = None,
                  ) -> Callable[[list[list[Message]]], list[Message]]:
    """A batch policy: ``env``'s scripted expert in text mode, wrong at rate ``mistakes``,
    with a fresh seed drawn from ``seed`` for every conversation it answers."""
    rng = random.Random(seed)
    opts = options if options is not None else {"difficulty": "easy", "max_steps": 12}

    def act(conversations: list[list[Message]]) -> list[Message]:
        world = make_env(env, 0, **opts)
        try:
            return [world.expert(mistakes=mistakes, seed=rng.randrange(10**9),  # type: ignore[call-arg]
                                 text=True).act(c) for c in conversations]
        finally:
            world.close()
    return act
