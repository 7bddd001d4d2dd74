"""``branchpoint export`` and ``branchpoint stats`` through the real command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("branchpoint.store.sql")

from branchpoint.cli.main import app
from branchpoint.store.exports import ExportOptions, compute_stats
from branchpoint.store.log import open_log
from tests.store.test_core_exports import CASES, GOLDEN, scenario

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def fill() -> None:
        log = await open_log(url)
        for b in scenario():
            await log.append(b.events)
        await log.close()

    asyncio.run(fill())
    return url


def flags(fmt: str) -> list[str]:
    out = []
    for key, value in CASES[fmt].items():
        name = "--" + key.replace("_", "-")
        out += [name] if value is True else [name, str(value)]
    return out


@pytest.mark.parametrize("fmt", list(CASES))
def test_export_writes_the_golden_bytes_to_stdout(db: str, fmt: str):
    result = runner.invoke(app, ["export", fmt, "--db", db, *flags(fmt)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == (GOLDEN / f"{fmt}.jsonl").read_bytes()
    assert "exported" in result.stderr


def test_export_to_a_file_writes_the_same_bytes_as_stdout(db: str, tmp_path: Path):
    out = tmp_path / "dpo.jsonl"
    result = runner.invoke(app, ["export", "dpo", "--db", db, "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    stdout = runner.invoke(app, ["export", "dpo", "--db", db]).stdout_bytes
    assert out.read_bytes() == stdout
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_export_options_reach_the_export(db: str):
    result = runner.invoke(app, ["export", "steps", "--db", db, "--env", "shop"])
    assert {json.loads(x)["tree_id"] for x in result.stdout.splitlines()} == {"t3"}
    strings = runner.invoke(app, ["export", "dpo", "--db", db, "--tool-arguments", "string"])
    row = json.loads(strings.stdout.splitlines()[1])
    assert isinstance(row["chosen"][0]["tool_calls"][0]["function"]["arguments"], str)
    wide = runner.invoke(app, ["export", "dpo", "--db", db, "--margin", "0.6"])
    assert len(wide.stdout.splitlines()) == 1
    judged = runner.invoke(app, ["export", "dpo", "--db", db, "--env", "shop",
                                 "--judge-weight", "0", "--value", "max"])
    assert judged.exit_code == 0 and judged.stdout
    checker = runner.invoke(app, ["export", "sft", "--db", db, "--sources", "checker",
                                  "--min-score", "1"])
    assert len(checker.stdout.splitlines()) == 2


def test_stats_json_has_the_documented_shape(db: str):
    result = runner.invoke(app, ["stats", "--json", "--db", db])
    assert result.exit_code == 0, result.stderr
    stats = json.loads(result.stdout)
    assert set(stats) == {"trees", "nodes", "branching_points", "pairs", "dropped", "by_env"}
    assert set(stats["dropped"]) == {"tie", "under_margin", "identical", "low_confidence"}
    assert set(stats["by_env"]["fs"]) == set(stats) - {"by_env"}

    async def direct() -> dict:
        log = await open_log(db)
        try:
            return await compute_stats(log, ExportOptions())
        finally:
            await log.close()

    assert stats == asyncio.run(direct())


def test_stats_without_json_prints_a_table(db: str):
    result = runner.invoke(app, ["stats", "--db", db, "--margin", "0.2"])
    assert result.exit_code == 0, result.stderr
    assert "shop" in result.stdout and "branching" in result.stdout


@pytest.mark.parametrize("args", [
    ["export", "csv"],
    ["export", "dpo", "--margin", "-1"],
    ["export", "dpo", "--judge-weight", "1.5"],
    ["export", "dpo", "--value", "median"],
    ["export", "dpo", "--tool-arguments", "yaml"],
    ["export", "dpo", "--sources", ","],
    ["stats", "--margin", "-0.5"],
])
def test_usage_errors_exit_2(db: str, args: list[str]):
    result = runner.invoke(app, [*args, "--db", db])
    assert result.exit_code == 2
    assert result.stdout == ""


@pytest.mark.parametrize("kind", ["not a database", "no such backend"])
def test_a_store_that_cannot_be_opened_exits_1_with_the_error_on_stderr(
        tmp_path: Path, kind: str):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a SQLite file" * 100)
    bad = f"sqlite:///{junk}" if kind == "not a database" else "mysql://x/y"
    for args in (["export", "dpo"], ["stats", "--json"]):
        result = runner.invoke(app, [*args, "--db", bad])
        assert result.exit_code == 1
        assert result.stdout == "" and "error:" in result.stderr


def test_an_unwritable_out_file_exits_1(db: str, tmp_path: Path):
    result = runner.invoke(app, ["export", "dpo", "--db", db,
                                 "--out", str(tmp_path / "no" / "such" / "f.jsonl")])
    assert result.exit_code == 1 and "error:" in result.stderr


@pytest.mark.parametrize("command", ["export", "stats"])
def test_each_command_has_help(command: str):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "--db" in result.stdout


@pytest.mark.slow
def test_a_reader_that_stops_early_ends_the_export_quietly(tmp_path: Path):
    import subprocess
    import sys

    from tests.store.builders import two_step_tree

    url = f"sqlite:///{tmp_path / 'many.db'}"

    async def fill() -> None:
        log = await open_log(url)
        for i in range(300):  # far more than a pipe buffer of steps
            await log.append(two_step_tree(f"t{i}").events)
        await log.close()

    asyncio.run(fill())
    proc = subprocess.Popen(
        [sys.executable, "-c", "from branchpoint.cli.main import main; main()",
         "export", "steps", "--db", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["tree_id"] == "t0"
    proc.stdout.close()  # what `| head -1` does
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0
    assert b"error" not in err.lower()


def test_confidence_discount_and_binary_reach_export_and_stats(db: str):
    args = ["--confidence", "1", "--discount", "0.9", "--binary"]
    result = runner.invoke(app, ["stats", "--json", "--db", db, *args])
    assert result.exit_code == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["pairs"] + sum(stats["dropped"].values()) == stats["branching_points"]
    assert stats["dropped"]["low_confidence"] > 0

    async def direct() -> dict:
        log = await open_log(db)
        try:
            return await compute_stats(log, ExportOptions(confidence=1.0, discount=0.9,
                                                          binary=True))
        finally:
            await log.close()

    assert stats == asyncio.run(direct())
    out = runner.invoke(app, ["export", "dpo", "--db", db, "--with-metadata", *args])
    assert out.exit_code == 0, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(rows) == stats["pairs"]
    for r in rows:
        m = r["metadata"]
        assert m["margin"] >= 1.0 * (m["chosen_se"] ** 2 + m["rejected_se"] ** 2) ** 0.5 - 1e-9


@pytest.mark.parametrize("bad", [["--discount", "0"], ["--discount", "1.5"],
                                 ["--confidence", "-1"]])
def test_an_out_of_range_value_option_is_refused_by_name(db: str, bad: list[str]):
    result = runner.invoke(app, ["stats", "--db", db, *bad])
    assert result.exit_code != 0
    assert bad[0].strip("-") in result.stderr.lower() + result.stdout.lower()
