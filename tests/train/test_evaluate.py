"""Evaluation: success per task over sampled episodes, per-task JSONL, paired bootstrap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from branchpoint.sampler.envs.base import Message, tasks_in_split
from branchpoint.sampler.envs.registry import make_env
from branchpoint.train.episodes import text_opening
from branchpoint.train.evaluate import (
    evaluate,
    paired_bootstrap,
    read_results,
    write_results,
)

OPTIONS = {"difficulty": "easy", "max_steps": 12}


def expert_policy(mistakes: float):  # type: ignore[no-untyped-def]
    """The scripted expert as a batch policy (it reads the task from the conversation)."""
    def act(conversations: list[list[Message]]) -> list[Message]:
        out = []
        for conv in conversations:
            env = make_env("fs", 0, **OPTIONS)
            expert = env.expert(mistakes=mistakes, seed=len(conv), text=True)
            out.append(expert.act(conv))
        return out
    return act


def test_a_perfect_policy_succeeds_on_every_episode_and_a_quitter_on_none() -> None:
    good = evaluate(expert_policy(0.0), "fs", split="validation", tasks=5, samples=2,
                    options=OPTIONS)
    assert good.success == 1.0
    assert [t.task_id for t in good.tasks] == tasks_in_split("validation", 5)
    quit_ = evaluate(lambda convs: [{"role": "assistant", "content": "submit"}] * len(convs),
                     "fs", split="validation", tasks=5, samples=2, options=OPTIONS)
    assert quit_.success == 0.0
    assert all(t.episodes == 2 and t.successes == 0 for t in quit_.tasks)


def test_a_malformed_action_costs_a_step_and_the_step_limit_ends_the_episode() -> None:
    result = evaluate(lambda convs: [{"role": "assistant", "content": "fly away"}] * len(convs),
                      "fs", split="heldout", tasks=2, samples=1, options=OPTIONS)
    assert all(t.steps == [12] for t in result.tasks)
    assert result.success == 0.0


def test_the_policy_sees_the_text_mode_opening() -> None:
    seen: list[list[Message]] = []

    def spy(convs: list[list[Message]]) -> list[Message]:
        seen.extend(list(c) for c in convs)
        return [{"role": "assistant", "content": "submit"}] * len(convs)

    evaluate(spy, "fs", split="heldout", tasks=1, samples=1, options=OPTIONS)
    env = make_env("fs", tasks_in_split("heldout", 1)[0], **OPTIONS)
    reset = env.reset()
    assert seen[0] == text_opening(reset.messages, reset.tools)
    assert "Commands:\nls [PATH]" in seen[0][0]["content"]


def test_per_task_results_round_trip_through_jsonl(tmp_path: Path) -> None:
    result = evaluate(expert_policy(0.5), "fs", split="heldout", tasks=4, samples=3,
                      options=OPTIONS)
    path = tmp_path / "r.jsonl"
    write_results(result, path, {"model": "expert"})
    back = read_results(path)
    assert back.tasks == result.tasks
    assert back.success == pytest.approx(result.success)
    summary = json.loads(path.with_suffix(".summary.json").read_text())
    assert summary["success"] == pytest.approx(result.success)
    assert summary["n_tasks"] == 4
    first = json.loads(path.read_text().splitlines()[0])
    assert {"task", "episodes", "successes", "scores"} <= set(first)


def test_the_bootstrap_interval_excludes_zero_for_a_steady_gain_and_not_for_noise() -> None:
    before = [0.25, 0.5, 0.5, 0.75, 0.25, 0.5] * 5
    steady = [b + 0.25 for b in before]
    mean, low, high = paired_bootstrap(before, steady)
    assert mean == pytest.approx(0.25)
    assert low == pytest.approx(0.25) and high == pytest.approx(0.25)
    noisy = [b + (0.25 if i % 2 else -0.25) for i, b in enumerate(before)]
    mean, low, high = paired_bootstrap(before, noisy)
    assert low < 0 < high


def test_the_bootstrap_is_reproducible_from_its_seed() -> None:
    before = [(i * 7 % 11) / 10 for i in range(23)]
    after = [(i * 5 % 13) / 12 for i in range(23)]
    once = paired_bootstrap(before, after, resamples=500, seed=3)
    assert once == paired_bootstrap(before, after, resamples=500, seed=3)
    assert once != paired_bootstrap(before, after, resamples=500, seed=4)


def test_the_bootstrap_refuses_unpaired_lists() -> None:
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([0.1], [0.1, 0.2])
    with pytest.raises(ValueError, match="non-empty"):
        paired_bootstrap([], [])
