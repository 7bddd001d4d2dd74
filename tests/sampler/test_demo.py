"""The expert demo drives the whole data path: play, fork, record, score, stats, export."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.sampler.demo import DemoConfig, grow_tree, run_demo
from branchpoint.store.exports import ExportOptions, compute_stats, export_lines
from branchpoint.store.log import MemoryEventLog, open_log
from branchpoint.store.tree import fold


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
