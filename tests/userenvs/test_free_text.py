"""Free-text environments: the README's example (the assistant's text taken as it is, a
total score alone, forked by replay) through ``env play``, ``demo --policy expert``,
``sample`` (text actions) and replay."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.sampler.envs.base import TextEnvironment, action_text, tasks_in_split
from branchpoint.sampler.envs.registry import env_from_task, make_env
from branchpoint.sampler.expert import read_text_turns
from branchpoint.sampler.fork import fork
from branchpoint.sampler.replay import ReplayDivergence, replay
from branchpoint.store.builder import TreeBuilder, replay_path
from branchpoint.store.events import ActionExecuted, Event, NodeCreated, ScoreAssigned
from branchpoint.store.log import open_log
from tests.sampler.scripted_endpoint import ScriptedEndpoint
from tests.userenvs.readme_env import guess

runner = CliRunner()


@pytest.fixture
def env_path(tmp_path: Path) -> Iterator[str]:
    with guess(tmp_path) as path:
        yield path


def play(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["env", "play", *args, "--json"])
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def payloads(events: list[Event]) -> list[Any]:
    return [e.payload for e in events]


def events_of(db: Path) -> list[Event]:
    async def go() -> list[Event]:
        log = await open_log(f"sqlite:///{db}")
        try:
            out: list[Event] = []
            for t in await log.list_trees():
                out += await log.read_tree(t.tree_id)
            return out
        finally:
            await log.close()

    return asyncio.run(go())


def test_the_expert_plays_a_free_text_task_in_plain_sentences(env_path: str) -> None:
    out = play(env_path, "--task", "3", "--expert")
    actions = [t["action"] for t in out["transcript"]]
    assert all(set(a) == {"role", "content"} and a["content"].startswith("Is it ")
               for a in actions)
    assert out["transcript"][-1]["observation"] == [{"role": "user", "content": "correct!"}]
    assert out["success"] is True and out["subgoals"] == []
    assert out["score"] == pytest.approx(1 - (len(actions) - 1) / 12)


def test_typed_text_reaches_the_environment_as_it_is(env_path: str, tmp_path: Path) -> None:
    moves = tmp_path / "moves.txt"
    tool_call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "guess", "arguments": "{}"}}]}
    moves.write_text("put the lamp on the table\n" + json.dumps(tool_call) + "\n"
                     "my guess: 40 (or so)\n")
    out = play(env_path, "--task", "3", "--actions", str(moves))
    seen = [t["observation"][0]["content"] for t in out["transcript"]]
    assert seen[0] == "I don't understand: say a number."
    assert seen[1].startswith("error: this environment takes plain text")
    # secret of task 3 is 3 * 37 % 100 + 1 = 12; the last number of the sentence counts
    assert seen[2] == "lower"
    assert out["done"] is False and out["score"] == 0.0


def test_options_from_the_command_line_reach_the_environment(env_path: str) -> None:
    out = play(env_path, "--task", "3", "--expert", "--option", "high=1000",
               "--option", "max_steps=40", "--option", "note=not json")
    assert out["options"] == {"high": 1000, "max_steps": 40, "note": "not json"}
    first = out["transcript"][0]["action"]["content"]
    assert first == "Is it 500?" and out["success"] is True
    bad = runner.invoke(app, ["env", "play", env_path, "--task", "3", "--option", "oops"])
    assert bad.exit_code == 2 and "expected KEY=VALUE" in bad.output


def test_a_free_text_expert_refuses_tool_calls(env_path: str) -> None:
    result = runner.invoke(app, ["env", "play", env_path, "--task", "3", "--expert",
                                 "--action-format", "tools"])
    assert result.exit_code == 1 and "takes free text" in result.output
    assert runner.invoke(app, ["env", "play", env_path, "--task", "3", "--expert",
                               "--action-format", "text", "--json"]).exit_code == 0


def test_forks_of_a_free_text_environment_replay_and_go_their_own_ways(env_path: str) -> None:
    env = make_env(env_path, 5)
    assert isinstance(env, TextEnvironment) and env.free_text and env.fork_mode == "replay"
    messages = list(env.reset().messages)
    for text in ("50", "what?", "20"):
        action = {"role": "assistant", "content": text}
        messages += [action, *env.step(action).observation]
    child = fork(env)
    assert child.history == env.history and child.steps == env.steps == 3
    child.step({"role": "assistant", "content": "1"})
    assert len(child.history) == 4 and len(env.history) == 3
    _, turns = read_text_turns(messages)  # the secret of task 5 is 86
    assert [(t.text, t.output) for t in turns] == [
        ("50", "higher"), ("what?", "I don't understand: say a number."), ("20", "higher")]


def test_demo_with_the_expert_records_text_trees_and_skips_them_the_second_time(
        env_path: str, tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    argv = ["demo", "--policy", "expert", "--env", env_path, "--tasks", "3", "--out",
            str(tmp_path / "out"), "--db", str(db), "--branch-points", "1", "--branches",
            "2", "--rollouts", "1", "--option", "high=50", "--quiet"]
    first = runner.invoke(app, argv)
    assert first.exit_code == 0, first.output
    assert "recorded 3 trees" in first.output and "0 already in the store" in first.output
    second = runner.invoke(app, argv)
    assert second.exit_code == 0, second.output
    assert "recorded 0 trees" in second.output and "3 already in the store" in second.output
    events = events_of(db)
    roots = [e for e in payloads(events) if isinstance(e, NodeCreated) and e.parent_id is None]
    assert len(roots) == 3
    for root in roots:
        assert root.task is not None
        assert root.task["env"] == env_path and root.task["options"] == {"high": 50}
        assert root.task["action_format"] == "text" and not root.tools
        assert "from 1 to 50" in root.messages[0]["content"]
    actions = [e.action for e in payloads(events) if isinstance(e, NodeCreated) and e.action]
    assert actions and all(action_text(a) and not a.get("tool_calls") for a in actions)
    assert any(isinstance(e, ScoreAssigned) for e in payloads(events))


def test_a_recorded_free_text_path_replays_and_a_changed_one_diverges(
        env_path: str, tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    result = runner.invoke(app, ["demo", "--policy", "expert", "--env", env_path, "--tasks",
                                 "1", "--out", str(tmp_path / "o"), "--db", str(db),
                                 "--branch-points", "1", "--branches", "1", "--rollouts",
                                 "1", "--quiet"])
    assert result.exit_code == 0, result.output
    events = events_of(db)
    state = TreeBuilder.resume(events[0].tree_id, events, writer="t").state
    leaf = max(state.nodes, key=lambda n: state.nodes[n].depth)
    path = replay_path(state, leaf)
    env = env_from_task(path.task)
    messages = replay(env, [(s.action, s.observation, s.done) for s in path.steps],
                      opening=path.messages)
    assert len(env.history) == len(path.steps) >= 2 and env.check().success
    assert [m["content"] for m in messages[1::2]] == \
        [s.action["content"] for s in path.steps]
    changed = [(s.action, [{"role": "user", "content": "??"}] if k == 1 else s.observation,
                s.done) for k, s in enumerate(path.steps)]
    with pytest.raises(ReplayDivergence, match="step 2"):
        replay(env_from_task(path.task), changed)


def guesses(body: dict[str, Any]) -> Any:
    """A model that reads the last hint and answers in a sentence."""
    assert "tools" not in body
    seen = [m["content"] for m in body["messages"] if m["role"] == "assistant"]
    return [{"content": f"I say {10 * (len(seen) + 1) + k}"} for k in range(body["n"])]


def test_sample_grows_free_text_trees_with_plain_text_actions(
        env_path: str, tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with ScriptedEndpoint(guesses) as ep:
        result = runner.invoke(app, [
            "sample", "--env", env_path, "--tasks", "2", "--base-url", ep.base_url,
            "--model", "tiny", "--branching", "2", "--depth", "2", "--db", f"sqlite:///{db}",
            "--quiet", "--run", "g", "--option", "max_steps=3"])
        assert result.exit_code == 0, result.output
        assert "actions as text" in result.output
        refused = runner.invoke(app, [
            "sample", "--env", env_path, "--tasks", "1", "--base-url", ep.base_url,
            "--model", "tiny", "--db", f"sqlite:///{tmp_path / 'r.db'}", "--quiet",
            "--action-format", "tools"])
    assert refused.exit_code == 1 and "offers no tools" in refused.output
    events = events_of(db)
    roots = [e for e in payloads(events) if isinstance(e, NodeCreated) and e.parent_id is None]
    assert sorted(r.task["task_id"] for r in roots if r.task) == tasks_in_split("train", 2)
    assert all(r.task and r.task["action_format"] == "text" and r.task["options"] ==
               {"max_steps": 3} and not r.tools for r in roots)
    # the opening is the environment's own: no command list added for a tool-less env
    assert all(len(r.messages) == 1 for r in roots)
    actions = [e.action for e in payloads(events) if isinstance(e, NodeCreated) and e.action]
    assert {a["content"] for a in actions} >= {"I say 10", "I say 11"}
    executed = [e for e in payloads(events) if isinstance(e, ActionExecuted)]
    assert executed and all(o["role"] == "user" for e in executed for o in e.observation)
