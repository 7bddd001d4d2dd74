"""``branchpoint sample`` end to end against a scripted endpoint (a real local HTTP server)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.cli.sample import _line, parse_options, parse_tasks
from branchpoint.sampler.envs.base import split_of, tasks_in_split
from branchpoint.sampler.grow import RunStats
from branchpoint.store.log import open_log
from tests.sampler.scripted_endpoint import ScriptedEndpoint, error

runner = CliRunner()


def submit(body: dict[str, Any]) -> Any:
    return [{"content": "submit"}] * body["n"]


def args(db: Path, url: str, *extra: str) -> list[str]:
    return ["sample", "--env", "fs", "--tasks", "2", "--base-url", url, "--model", "tiny",
            "--branching", "2", "--depth", "2", "--db", f"sqlite:///{db}", "--quiet", *extra]


def tree_ids(db: Path) -> list[str]:
    async def go() -> list[str]:
        log = await open_log(f"sqlite:///{db}")
        try:
            return [t.tree_id for t in await log.list_trees()]
        finally:
            await log.close()

    return asyncio.run(go())


def test_sample_grows_and_closes_one_tree_per_task_and_prints_a_summary(tmp_path: Path) -> None:
    db = tmp_path / "bp.db"
    with ScriptedEndpoint(submit) as ep:
        result = runner.invoke(app, args(db, ep.base_url, "--run", "r1", "--option",
                                         "max_steps=5"))
        assert result.exit_code == 0, result.output
        assert "trees: 2 in the run, 2 sampled here" in result.output
        assert "closed here: done 2" in result.output
        assert "pairs in the trees sampled here: 0" in result.output  # one action: no pair
        again = runner.invoke(app, args(db, ep.base_url, "--run", "r1", "--option",
                                        "max_steps=5"))
    assert again.exit_code == 0, again.output
    assert "0 sampled here (0 resumed), 2 finished before" in again.output
    assert sorted(tree_ids(db)) == sorted(f"r1/fs/{t}" for t in tasks_in_split("train", 2))
    sampled = [r for r in ep.requests if r["n"] == 2]  # not the tools probes (n=1)
    assert len(sampled) == 2  # the second run asked nothing


def test_the_summary_and_the_progress_line_count_the_pairs_the_export_writes(
        tmp_path: Path) -> None:
    db = tmp_path / "bp.db"

    def split(body: dict[str, Any]) -> Any:
        # submit (partial credit) against a stray file (nothing met): one pair per tree
        return [{"content": c} for c in ("submit", "write /junk.txt x")][: body["n"]]

    with ScriptedEndpoint(split) as ep:
        result = runner.invoke(app, args(db, ep.base_url, "--run", "p"))
    assert result.exit_code == 0, result.output
    assert "pairs in the trees sampled here: 2 (from 4 branching points" in result.output
    exported = runner.invoke(app, ["export", "dpo", "--db", f"sqlite:///{db}"])
    assert exported.exit_code == 0 and len(exported.stdout.splitlines()) == 2
    stats = RunStats(trees_total=3, trees_done=1, trees_running=2, pairs=5)
    assert "trees 1/3 done, 2 running" in _line(stats) and "pairs 5" in _line(stats)


def test_an_unreachable_endpoint_exits_1_before_storing_anything(tmp_path: Path) -> None:
    db = tmp_path / "bp.db"
    with ScriptedEndpoint(submit) as ep:
        url = ep.base_url
    result = runner.invoke(app, args(db, url))
    assert result.exit_code == 1
    assert "cannot reach" in result.output and "nothing was stored" in result.output
    assert not db.exists() or tree_ids(db) == []


def test_an_unknown_model_exits_1_naming_the_served_ones(tmp_path: Path) -> None:
    db = tmp_path / "bp.db"
    with ScriptedEndpoint(submit, model="other") as ep:
        result = runner.invoke(app, args(db, ep.base_url))
    assert result.exit_code == 1
    assert "no model named 'tiny'" in result.output and "other" in result.output
    assert not db.exists() or tree_ids(db) == []


def test_tools_demanded_from_a_server_that_refuses_them_exits_1(tmp_path: Path) -> None:
    db = tmp_path / "bp.db"

    def strict(body: dict[str, Any]) -> Any:
        return error(400, '"auto" tool choice requires --enable-auto-tool-choice') \
            if body.get("tools") else submit(body)

    with ScriptedEndpoint(strict) as ep:
        refused = runner.invoke(app, args(db, ep.base_url, "--action-format", "tools"))
        auto = runner.invoke(app, args(db, ep.base_url, "--run", "a"))
    assert refused.exit_code == 1 and "refuses tools" in refused.output
    assert auto.exit_code == 0 and "actions as text" in auto.output


def test_task_specs_take_a_count_or_a_range_within_the_split() -> None:
    first = parse_tasks("3", "train")
    assert len(first) == 3 and all(split_of(t) == "train" for t in first)
    ranged = parse_tasks("0:40", "heldout")
    assert ranged == [t for t in range(40) if split_of(t) == "heldout"]
    for bad in ("x", "0", "5:2", "a:b"):
        with pytest.raises(ValueError, match="--tasks"):
            parse_tasks(bad, "train")


def test_options_are_json_when_they_parse_and_strings_otherwise() -> None:
    assert parse_options(["max_steps=4", "difficulty=hard", "flags=[1,2]"]) == \
        {"max_steps": 4, "difficulty": "hard", "flags": [1, 2]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["oops"])
