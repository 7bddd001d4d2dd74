"""Budget matching for `demo --compare`: the trajectory arm plays rounds of one episode per
task until its completion tokens come closest to what the step-level trees cost, and that
cost is read from the store as the sampler records it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from branchpoint.store.builder import TreeBuilder
from branchpoint.store.events import Event
from branchpoint.store.log import open_log
from branchpoint.train.compare import (
    completion_tokens,
    next_round,
    sample_episodes,
    step_tokens,
)
from branchpoint.train.pipeline import DemoSettings


def test_the_first_round_plays_every_task() -> None:
    assert next_round(10_000, 0, 0, 50) == 50


def test_a_later_round_plays_as_many_tasks_as_the_remaining_budget_buys() -> None:
    # 20 episodes cost 2,000 tokens (100 each); 350 remain: 3.5 episodes round to 4
    assert next_round(2_350, 2_000, 20, 20) == 4
    # 320 remain: 3.2 round to 3
    assert next_round(2_320, 2_000, 20, 20) == 3
    # a whole round and more remains: at most every task
    assert next_round(10_000, 2_000, 20, 20) == 20


def test_no_round_follows_once_the_budget_is_spent_or_within_half_an_episode() -> None:
    assert next_round(2_000, 2_000, 20, 20) == 0
    assert next_round(2_040, 2_000, 20, 20) == 0  # 0.4 of an episode left
    assert next_round(1_500, 2_000, 20, 20) == 0  # over already


def test_episodes_that_cost_no_tokens_stop_the_rounds_instead_of_looping() -> None:
    assert next_round(1_000, 0, 20, 20) == 0


def test_negative_counts_or_no_tasks_are_refused() -> None:
    with pytest.raises(ValueError):
        next_round(-1, 0, 0, 5)
    with pytest.raises(ValueError):
        next_round(100, 0, 0, 0)


def _play_rounds(budget: int, tasks: int, cost: list[int]) -> dict[str, object]:
    """sample_episodes over a fake player: episode i costs cost[i % len(cost)] tokens."""
    spent = [0]
    played = [0]
    log: list[tuple[int, int]] = []

    def play(round_: int, m: int) -> None:
        log.append((round_, m))
        for _ in range(m):
            spent[0] += cost[played[0] % len(cost)]
            played[0] += 1

    info = sample_episodes(DemoSettings(sample_tasks=tasks), budget, "memory://",
                           play=play, spent=lambda: spent[0], progress=lambda s, m: None)
    assert [r for r, _ in log] == list(range(1, len(log) + 1))
    assert info["rounds"] == [m for _, m in log]
    assert info["episodes"] == played[0] == sum(m for _, m in log)
    return info


def test_rounds_land_within_half_an_episode_of_the_budget_at_a_steady_cost() -> None:
    info = _play_rounds(2_350, 10, [100])
    assert info["rounds"] == [10, 10, 4]
    assert info["tokens"] == 2_400
    assert info["budget"] == 2_350
    info = _play_rounds(183_348, 200, [97])
    assert abs(info["tokens"] - 183_348) <= 97 / 2  # type: ignore[operator]
    assert info["rounds"][:-1] == [200] * (len(info["rounds"]) - 1)  # type: ignore[index]


def test_rounds_land_near_the_budget_when_episodes_vary_in_cost() -> None:
    rng = random.Random(3)
    costs = [rng.randint(20, 200) for _ in range(997)]
    mean = sum(costs) / len(costs)
    for budget in (5_000, 40_000, 123_457):
        info = _play_rounds(budget, 37, costs)
        tokens = info["tokens"]
        assert isinstance(tokens, int)
        # rounds stop only once less than half an episode (at the mean so far) remains;
        # what the last round costs over its estimate is the only overshoot
        assert budget - tokens < mean  # the mean so far differs a little from the mean
        assert tokens - budget <= 0.05 * budget + max(costs)


def test_a_budget_below_one_round_still_plays_every_task_once() -> None:
    info = _play_rounds(50, 10, [100])
    assert info["rounds"] == [10]
    assert info["tokens"] == 1_000


def _tree(tree_id: str, usages: list[tuple[str | None, int, int]]) -> list[Event]:
    """A root and, per (request id, completion tokens, candidates), that many children
    whose produced_by records the request's usage (the sampler's shape)."""
    b = TreeBuilder(tree_id, writer="t")
    b.root([{"role": "user", "content": "go"}], {"env": "fs", "task_id": 0})
    parent = "root"
    for rid, tokens, n in usages:
        produced = {"policy": "openai", "usage": {"prompt_tokens": 9,
                                                  "completion_tokens": tokens}}
        if rid is not None:
            produced["request_id"] = rid
        for i in range(n):
            child = b.step(parent, {"role": "assistant", "content": f"ls {rid} {i}"},
                           [{"role": "user", "content": "ok"}], False, produced_by=produced)
        parent = child
    return b.take()


def test_completion_tokens_count_each_request_once_however_many_candidates_it_gave() -> None:
    events = _tree("a", [("r1", 40, 4), ("r2", 7, 1), ("r3", 9, 1)])
    assert completion_tokens(events) == 40 + 7 + 9


def test_steps_without_a_request_id_count_each_and_steps_without_usage_count_nothing(
        ) -> None:
    events = [*_tree("a", [(None, 5, 2)]), *_tree("b", [("r1", 3, 1)])]
    b = TreeBuilder("c", writer="t")
    b.root([{"role": "user", "content": "go"}], {"env": "fs", "task_id": 1})
    b.step("root", {"role": "assistant", "content": "ls"}, [], True,
           produced_by={"policy": "local"})
    assert completion_tokens([*events, *b.take()]) == 5 + 5 + 3


async def test_the_step_level_budget_is_read_from_the_store_or_the_local_count(
        tmp_path: Path) -> None:
    db = f"sqlite:///{(tmp_path / 'trees.db').as_posix()}"
    log = await open_log(db)
    try:
        await log.append([*_tree("x", [("r1", 30, 3), ("r2", 12, 1)]),
                          *_tree("y", [("r3", 8, 2)])])
    finally:
        await log.close()
    assert await _in_thread(step_tokens, {"db": db, "command": ["sample"]}) == 30 + 12 + 8
    # the local engine keeps its model's own count; the store has no usage for it
    assert step_tokens({"db": db, "tokens": 1234}) == 1234


async def _in_thread(fn, *args):  # type: ignore[no-untyped-def]
    import asyncio

    return await asyncio.to_thread(fn, *args)
