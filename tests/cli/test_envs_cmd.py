"""``branchpoint envs`` and ``branchpoint env play``."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from branchpoint.cli.main import app

runner = CliRunner()


def test_envs_lists_each_registered_environment_on_one_line():
    res = runner.invoke(app, ["envs"])
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert any(line.startswith("fs ") for line in lines)
    assert all(len(line.split()) > 1 for line in lines)


def test_play_json_with_the_expert_is_one_object_with_a_full_score():
    res = runner.invoke(app, ["env", "play", "fs", "--task", "4", "--expert", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) == {"env", "task_id", "options", "transcript", "done", "score", "success",
                        "subgoals"}
    assert (out["env"], out["task_id"], out["done"], out["score"], out["success"]) == (
        "fs", 4, True, 1.0, True)
    assert out["transcript"][-1]["done"] is True
    assert all(set(s) == {"name", "met", "weight"} for s in out["subgoals"])
    call = out["transcript"][0]["action"]["tool_calls"][0]
    assert isinstance(call["function"]["arguments"], str)


def test_play_actions_file_stops_at_the_end_of_the_episode_and_never_reads_stdin(tmp_path):
    actions = tmp_path / "actions.txt"
    bad_call = {"role": "assistant", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "cat", "arguments": "{bad"}}]}
    actions.write_text("ls /\n\n" + json.dumps(bad_call) + "\nfrobnicate\nsubmit\nls\n")
    res = runner.invoke(app, ["env", "play", "fs", "--task", "5", "--actions", str(actions),
                              "--json"], input="submit\n" * 50)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [t["action"].get("content") for t in out["transcript"]] == [
        "ls /", None, "frobnicate", "submit"]
    assert out["transcript"][1]["observation"][0]["role"] == "tool"
    assert out["transcript"][1]["observation"][0]["content"].startswith(
        "error: cat: arguments are not valid JSON")
    assert out["transcript"][2]["observation"][0]["content"].startswith(
        "error: unknown tool 'frobnicate'")
    assert out["done"] is True
    assert 0.0 < out["score"] < 1.0


def test_an_unfinished_actions_file_is_checked_as_it_stands(tmp_path):
    actions = tmp_path / "a.txt"
    actions.write_text("ls\n")
    res = runner.invoke(app, ["env", "play", "fs", "--task", "5", "--actions", str(actions),
                              "--json", "--difficulty", "easy"])
    out = json.loads(res.stdout)
    assert res.exit_code == 0
    assert out["done"] is False
    assert len(out["transcript"]) == 1


def test_interactive_play_reads_commands_until_end_of_input():
    res = runner.invoke(app, ["env", "play", "fs", "--task", "1"], input="ls /\nsubmit\n")
    assert res.exit_code == 0, res.output
    assert "submitted" in res.output
    assert "score " in res.output
    assert "[x] intact" in res.output


def test_an_unknown_environment_is_an_error_naming_the_registered_ones():
    res = runner.invoke(app, ["env", "play", "nope", "--task", "1"])
    assert res.exit_code == 1
    assert "registered: fs" in res.output
