"""The command line as a whole: every subcommand documents itself."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from branchpoint.cli.main import app

runner = CliRunner()


def command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    out: list[list[str]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            out.append(path)

    walk(root, [])
    return out


def test_the_command_line_has_the_documented_commands():
    names = {" ".join(p) for p in command_paths()}
    assert {"ingest", "export", "stats", "envs", "env play", "demo"} <= names


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_every_subcommand_has_help(path: list[str]):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize("path", [["ingest"], ["export"], ["stats"], ["demo"]])
def test_store_commands_take_db_after_their_name(path: list[str]):
    result = runner.invoke(app, [*path, "--help"])
    assert "--db" in result.output


def test_no_arguments_prints_help_and_exits_two():
    result = runner.invoke(app, [])
    assert result.exit_code == 2
    assert "ingest" in result.output
