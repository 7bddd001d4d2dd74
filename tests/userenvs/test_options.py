"""``--option KEY=VALUE`` and ``--action-format`` on the commands that make environments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.cli.options import parse_options
from branchpoint.sampler.envs.registry import make_env
from branchpoint.sampler.expert import expert_for
from tests.sampler.userenv import IMPORT_PATH, installed

runner = CliRunner()


def test_option_values_are_json_when_they_parse_and_strings_otherwise() -> None:
    assert parse_options(["n=4", "flags=[1, 2]", "name=a=b", "empty=", "on=true"]) == \
        {"n": 4, "flags": [1, 2], "name": "a=b", "empty": "", "on": True}
    assert parse_options(["n=1", "n=2"]) == {"n": 2}
    for bad in ("oops", "=3"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_options([bad])


@pytest.mark.parametrize(("fmt", "text"), [("text", True), ("tools", False)])
def test_env_play_expert_answers_in_the_format_asked_for(fmt: str, text: bool) -> None:
    result = runner.invoke(app, ["env", "play", "fs", "--task", "2", "--expert", "--json",
                                 "--action-format", fmt, "--option", "difficulty=easy"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["success"] is True and out["options"] == {"difficulty": "easy"}
    actions = [t["action"] for t in out["transcript"]]
    assert all(bool(a.get("tool_calls")) is not text for a in actions)


def test_action_format_needs_the_expert_and_an_expert_with_both_formats(tmp_path: Path
                                                                        ) -> None:
    lone = runner.invoke(app, ["env", "play", "fs", "--task", "2", "--action-format", "text"])
    assert lone.exit_code == 2 and "--action-format applies only with --expert" in lone.output
    with installed(tmp_path):
        env = make_env(IMPORT_PATH, 1)
        with pytest.raises(ValueError, match="one action format"):
            expert_for(env, action_format="text")
        assert expert_for(env).act(env.reset().messages).get("tool_calls")
        one = runner.invoke(app, ["env", "play", IMPORT_PATH, "--task", "1", "--expert",
                                  "--action-format", "tools"])
    assert one.exit_code == 1 and "one action format" in one.output


def test_demo_records_the_options_and_the_experts_format(tmp_path: Path) -> None:
    from tests.userenvs.test_free_text import events_of, payloads

    db = tmp_path / "d.db"
    result = runner.invoke(app, ["demo", "--policy", "expert", "--env", "fs", "--tasks", "1",
                                 "--out", str(tmp_path / "o"), "--db", str(db),
                                 "--branch-points", "1", "--branches", "1", "--rollouts",
                                 "1", "--option", "max_steps=9", "--action-format", "text",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    nodes = [p for p in payloads(events_of(db)) if hasattr(p, "parent_id")]
    root = next(p for p in nodes if p.parent_id is None)
    assert root.task["options"] == {"max_steps": 9} and root.task["action_format"] == "text"
    steps = [p.action for p in nodes if getattr(p, "action", None)]
    assert steps and all(isinstance(a["content"], str) and not a.get("tool_calls")
                         for a in steps)
    bad = runner.invoke(app, ["demo", "--policy", "expert", "--env", "fs", "--option", "x",
                              "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 1 and "expected KEY=VALUE" in bad.output
    assert not (tmp_path / "o2").exists()
