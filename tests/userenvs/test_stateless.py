"""Stateless tools: an environment that declares ``fork_mode = "stateless"`` forks by
adopting the conversation (no replay, no snapshot); ``sample`` and ``branch`` honour it,
so a recording whose tool results changed since still branches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.sampler.envs.base import assistant_message
from branchpoint.sampler.envs.registry import get_env, make_env
from branchpoint.sampler.fork import fork
from branchpoint.sampler.replay import reach
from branchpoint.store.builder import TreeBuilder, make_task
from branchpoint.store.events import ActionExecuted, Event, NodeCreated, ScoreAssigned
from tests.sampler.scripted_endpoint import ScriptedEndpoint
from tests.sampler.test_branch import read, store
from tests.userenvs.readme_env import faq
from tests.userenvs.test_free_text import events_of, payloads

runner = CliRunner()


@pytest.fixture
def env_path(tmp_path: Path) -> Iterator[str]:
    with faq(tmp_path) as path:
        yield path


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return assistant_message(name, arguments)


def test_a_stateless_fork_adopts_the_history_without_running_a_tool(
        env_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env(env_path, 0)
    env.reset()
    env.step(call("search", query="refund policy"))
    env.step(call("search", query="nothing"))

    def no_tools(*args: Any) -> Any:
        raise AssertionError("a stateless fork ran a tool")

    monkeypatch.setattr(get_env(env_path), "_call", no_tools)
    child = fork(env)
    assert child.history == env.history and child.steps == 2 and not child.done
    with pytest.raises(ValueError, match="stateless"):
        fork(make_env("fs", 1), "stateless")
    monkeypatch.undo()
    result = child.step(call("answer", text="You have 30 days."))
    assert result.done and child.check().success and len(env.history) == 2
    assert not env.check().success  # the parent did not answer


def test_reaching_a_recorded_step_takes_it_as_recorded(env_path: str) -> None:
    env = make_env(env_path, 1)
    changed = [(call("search", query="shipping"), [{"role": "tool", "tool_call_id": "call_0",
                                                    "content": "an answer of last year"}],
                False)]
    messages = reach(env, changed)
    assert messages[-1]["content"] == "an answer of last year"
    assert env.steps == 1 and len(env.history) == 1
    env.step(call("answer", text="It leaves within 2 business days."))
    assert env.check().score == 1.0


def recording(env_path: str, tree_id: str, task_id: int) -> list[Event]:
    """A production trajectory recorded last year: the search result no longer matches
    what the tool returns now."""
    env = make_env(env_path, task_id)
    opening = env.reset()
    b = TreeBuilder(tree_id, writer="sdk")
    b.root(opening.messages, make_task(env_path, task_id, action_format="tools"),
           tools=opening.tools, origin="sdk")
    first = call("search", query="refund")
    node = b.step("root", first, [{"role": "tool", "tool_call_id": "call_0",
                                   "content": "Refunds are accepted within 14 days."}], False)
    last = call("answer", text="You have 14 days.")
    node = b.step(node, last, env.step(last).observation, True)
    return b.take()


def answers(body: dict[str, Any]) -> Any:
    text = json.dumps({"text": "You have 30 days."})
    return [{"content": None, "tool_calls": [{"id": f"c{k}", "type": "function",
                                              "function": {"name": "answer",
                                                           "arguments": text}}]}
            for k in range(body["n"])]


def test_branch_grows_a_recording_whose_tool_results_changed(env_path: str,
                                                             tmp_path: Path) -> None:
    db = tmp_path / "bp.db"
    store(db, recording(env_path, "rec/faq/0", 0))
    with ScriptedEndpoint(answers) as ep:
        result = runner.invoke(app, ["branch", "--base-url", ep.base_url, "--model", "tiny",
                                     "--db", f"sqlite:///{db}", "--run", "b1"])
    assert result.exit_code == 0, result.output
    assert "1 branched, 0 diverged" in result.output
    events = payloads(read(db, "rec/faq/0"))
    new = [e for e in events if isinstance(e, NodeCreated) and e.parent_id is not None
           and not e.node_id.startswith("sdk.")]
    assert len(new) == 2, result.output
    scores = [e.value for e in events if isinstance(e, ScoreAssigned)]
    # the alternatives answer 30 days (right), the recorded leaf 14 days (answered only)
    assert 1.0 in scores and 0.25 in scores


def searches(body: dict[str, Any]) -> Any:
    turns = sum(1 for m in body["messages"] if m["role"] == "assistant")
    if turns == 0:
        return [{"content": None, "tool_calls": [{"id": "s", "type": "function",
                 "function": {"name": "search", "arguments": '{"query": "refund"}'}}]}
                ] * body["n"]
    return answers(body)


def test_sample_forks_a_stateless_environment(env_path: str, tmp_path: Path) -> None:
    db = tmp_path / "s.db"

    argv = ["sample", "--env", env_path, "--tasks", "2", "--model", "tiny", "--branching",
            "2", "--depth", "3", "--db", f"sqlite:///{db}", "--quiet", "--run", "st"]
    with ScriptedEndpoint(searches) as ep:
        result = runner.invoke(app, [*argv, "--base-url", ep.base_url])
    assert result.exit_code == 0, result.output
    events = payloads(events_of(db))
    executed = [e for e in events if isinstance(e, ActionExecuted)]
    assert len(executed) >= 4
    assert any(isinstance(e, ScoreAssigned) and e.value == 1.0 for e in events)


@pytest.mark.parametrize(("stateless", "diverges"), [(True, False), (False, True)])
def test_a_resumed_sample_takes_stored_steps_as_they_are_only_when_stateless(
        env_path: str, tmp_path: Path, stateless: bool, diverges: bool) -> None:
    import importlib

    module: Any = importlib.import_module(env_path.partition(":")[0])
    module.ReplayFaq = type("ReplayFaq", (module.FaqEnv,), {"fork_mode": "replay"})
    name = env_path if stateless else env_path.replace("FaqEnv", "ReplayFaq")
    task = 2
    db = tmp_path / "s.db"
    env = make_env(name, task)
    opening = env.reset()
    b = TreeBuilder(f"st/{name}/{task}", writer="s")
    b.root(opening.messages, make_task(name, task, split="train", action_format="tools",
                                       options={}), tools=opening.tools, origin="sampler")
    b.step("root", call("search", query="shipping"),
           [{"role": "tool", "tool_call_id": "call_0", "content": "changed since"}], False,
           meta={"line": "main"})
    store(db, b.take())
    with ScriptedEndpoint(answers) as ep:
        result = runner.invoke(app, ["sample", "--env", name, "--tasks", "2:3", "--model",
                                     "tiny", "--branching", "1", "--depth", "3", "--db",
                                     f"sqlite:///{db}", "--quiet", "--run", "st",
                                     "--base-url", ep.base_url])
    assert result.exit_code == 0, result.output
    assert ("replay_divergence" in result.output) is diverges, result.output
