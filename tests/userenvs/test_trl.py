"""``--env trl``: the README's TRL-style tool class (reset(**row), typed docstringed
methods as tools, a TRL reward function) played, sampled, recorded and branched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.cli.options import parse_options
from branchpoint.sampler.envs.registry import env_from_task, make_env
from branchpoint.sampler.envs.trl import TrlEnv
from branchpoint.sampler.fork import fork
from branchpoint.store.builder import TreeBuilder
from branchpoint.store.events import NodeCreated, ScoreAssigned
from tests.sampler.scripted_endpoint import ScriptedEndpoint
from tests.sampler.test_branch import read, store
from tests.userenvs.readme_env import support_tools
from tests.userenvs.test_free_text import events_of, payloads

runner = CliRunner()


@pytest.fixture
def options(tmp_path: Path) -> Iterator[list[str]]:
    with support_tools(tmp_path) as opts:
        yield opts


def flags(options: list[str]) -> list[str]:
    return [w for o in options for w in ("--option", o)]


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def test_tools_are_the_public_typed_methods_described_as_trl_describes_them(
        options: list[str]) -> None:
    env = make_env("trl", 0, **parse_options(options))
    start = env.reset()
    assert start.messages == [{"role": "user", "content": "Please refund my order of $12.50."}]
    by_name = {t["function"]["name"]: t["function"] for t in start.tools}
    assert set(by_name) == {"get_balance", "refund"}
    assert by_name["refund"]["description"] == "Refund part of the balance to the customer."
    assert by_name["refund"]["parameters"]["properties"]["amount"] == \
        {"type": "number", "description": "Dollars to refund."}
    assert by_name["refund"]["parameters"]["required"] == ["amount"]


def test_the_reward_function_scores_mapped_into_its_range_with_the_raw_value_kept(
        options: list[str]) -> None:
    env = make_env("trl", 0, **parse_options(options))
    env.reset()
    assert env.check().score == 0.0 and env.check().detail == {"reward": -1.0}
    assert env.step(call("refund", amount=10.0)).observation[0]["content"] == "refunded 10.00"
    half = env.check()  # raw 1 - 2.5/12.5 = 0.8, mapped from [-1, 1]: 0.9
    assert half.detail == {"reward": pytest.approx(0.8)} and half.score == pytest.approx(0.9)
    assert env.step({"role": "assistant", "content": "Done, refunded."}).done
    clipped = make_env("trl", 0, **parse_options(options[:3]))  # no range: clipped
    clipped.reset()
    assert clipped.check().score == 0.0 and clipped.check().detail == {"reward": -1.0}


def test_env_play_runs_tool_calls_and_text_commands_from_a_file(
        options: list[str], tmp_path: Path) -> None:
    moves = tmp_path / "moves.txt"
    moves.write_text("get_balance\n" + json.dumps(call("refund", amount=12.5)) +
                     "\nrefund 99\nThe refund is on its way.\n")
    result = runner.invoke(app, ["env", "play", "trl", "--task", "0", "--actions",
                                 str(moves), "--json", *flags(options)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    seen = [t["observation"] for t in out["transcript"]]
    assert seen[0][0]["content"] == "40.00" and seen[1][0]["content"] == "refunded 12.50"
    assert seen[2][0]["content"] == "refused: more than the balance"
    assert seen[3] == [] and out["done"] is True
    assert out["score"] == 1.0 and out["success"] is True


def test_rows_record_themselves_so_replay_never_reads_the_file(
        options: list[str], tmp_path: Path) -> None:
    env = make_env("trl", 1, **parse_options(options))
    env.reset()
    env.step(call("refund", amount=30.0))
    task = env.task
    assert task["row"]["expected"] == 30.0 and task["split"] == "train"
    assert task["class"] == "support_tools:SupportTools" and task["task_id"] == 1
    (tmp_path / "rows.jsonl").unlink()
    from branchpoint.sampler.envs import trl

    trl._rows.cache_clear()
    again = env_from_task(task)
    assert again.reset().messages == env.reset().messages
    child = fork(env)
    assert child.history == env.history
    (tmp_path / "one.jsonl").write_text('{"balance": 1.0, "expected": 1.0}\n')
    with pytest.raises(ValueError, match="past the end"):
        TrlEnv(1, **{**parse_options(options), "tasks_file": str(tmp_path / "one.jsonl")})


def test_bad_options_are_refused_with_what_was_wrong(options: list[str]) -> None:
    base = parse_options(options)
    for change, message in (({"class": None}, "needs --option class"),
                            ({"class": "nosuch.mod:X"}, "cannot import"),
                            ({"tasks_file": None}, "needs --option tasks_file"),
                            ({"reward_range": "1:0"}, "LOW < HIGH"),
                            ({"reward": "support_tools:nosuch"}, "has no 'nosuch'")):
        opts = {k: v for k, v in {**base, **change}.items() if v is not None}
        with pytest.raises(ValueError, match=message):
            make_env("trl", 0, **opts)
    result = runner.invoke(app, ["env", "play", "trl", "--task", "7", "--expert",
                                 *flags(options)])
    assert result.exit_code == 1 and "past the end" in result.output


def refunds(body: dict[str, Any]) -> Any:
    """Refund what the prompt asks for, then say so."""
    if any(m["role"] == "tool" for m in body["messages"]):
        return [{"content": "Done."}] * body["n"]
    text = body["messages"][0]["content"]
    amount = float(text.split("$")[1].split()[0].rstrip(".,"))
    return [{"content": None, "tool_calls": [{"id": "r", "type": "function", "function": {
        "name": "refund", "arguments": json.dumps({"amount": amount + k})}}]}
        for k in range(body["n"])]


def test_sample_grows_trees_of_the_train_rows_and_says_when_the_file_ends(
        options: list[str], tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with ScriptedEndpoint(refunds) as ep:
        result = runner.invoke(app, ["sample", "--env", "trl", "--tasks", "10", "--base-url",
                                     ep.base_url, "--model", "tiny", "--branching", "2",
                                     "--depth", "2", "--db", f"sqlite:///{db}", "--quiet",
                                     "--run", "t", *flags(options)])
    assert result.exit_code == 0, result.output
    assert "trl has only 3 train tasks; sampling those" in result.output
    events = payloads(events_of(db))
    roots = [e for e in events if isinstance(e, NodeCreated) and e.parent_id is None]
    assert sorted(r.task["task_id"] for r in roots if r.task) == [0, 1, 3]  # 2 is heldout
    assert all(r.task and r.task["row"] and r.task["split"] == "train" for r in roots)
    scores = [e for e in events if isinstance(e, ScoreAssigned)]
    assert {s.value for s in scores} >= {1.0}
    assert all("reward" in (s.detail or {}) for s in scores)


def test_branch_grows_a_recorded_trajectory_from_the_recorded_row(
        options: list[str], tmp_path: Path) -> None:
    env = make_env("trl", 3, **parse_options(options))
    opening = env.reset()
    b = TreeBuilder("rec/trl/3", writer="sdk")
    b.root(opening.messages, {**env.task, "action_format": "tools"}, tools=opening.tools,
           origin="sdk")
    node = "root"
    for action in (call("get_balance"), call("refund", amount=4.0),
                   {"role": "assistant", "content": "Refunded $4."}):
        result = env.step(action)
        node = b.step(node, action, result.observation, result.done)
    db = tmp_path / "b.db"
    store(db, b.take())
    (tmp_path / "rows.jsonl").unlink()
    with ScriptedEndpoint(refunds) as ep:
        out = runner.invoke(app, ["branch", "--base-url", ep.base_url, "--model", "tiny",
                                  "--db", f"sqlite:///{db}", "--run", "b1"])
    assert out.exit_code == 0, out.output
    assert "1 branched, 0 diverged" in out.output
    events = payloads(read(db, "rec/trl/3"))
    scores = {e.node_id: e.value for e in events if isinstance(e, ScoreAssigned)}
    assert scores[node] == pytest.approx(0.9)  # the recorded leaf: 4 of 5 refunded
    assert 1.0 in scores.values()  # an alternative refunded the 5 asked for


LOOKUP = '''
class Lookup:
    stateless = True  # the tools change nothing: forks copy the conversation

    def reset(self, **row):
        self.facts = row["facts"]

    def lookup(self, key: str) -> str:
        """Look a fact up.

        Args:
            key: The fact's name.
        """
        return self.facts.get(key, "unknown")


def says_answer(prompts, completions, answer, **kwargs):
    return [float(any(m["role"] == "assistant" and want in (m.get("content") or "")
                      for m in c)) for c, want in zip(completions, answer)]
'''


def test_a_stateless_class_forks_by_copying_the_conversation_and_scores_from_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lookup_tools.py").write_text(LOOKUP)
    (tmp_path / "facts.jsonl").write_text(json.dumps(
        {"prompt": "What is the answer?", "facts": {"answer": "42"}, "answer": "42"}) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = make_env("trl", 0, **{"class": "lookup_tools:Lookup", "reward":
                                "lookup_tools:says_answer",
                                "tasks_file": str(tmp_path / "facts.jsonl")})
    assert env.fork_mode == "stateless"
    env.reset()
    assert env.step(call("lookup", key="answer")).observation[0]["content"] == "42"
    cls = type(env.instance)

    def no_tools(*args: Any) -> Any:
        raise AssertionError("a stateless fork ran a tool")

    monkeypatch.setattr(cls, "lookup", no_tools)
    child = fork(env)
    assert child.history == env.history
    monkeypatch.undo()
    assert child.check().score == 0.0
    assert child.step({"role": "assistant", "content": "It is 42."}).done
    assert child.check().score == 1.0 and env.check().score == 0.0


def judged(body: dict[str, Any]) -> Any:
    """The judge: partial credit from how much of the asked-for refund was given."""
    transcript = body["messages"][-1]["content"]
    return [{"content": json.dumps({"score": 1.0 if "refunded 12.50" in transcript else 0.5,
                                    "rationale": "the refund asked for" if "12.50" in
                                    transcript else "another amount"})}] * body["n"]


def test_without_a_reward_the_judge_scores_and_without_a_judge_sampling_is_refused(
        options: list[str], tmp_path: Path) -> None:
    no_reward = [o for o in options if not o.startswith(("reward=", "reward_range="))]
    env = make_env("trl", 0, **parse_options(no_reward))
    assert not env.has_checker
    env.reset()
    with pytest.raises(NotImplementedError, match="scored by the LLM judge"):
        env.check()
    played = runner.invoke(app, ["env", "play", "trl", "--task", "0", "--actions",
                                 str(_moves(tmp_path)), *flags(no_reward)])
    assert played.exit_code == 0, played.output
    assert "no score: no reward for support_tools:SupportTools" in played.output
    db = tmp_path / "s.db"
    with ScriptedEndpoint(refunds) as ep, \
            ScriptedEndpoint(judged, model="judge") as judge_ep:
        refused = runner.invoke(app, ["sample", "--env", "trl", "--tasks", "1", "--base-url",
                                      ep.base_url, "--model", "tiny", "--db", f"sqlite:///{db}",
                                      "--quiet", *flags(no_reward)])
        assert refused.exit_code == 1
        assert "--option reward=package.module:fn" in refused.output
        assert "--judge-base-url URL --judge-model MODEL" in refused.output
        assert "nothing was stored" in refused.output and not db.exists()
        assert ep.requests == []  # refused before the endpoint was asked anything
        result = runner.invoke(app, ["sample", "--env", "trl", "--tasks", "1", "--base-url",
                                     ep.base_url, "--model", "tiny", "--branching", "2",
                                     "--depth", "2", "--db", f"sqlite:///{db}", "--quiet",
                                     "--run", "j", "--judge-base-url", judge_ep.base_url,
                                     "--judge-model", "judge", *flags(no_reward)])
    assert result.exit_code == 0, result.output
    scores = [e for e in payloads(events_of(db)) if isinstance(e, ScoreAssigned)]
    assert scores and {s.source for s in scores} == {"judge"}  # no checker score at all
    assert {s.value for s in scores} == {0.5, 1.0}
    assert all(s.detail and s.detail["model"] == "judge" for s in scores)


def _moves(folder: Path) -> Path:
    moves = folder / "moves.txt"
    moves.write_text(json.dumps(call("refund", amount=12.5)) + "\nDone.\n")
    return moves


def test_branch_skips_a_recorded_tree_that_nothing_would_score(
        options: list[str], tmp_path: Path) -> None:
    no_reward = [o for o in options if not o.startswith(("reward=", "reward_range="))]
    env = make_env("trl", 0, **parse_options(no_reward))
    opening = env.reset()
    b = TreeBuilder("rec/trl/0", writer="sdk")
    b.root(opening.messages, {**env.task, "action_format": "tools"}, tools=opening.tools,
           origin="sdk")
    result = env.step(call("refund", amount=2.0))
    b.step("root", call("refund", amount=2.0), result.observation, result.done)
    db = tmp_path / "b.db"
    store(db, b.take())
    with ScriptedEndpoint(refunds) as ep:
        out = runner.invoke(app, ["branch", "--base-url", ep.base_url, "--model", "tiny",
                                  "--db", f"sqlite:///{db}", "--run", "b1"])
    assert out.exit_code == 0, out.output
    assert "rec/trl/0: skipped" in out.output and "has no reward of its own" in out.output
    assert ep.requests == []
