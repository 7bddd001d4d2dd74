"""The pieces of `demo --compare` that need no model: independent episodes grown in-process
become trajectory-level pairs in TRL's conversational preference format through the store,
and the compare block holds every figure with its paired-bootstrap interval."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.sampler.envs.base import tasks_in_split
from branchpoint.store.exports import ExportOptions, export_lines
from branchpoint.store.log import open_log
from branchpoint.train.compare import ARMS, check_preference_rows, compare_block
from branchpoint.train.evaluate import EvalResult, TaskResult, paired_bootstrap
from branchpoint.train.grow import grow_episodes
from branchpoint.train.pipeline import Stage
from tests.experts import erring_expert

OPTIONS = {"difficulty": "easy", "max_steps": 12}



async def test_rounds_of_episodes_pair_best_against_worst_across_their_trees() -> None:
    tasks = tasks_in_split("train", 5)
    policy = erring_expert(0.5, 2)
    events = [*grow_episodes(policy, "fs", tasks, run="ep1", options=OPTIONS),
              *grow_episodes(policy, "fs", tasks, run="ep2", options=OPTIONS),
              *grow_episodes(policy, "fs", tasks[:2], run="ep3", episodes=3,
                             options=OPTIONS)]
    log = await open_log("memory://")
    try:
        await log.append(events)
        trees = await log.list_trees()
        assert len(trees) == 5 + 5 + 2
        assert all(t.closed == "done" and t.split == "train" for t in trees)
        rows = [json.loads(x) async for x in export_lines(
            log, "trajectory-pairs", ExportOptions(margin=0.1, with_metadata=True))]
    finally:
        await log.close()
    roots = [e for e in events if e.event_id.endswith("/root")]
    assert {r.payload.meta["strategy"] for r in roots} == {"episodes"}  # type: ignore[attr-defined]
    assert rows, "an expert erring half the time must finish some episodes better than others"
    check_preference_rows(rows)
    for row in rows:
        meta = row["metadata"]
        assert meta["chosen_value"] >= meta["rejected_value"] + 0.1 - 1e-9
        assert "Commands:" in row["prompt"][0]["content"]  # the text-mode opening
        assert row["prompt"][-1]["role"] == "user"
    # TRL reads these rows as conversational preference data with an explicit prompt
    data_utils = pytest.importorskip("trl.data_utils")
    assert all(data_utils.is_conversational(r) for r in rows)


def test_one_tree_holds_k_independent_episodes_each_played_to_its_end() -> None:
    tasks = tasks_in_split("train", 3)
    events = grow_episodes(erring_expert(0.6, 5), "fs", tasks, run="k", episodes=4,
                           options=OPTIONS)
    for task in tasks:
        mine = [e for e in events if e.tree_id == f"k/fs/{task}"]
        scores = [e for e in mine if type(e.payload).__name__ == "ScoreAssigned"]
        # one checker score per episode (episodes that took the same steps share a leaf)
        assert len(scores) == 4
        created = [e.payload for e in mine if type(e.payload).__name__ == "NodeCreated"]
        leaves = {s.payload.node_id for s in scores}  # type: ignore[attr-defined]
        parents = {getattr(c, "parent_id", None) for c in created}
        assert not leaves & parents  # every scored node ends an episode


def test_grow_episodes_refuses_fewer_than_one_episode() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        grow_episodes(erring_expert(0.0, 0), "fs", [0], run="z", episodes=0)


def test_rows_that_are_not_conversational_preference_rows_are_refused() -> None:
    good = {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            "chosen": [{"role": "assistant", "content": "a"},
                       {"role": "user", "content": "o"},
                       {"role": "assistant", "content": "b"}],
            "rejected": [{"role": "assistant", "content": "c"}]}
    check_preference_rows([good])
    bad = [{**good, "chosen": "a"},
           {**good, "prompt": [*good["prompt"], {"role": "assistant", "content": "x"}]},
           {**good, "rejected": [{"role": "assistant", "content": "c"},
                                 {"role": "user", "content": "o"}]},
           {k: v for k, v in good.items() if k != "prompt"}]
    for i, row in enumerate(bad):
        with pytest.raises(ValueError, match="pair 2"):
            check_preference_rows([good, row])
        del i


def _result(rates: list[list[int]]) -> EvalResult:
    """Per task, the successes (0/1) of its episodes; tasks 7, 8, ..."""
    return EvalResult("fs", "heldout", [
        TaskResult("fs", 7 + i, len(eps), sum(eps), [0.5 + 0.5 * e for e in eps])
        for i, eps in enumerate(rates)])


SFT = _result([[0, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
STEP = _result([[1, 1, 0, 1], [0, 1, 0, 0], [1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 0, 0]])
BINARY = _result([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 1]])
TRAJ = _result([[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]])


def _rates(r: EvalResult) -> list[float]:
    return [t.success_rate for t in sorted(r.tasks, key=lambda t: t.task_id)]


def test_the_compare_block_holds_every_arm_and_difference_with_its_interval() -> None:
    # the step arm's tasks in another order: arms are paired by task, not by position
    step = EvalResult("fs", "heldout", list(reversed(STEP.tasks)))
    stages = [Stage("binary_pairs", 1.25, False, "/x/binary_pairs-1")]
    block = compare_block({"sft": SFT, "step": step, "binary": BINARY, "trajectory": TRAJ},
                          {"step": 40, "binary": 12, "trajectory": 9},
                          {"step": 1000, "binary": 1000, "trajectory": 990},
                          budget={"step_tokens": 1000, "trajectory_tokens": 990},
                          stages=stages, eval_samples=4)
    assert block["n_eval_tasks"] == 5 and block["eval_samples"] == 4
    assert block["success"] == {"sft": SFT.success, "step": STEP.success,
                                "binary": BINARY.success, "trajectory": TRAJ.success}
    assert block["n_pairs"] == {"step": 40, "binary": 12, "trajectory": 9}
    assert block["completion_tokens"] == {"step": 1000, "binary": 1000, "trajectory": 990}
    assert block["budget"] == {"step_tokens": 1000, "trajectory_tokens": 990}
    assert block["stages"] == [{"name": "binary_pairs", "seconds": 1.2, "cached": False,
                                "folder": "/x/binary_pairs-1"}]
    results = {"sft": SFT, "step": STEP, "binary": BINARY, "trajectory": TRAJ}
    for arm in ARMS:
        a = block["arms"][arm]
        assert a["success"] == results[arm].success
        assert a["mean_score"] == results[arm].mean_score
        assert a["trained"] is True
        if arm == "sft":
            assert a["difference_vs_sft"] is None and a["difference_vs_sft_ci95"] is None
            assert a["n_pairs"] is None and a["completion_tokens"] is None
            continue
        mean, low, high = paired_bootstrap(_rates(SFT), _rates(results[arm]))
        assert a["difference_vs_sft"] == pytest.approx(mean)
        assert a["difference_vs_sft_ci95"] == [low, high]
        assert block["differences"][f"{arm}_vs_sft"] == {"difference": a["difference_vs_sft"],
                                                        "ci95": [low, high]}
    for key, base, other in (("step_minus_trajectory", TRAJ, STEP),
                             ("step_minus_binary", BINARY, STEP)):
        mean, low, high = paired_bootstrap(_rates(base), _rates(other))
        d = block["differences"][key]
        assert d["difference"] == pytest.approx(mean)
        assert d["difference"] == pytest.approx(STEP.success - base.success)
        assert d["ci95"] == [low, high] and low <= mean <= high
    assert block["differences"]["step_minus_trajectory"]["difference"] > 0
    json.dumps(block)  # the report is JSON


def test_an_arm_without_pairs_is_reported_untrained_with_no_figures() -> None:
    block = compare_block({"sft": SFT, "step": STEP, "binary": None, "trajectory": TRAJ},
                          {"step": 40, "binary": 0, "trajectory": 9},
                          {"step": 1000, "binary": 1000, "trajectory": 990},
                          budget={}, stages=[], eval_samples=4)
    binary = block["arms"]["binary"]
    assert binary["trained"] is False and binary["n_pairs"] == 0
    assert binary["success"] is None and binary["difference_vs_sft"] is None
    assert block["differences"]["step_minus_binary"] == {"difference": None, "ci95": None}
    assert block["differences"]["step_minus_trajectory"]["difference"] is not None


def test_arms_evaluated_on_different_tasks_are_refused() -> None:
    other = _result([[1, 1, 1, 1]] * 4)
    with pytest.raises(ValueError, match="different tasks"):
        compare_block({"sft": SFT, "step": other, "binary": None, "trajectory": None},
                      {}, {}, budget={}, stages=[], eval_samples=4)


def test_compare_is_refused_with_the_expert_policy() -> None:
    result = CliRunner().invoke(app, ["demo", "--policy", "expert", "--compare"])
    assert result.exit_code != 0
    assert "--compare applies to --policy model" in result.output
