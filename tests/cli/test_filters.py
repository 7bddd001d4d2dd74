"""The tree filters, the same on every command that selects trees (export and stats
here): each option narrows to exactly the trees it names."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

pytest.importorskip("branchpoint.store.sql")

from branchpoint.cli.filters import FILTER_OPTIONS, tree_filters
from branchpoint.cli.main import app
from branchpoint.store.builder import TreeBuilder, make_task
from branchpoint.store.log import TreeFilter, open_log
from branchpoint.store.splits import split_of

runner = CliRunner()
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
HELD = next(i for i in range(100) if split_of(i) == "heldout")
TRAIN = next(i for i in range(100) if split_of(i) == "train")
VALID = next(i for i in range(100) if split_of(i) == "validation")

# tree id: (env, task, origin, day, closed, explicit split)
TREES = {
    "a": ("fs", TRAIN, "sdk", 0, True, None),
    "b": ("shop", "ticket-9", "sampler", 1, False, None),  # a string task: no split
    "c": ("fs", TRAIN, "import", 2, True, "heldout"),  # the root's split wins
    "d": ("fs", HELD, "sdk", 3, False, None),
    "e": ("shop", VALID, "mcp", 4, True, None),
}


def _events(tree_id, spec):
    env, task, origin, day, closed, split = spec
    when = T0 + timedelta(days=day)
    b = TreeBuilder(tree_id, writer="w", clock=lambda: when)
    b.root([{"role": "user", "content": "go"}], make_task(env, task, split=split),
           origin=origin)
    node = b.step("root", {"role": "assistant", "content": "ls"},
                  [{"role": "user", "content": "ok"}], True)
    b.score(node, 0.5)
    if closed:
        b.close("done")
    return b.take()


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('filters') / 'store.db'}"

    async def fill() -> None:
        log = await open_log(url)
        for tree_id, spec in TREES.items():
            await log.append(_events(tree_id, spec))
        await log.close()

    asyncio.run(fill())
    return url


def exported(db: str, *args: str) -> set[str]:
    result = runner.invoke(app, ["export", "steps", "--db", db, *args])
    assert result.exit_code == 0, result.stderr
    return {json.loads(line)["tree_id"] for line in result.stdout.splitlines()}


def counted(db: str, *args: str) -> int:
    result = runner.invoke(app, ["stats", "--json", "--db", db, *args])
    assert result.exit_code == 0, result.stderr
    trees: int = json.loads(result.stdout)["trees"]
    return trees


@pytest.mark.parametrize(("args", "expected"), [
    ([], {"a", "b", "c", "d", "e"}),
    (["--env", "shop"], {"b", "e"}),
    (["--task", str(TRAIN)], {"a", "c"}),
    (["--task", "ticket-9"], {"b"}),
    (["--tree", "d"], {"d"}),
    (["--origin", "sdk"], {"a", "d"}),
    (["--since", "2026-11-22"], {"c", "d", "e"}),
    (["--until", "2026-11-22T12:00:00Z"], {"a", "b"}),
    (["--since", "2026-11-21T12:00:00+00:00", "--until", "2026-11-23T12:00:00"], {"b", "c"}),
    (["--finished"], {"a", "c", "e"}),
    (["--unfinished"], {"b", "d"}),
    (["--split", "train"], {"a"}),
    (["--split", "heldout"], {"c", "d"}),
    (["--split", "validation"], {"e"}),
    (["--env", "fs", "--origin", "sdk", "--unfinished"], {"d"}),
])
def test_each_filter_selects_exactly_its_trees_in_export_and_stats(db, args, expected):
    assert exported(db, *args) == expected
    assert counted(db, *args) == len(expected)


def test_a_train_split_export_never_holds_a_held_out_task(db):
    held_out = {t for t, spec in TREES.items()
                if spec[5] == "heldout" or (spec[5] is None and spec[1] == HELD)}
    assert held_out == {"c", "d"}
    assert exported(db, "--split", "train").isdisjoint(held_out)


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "yesterday"], "not an ISO 8601 date or time"),
    (["--since", "2026-11-23", "--until", "2026-11-22"], "must be before --until"),
    (["--split", "test"], "'test' is not one of"),
])
@pytest.mark.parametrize("command", [["export", "dpo"], ["stats"]])
def test_a_bad_filter_value_is_a_usage_error(db, command, args, message):
    result = runner.invoke(app, [*command, "--db", db, *args])
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize("command", ["export", "stats"])
def test_every_tree_selecting_command_documents_the_same_filters(command):
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for flag in ("--env", "--task", "--tree", "--origin", "--since", "--until",
                 "--finished", "--unfinished", "--split"):
        assert flag in result.stdout, flag


def test_any_command_takes_the_filters_by_one_decorator():
    got: list[TreeFilter] = []
    demo = typer.Typer()

    @demo.command()
    @tree_filters
    def pick(trees: TreeFilter, limit: int = 3) -> None:
        got.append(trees)

    result = runner.invoke(demo, ["--env", "fs", "--split", "heldout", "--unfinished",
                                  "--since", "2026-11-22", "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert got == [TreeFilter(env="fs", split="heldout", finished=False,
                              since=datetime(2026, 11, 22, tzinfo=UTC))]
    assert len(FILTER_OPTIONS) == 8


def test_a_command_without_a_trees_parameter_cannot_take_the_filters():
    def nothing() -> None: ...

    with pytest.raises(TypeError, match="'trees' parameter"):
        tree_filters(nothing)


def test_export_says_on_stderr_when_no_tree_matched(db):
    result = runner.invoke(app, ["export", "dpo", "--db", db, "--env", "nosuchenv"])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no tree matched the filters (env=nosuchenv)" in result.stderr
    stats = runner.invoke(app, ["stats", "--json", "--db", db, "--env", "nosuchenv"])
    assert "no tree matched" in stats.stderr


def test_rows_from_matched_trees_are_not_reported_as_no_match(db, tmp_path: Path):
    result = runner.invoke(app, ["export", "sft", "--db", db, "--tree", "a"])
    assert result.exit_code == 0
    assert "1 tree matched but gave no sft rows" in result.stderr


def test_export_events_with_filters_ingests_into_another_store_as_the_same_trees(
        db, tmp_path: Path):
    dump = tmp_path / "fs.jsonl"
    result = runner.invoke(app, ["export", "events", "--db", db, "--env", "fs",
                                 "--out", str(dump)])
    assert result.exit_code == 0, result.stderr
    copy = str(tmp_path / "copy.db")
    ingest = runner.invoke(app, ["ingest", str(dump), "--db", copy])
    assert ingest.exit_code == 0, ingest.stderr
    for fmt in ("steps", "stepwise"):
        ours = runner.invoke(app, ["export", fmt, "--db", db, "--env", "fs"]).stdout_bytes
        theirs = runner.invoke(app, ["export", fmt, "--db", copy]).stdout_bytes
        assert ours == theirs and ours
    assert exported(copy) == {"a", "c", "d"}
    again = runner.invoke(app, ["export", "events", "--db", copy]).stdout_bytes
    assert again == dump.read_bytes()


@pytest.mark.parametrize("option", [["--margin", "0.2"], ["--value", "max"],
                                    ["--tool-arguments", "string"], ["--with-metadata"],
                                    ["--judge-weight", "0.5"]])
def test_training_options_do_not_apply_to_the_events_export(db, option):
    result = runner.invoke(app, ["export", "events", "--db", db, *option])
    assert result.exit_code == 2
    assert f"{option[0]} does not apply to events" in result.stderr
