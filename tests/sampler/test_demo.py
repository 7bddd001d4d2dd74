"""The expert demo drives the whole data path: play, fork, record, score, stats, export."""

from __future__ import annotations

import json
import shlex

import pytest
import typer
from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.sampler.demo import DemoConfig, grow_tree, run_demo
from branchpoint.store.exports import ExportOptions, TreeView, compute_stats, export_lines
from branchpoint.store.log import MemoryEventLog, open_log
from branchpoint.store.tree import fold
from tests.store.builders import sequenced


def test_a_demo_tree_branches_at_forks_and_scores_every_leaf():
    events, scores = grow_tree("fs", 2, DemoConfig(mistakes=0.3, branch_points=2, branches=2))
    g = fold("demo/fs/2", (e.head() for e in events))
    leaves = [n for n in g if g.out_degree(n) == 0]
    assert all(g.nodes[n]["scores"] for n in leaves)
    assert any(g.out_degree(n) >= 2 for n in g), "no node has siblings below it"
    assert events[-1].type == "tree_closed"
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_siblings_never_repeat_an_action():
    events, _ = grow_tree("shop", 5, DemoConfig(mistakes=0.5, branch_points=3, branches=4))
    seen: dict[tuple[str, str], str] = {}
    for e in events:
        if e.type == "node_created" and e.payload.parent_id is not None:
            key = (e.payload.parent_id, json.dumps(e.payload.action["tool_calls"][0]["function"]
                                                   if e.payload.action.get("tool_calls")
                                                   else e.payload.action["content"]))
            assert key not in seen, f"{e.payload.node_id} repeats {seen[key]}"
            seen[key] = e.payload.node_id


async def test_the_demo_records_trees_that_yield_pairs_and_resumes_without_duplicates():
    log = MemoryEventLog()
    config = DemoConfig(tasks=6, branch_points=2, branches=2)
    first = await run_demo(log, config)
    assert first.trees == 12
    stats = await compute_stats(log, ExportOptions())
    assert stats["trees"] == 12
    assert stats["pairs"] > 0
    assert set(stats["by_env"]) == {"fs", "shop"}
    again = await run_demo(log, config)
    assert again.trees == 0 and again.skipped == 12
    rows = [json.loads(line) async for line in export_lines(log, "dpo")]
    assert len(rows) == stats["pairs"]
    assert all(r["chosen"] != r["rejected"] for r in rows)


def test_the_demo_command_writes_a_sqlite_store_and_a_dpo_file(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--policy", "expert", "--tasks", "4",
                                      "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "DPO pairs" in result.output
    assert (tmp_path / "branchpoint.db").exists()
    lines = (tmp_path / "dpo.jsonl").read_text().splitlines()
    assert lines and all(set(json.loads(x)) >= {"prompt", "chosen", "rejected"} for x in lines)


async def test_demo_trees_land_in_sqlite_like_in_memory(tmp_path):
    log = await open_log(f"sqlite:///{tmp_path / 'd.db'}")
    try:
        await run_demo(log, DemoConfig(envs=("fs",), tasks=3))
        trees = await log.list_trees()
        assert [t.tree_id.split("/")[1] for t in trees] == ["fs"] * 3
        assert all(t.closed == "done" for t in trees)
    finally:
        await log.close()


async def test_the_demo_trains_on_training_tasks_only():
    from branchpoint.sampler.envs.base import split_of

    log = MemoryEventLog()
    await run_demo(log, DemoConfig(tasks=30, branch_points=0))
    task_ids = [t.task_id for t in await log.list_trees()]
    assert len(task_ids) == 60
    assert {split_of(int(t)) for t in task_ids} == {"train"}


def test_the_demo_holds_no_more_forks_than_it_branches_from(monkeypatch):
    from branchpoint.sampler import demo

    live: set[int] = set()
    most = 0

    def counting_fork(env):
        nonlocal most
        child = demo_fork(env)
        live.add(id(child))
        most = max(most, len(live))
        real_close = child.close

        def close():
            live.discard(id(child))
            real_close()

        child.close = close
        return child

    demo_fork = demo.fork
    monkeypatch.setattr(demo, "fork", counting_fork)
    grow_tree("fs", 2, DemoConfig(mistakes=0.3, branch_points=2, branches=2))
    assert not live, "a fork was left open"
    assert most <= 2 + 1  # the kept branch points, plus the branch being played


def test_every_expert_step_records_its_ground_truth():
    events, _ = grow_tree("fs", 3, DemoConfig(mistakes=0.4, branch_points=2, branches=3))
    steps = [e.payload for e in events
             if e.type == "node_created" and e.payload.parent_id is not None]
    assert steps
    for p in steps:
        assert {"policy", "mistakes", "seed", "mistake"} <= set(p.produced_by)
        assert p.produced_by["policy"] == "expert"
        assert isinstance(p.produced_by["mistake"], bool)
    assert any(p.produced_by["mistake"] for p in steps)
    assert not all(p.produced_by["mistake"] for p in steps)


def test_an_expert_without_mistakes_never_labels_a_step_a_mistake():
    events, _ = grow_tree("shop", 3, DemoConfig(mistakes=0.0, branch_points=2, branches=2))
    assert not any(e.payload.produced_by["mistake"] for e in events
                   if e.type == "node_created" and e.payload.parent_id is not None)


def test_each_candidate_is_continued_rollouts_times():
    config = DemoConfig(mistakes=0.3, branch_points=1, branches=2, rollouts=4)
    events, scores = grow_tree("fs", 4, config)
    assert len(scores) == 1 + 2 * 4  # the main line, then 2 candidates x 4 rollouts
    view = TreeView("demo/fs/4", sequenced(events), ExportOptions())
    fork_point = next(n for n in view.graph if view.graph.out_degree(n) >= 2)
    below = sum(view.estimates[c].leaves for c in view.graph.successors(fork_point)
                if c in view.estimates)
    # identical rollouts end in one leaf; the counts still weigh every draw
    assert 2 <= below <= 1 + 2 * 4


def test_identical_draws_are_one_node_that_counts_them():
    config = DemoConfig(mistakes=0.0, branch_points=1, branches=3, rollouts=2)
    events, _ = grow_tree("shop", 6, config)
    counts = [e.payload.produced_by.get("count", 1) for e in events
              if e.type == "node_created" and e.payload.parent_id is not None]
    # without mistakes every draw is the main line's step: all merge into it
    assert max(counts) >= 4


def test_rollouts_must_be_positive():
    with pytest.raises(ValueError, match="rollouts"):
        DemoConfig(rollouts=0)


def test_the_demo_prints_the_export_command_that_reproduces_its_file(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--policy", "expert", "--tasks", "3",
                                      "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "pair precision" in result.output
    command = next(line.strip() for line in result.output.splitlines()
                   if line.strip().startswith("branchpoint export dpo"))
    words = shlex.split(command)
    again = tmp_path / "again.jsonl"
    words[words.index("--out") + 1] = str(again)
    rerun = CliRunner().invoke(app, words[1:])
    assert rerun.exit_code == 0, rerun.output
    assert again.read_bytes() == (tmp_path / "dpo.jsonl").read_bytes()
    assert again.read_bytes()


def test_the_demo_cli_defaults_are_the_demo_configs():
    import inspect

    from branchpoint.cli.demo import register

    probe = typer.Typer()
    register(probe)
    sig = inspect.signature(probe.registered_commands[0].callback)
    config = DemoConfig()
    for name in ("tasks", "mistakes", "branch_points", "branches", "rollouts"):
        assert sig.parameters[name].default == getattr(config, name), name
