"""What a first-time user types: store paths, --out paths, options that do not fit."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("branchpoint.store.sql")

from branchpoint.cli.main import app, sqlite_file, store_url
from branchpoint.sampler.envs.base import Check, Environment, Reset, StepResult, score_of
from branchpoint.store.events import encode_event
from tests.store.test_log_contract import small_tree

runner = CliRunner()


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BRANCHPOINT_DB", raising=False)
    return tmp_path


@pytest.fixture
def events_file(here: Path) -> Path:
    src = here / "events.jsonl"
    src.write_bytes(b"".join(encode_event(e) + b"\n" for e in small_tree()))
    return src


@pytest.mark.parametrize("db", ["sqlite:///typo.db", "typo.db"])
@pytest.mark.parametrize("command", [["stats"], ["stats", "--json"], ["export", "dpo"],
                                     ["export", "sft", "--out", "x.jsonl"]])
def test_a_reading_command_refuses_a_missing_database_and_creates_nothing(
        here, command, db):
    result = runner.invoke(app, [*command, "--db", db])
    assert result.exit_code == 1
    assert result.stderr == "error: no such database: typo.db\n"
    assert result.stdout == ""
    assert sorted(p.name for p in here.iterdir()) == []


def test_the_default_database_is_not_created_by_reading_either(here):
    result = runner.invoke(app, ["stats"])
    assert result.exit_code == 1 and "no such database: branchpoint.db" in result.stderr
    assert not (here / "branchpoint.db").exists()


@pytest.mark.parametrize("db", ["store.db", "sub/store.db", "ABS"])
def test_a_bare_path_is_a_sqlite_file_that_writing_commands_create(here, events_file, db):
    (here / "sub").mkdir()
    db = str(here / "abs.db") if db == "ABS" else db
    result = runner.invoke(app, ["ingest", str(events_file), "--db", db])
    assert result.exit_code == 0, result.stderr
    assert Path(db if os.path.isabs(db) else here / db).is_file()
    stats = runner.invoke(app, ["stats", "--json", "--db", db])
    assert stats.exit_code == 0, stats.stderr
    assert '"trees": 1' in stats.stdout


def test_urls_and_paths_map_to_the_same_file():
    assert store_url("runs/x.db") == "sqlite:///runs/x.db"
    assert store_url("/tmp/x.db") == "sqlite:////tmp/x.db"
    assert store_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert store_url("memory://") == "memory://"
    assert sqlite_file("sqlite:///runs/x.db") == "runs/x.db"
    assert sqlite_file("sqlite+aiosqlite:////tmp/x.db?timeout=3") == "/tmp/x.db"
    assert sqlite_file("sqlite://") is None and sqlite_file("postgresql://u@h/db") is None


@pytest.mark.parametrize("command", [["ingest"], ["export"], ["stats"]])
def test_help_says_a_bare_path_is_a_sqlite_file(command):
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert "a SQLite file path" in result.stdout


# --- export --out -----------------------------------------------------------------------


@pytest.fixture
def db(here: Path, events_file: Path) -> str:
    assert runner.invoke(app, ["ingest", str(events_file), "--db", "store.db"]).exit_code == 0
    return "store.db"


def test_out_naming_a_folder_is_refused_before_exporting(here, db):
    (here / "exports").mkdir()
    result = runner.invoke(app, ["export", "steps", "--db", db, "--out", "exports"])
    assert result.exit_code == 1
    assert result.stderr == "error: cannot write exports: it is a folder; --out names a file\n"
    assert list((here / "exports").iterdir()) == []


def test_out_in_a_missing_folder_names_the_path_and_the_folder(here, db):
    result = runner.invoke(app, ["export", "steps", "--db", db, "--out", "nope/p.jsonl"])
    assert result.exit_code == 1
    assert result.stderr == "error: cannot write nope/p.jsonl: no such folder nope\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_folder_without_write_permission_is_refused_first(here, db):
    locked = here / "locked"
    locked.mkdir(mode=0o500)
    result = runner.invoke(app, ["export", "steps", "--db", db, "--out", "locked/p.jsonl"])
    assert result.exit_code == 1
    assert "cannot write locked/p.jsonl: permission denied" in result.stderr


def test_a_write_that_fails_midway_names_the_out_path_never_the_hidden_file(
        here, db, monkeypatch):
    async def full_disk(db, fmt, options, out):
        out.write(b"{}\n")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("branchpoint.cli.data._export", full_disk)
    result = runner.invoke(app, ["export", "steps", "--db", db, "--out", "p.jsonl"])
    assert result.exit_code == 1
    assert result.stderr == "error: cannot write p.jsonl: No space left on device\n"
    assert sorted(p.name for p in here.iterdir()) == ["events.jsonl", "store.db"]


# --- options that are out of range or do not apply ------------------------------------


@pytest.mark.parametrize("args", [
    ["export", "sft", "--min-score", "7"],
    ["export", "stepwise", "--label-threshold", "-3"],
    ["export", "dpo", "--margin", "-0.1"],
    ["export", "dpo", "--judge-weight", "1.5"],
    ["stats", "--margin", "2"],
])
def test_out_of_range_values_are_usage_errors(db, args):
    result = runner.invoke(app, [*args, "--db", db])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{args[-2]}'" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["export", "sft", "--with-metadata"], "--with-metadata does not apply to sft"),
    (["export", "steps", "--with-metadata"], "--with-metadata does not apply to steps"),
    (["export", "dpo", "--min-score", "0.5"], "--min-score does not apply to dpo"),
    (["export", "sft", "--label-threshold", "0.5"], "--label-threshold does not apply"),
    (["export", "sft", "--margin", "0.2"], "--margin does not apply to sft"),
    (["export", "dpo", "--sources", "judge", "--judge-weight", "0.5"],
     "--sources does not apply with --judge-weight"),
    (["stats", "--sources", "judge", "--judge-weight", "0.5"],
     "--sources does not apply with --judge-weight"),
])
def test_options_that_do_not_apply_are_usage_errors(db, args, message):
    result = runner.invoke(app, [*args, "--db", db])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args", [
    ["export", "sft", "--min-score", "0.5"],
    ["export", "stepwise", "--label-threshold", "0.7"],
    ["export", "trajectory-pairs", "--with-metadata", "--margin", "0.3"],
])
def test_options_that_apply_are_accepted(db, args):
    result = runner.invoke(app, [*args, "--db", db])
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("args", [["--mistakes", "0.5"], ["--seed", "3"]])
def test_env_play_refuses_expert_options_without_expert(args):
    result = runner.invoke(app, ["env", "play", "fs", "--task", "1", "--json", *args])
    assert result.exit_code == 2
    assert "applies only with --expert" in result.stderr


def test_env_play_takes_the_expert_options_with_expert():
    result = runner.invoke(app, ["env", "play", "fs", "--task", "1", "--json", "--expert",
                                 "--mistakes", "0.5", "--seed", "3"])
    assert result.exit_code == 0, result.output


# --- a failed demo leaves nothing -----------------------------------------------------


class NoExpert(Environment):
    """An environment the demo cannot play: it has no scripted expert."""

    name = "noexpert"
    description = "no expert"

    def reset(self) -> Reset:
        return Reset([{"role": "user", "content": "hi"}], [])

    def step(self, action: dict) -> StepResult:
        return StepResult([{"role": "user", "content": "ok"}], True)

    def check(self) -> Check:
        return score_of([])


@pytest.mark.parametrize("env", ["nosuch", "tests.cli.test_first_use:NoExpert"])
def test_a_demo_that_fails_before_storing_anything_leaves_nothing_behind(here, env):
    result = runner.invoke(app, ["demo", "--policy", "expert", "--env", env,
                                 "--out", "runs/bad", "--tasks", "2", "--quiet"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "nosuch" in result.stderr or "no scripted expert" in result.stderr
    assert list(here.iterdir()) == []


def test_a_failed_demo_keeps_a_database_it_did_not_create(here, db):
    before = (here / db).read_bytes()
    result = runner.invoke(app, ["demo", "--policy", "expert",
                                 "--env", "tests.cli.test_first_use:NoExpert", "--db", db,
                                 "--out", "runs/x", "--tasks", "1", "--quiet"])
    assert result.exit_code == 1
    assert (here / db).read_bytes() == before
    assert not (here / "runs").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["export", "sft", "--confidence", "2"], "--confidence does not apply to sft"),
    (["export", "trajectory-pairs", "--discount", "0.9"], "--discount does not apply"),
    (["export", "events", "--binary"], "--binary does not apply to events"),
])
def test_value_options_apply_only_where_values_are_used(db, args, message):
    result = runner.invoke(app, [*args, "--db", db])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
