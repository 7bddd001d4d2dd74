"""``--env openenv``: environments served by a real OpenEnv server (openenv-core's own server
classes, a subprocess on loopback, no Docker): the README's example, whose one tool is its
action schema, and an MCP environment with a tool list; played, sampled, forked as
sessions of their own, branched by replay, exported."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.sampler.envs.base import tasks_in_split
from branchpoint.sampler.envs.openenv import OpenEnvEnv, _error_text, render_observation
from branchpoint.sampler.envs.registry import env_from_task, make_env
from branchpoint.sampler.fork import fork
from branchpoint.sampler.replay import replay
from branchpoint.store.builder import TreeBuilder
from branchpoint.store.errors import EnvironmentUnavailable, ReplayDivergence
from branchpoint.store.events import NodeCreated, ScoreAssigned
from tests.envs.openenv_server import openenv_server
from tests.sampler.scripted_endpoint import ScriptedEndpoint
from tests.sampler.test_branch import read, store
from tests.userenvs.readme_env import readme_block
from tests.userenvs.test_free_text import events_of, payloads

runner = CliRunner()

# An MCP environment, written with OpenEnv's MCPEnvironment and a FastMCP server: its tools
# are a notebook; the task (from the seed) is to write a word under the key "answer".
NOTES = '''
from fastmcp import FastMCP
from openenv.core.env_server import Observation, State, create_app
from openenv.core.env_server.mcp_environment import MCPEnvironment
from openenv.core.env_server.mcp_types import CallToolAction, CallToolObservation


class TaskObservation(Observation):
    task: str = ""


class NotesEnvironment(MCPEnvironment):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self):
        mcp = FastMCP("notes")
        self.notes = {}
        self.goal = ""

        @mcp.tool
        def write(key: str, value: str) -> str:
            """Write a note under a key."""
            self.notes[key] = value
            return f"wrote {key}"

        @mcp.tool
        def read(key: str) -> str:
            """Read the note under a key."""
            if key not in self.notes:
                raise ValueError(f"no note {key!r}")
            return self.notes[key]

        super().__init__(mcp)
        self._state = State()

    def reset(self, seed=None, episode_id=None, **kwargs):
        self.notes = {"hint": f"word{seed}"}
        self.goal = f"word{seed}"
        self._state = State(step_count=0)
        return TaskObservation(task="Copy the note under 'hint' to the key 'answer'.")

    def _step_impl(self, action, timeout_s=None, **kwargs):
        return Observation(done=True, reward=0.0)

    def _scored(self, obs):
        obs.reward = 2.0 if self.notes.get("answer") == self.goal else -1.0
        obs.done = "answer" in self.notes
        return obs

    def step(self, action, timeout_s=None, **kwargs):
        return self._scored(super().step(action, timeout_s=timeout_s, **kwargs))

    async def step_async(self, action, timeout_s=None, **kwargs):
        return self._scored(await super().step_async(action, timeout_s=timeout_s, **kwargs))

    @property
    def state(self):
        return self._state


app = create_app(NotesEnvironment, CallToolAction, CallToolObservation, max_concurrent_envs=4)
'''


@pytest.fixture(scope="module")
def code_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The README's OpenEnv example served on loopback."""
    path = tmp_path_factory.mktemp("code") / "code_server.py"
    path.write_text(readme_block("# code_server.py"), encoding="utf-8")
    with openenv_server(path) as url:
        yield url


@pytest.fixture(scope="module")
def notes_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("notes") / "notes_server.py"
    path.write_text(NOTES, encoding="utf-8")
    with openenv_server(path) as url:
        yield url


def code_of(seed: int) -> str:
    """The README example's code for a seed (as its reset draws it)."""
    return "".join(random.Random(seed).choice("0123456789") for _ in range(3))


def call(name: str, call_id: str = "c1", **arguments: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function",
         "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def flags(url: str, *more: str) -> list[str]:
    return [w for o in (f"url={url}", *more) for w in ("--option", o)]


@pytest.mark.slow
def test_the_one_tool_is_the_action_schema_and_rewards_map_into_the_range(
        code_url: str) -> None:
    env = make_env("openenv", 3, url=code_url, reward_range="0:3")
    start = env.reset()
    assert start.messages == [{"role": "user", "content": "Find the 3-digit code. After each "
                               "try I say how many digits are right and in place."}]
    (tool,) = start.tools
    fn = tool["function"]
    assert fn["name"] == "step" and fn["description"] == "Try a code."
    assert set(fn["parameters"]["properties"]) == {"code"}  # no inherited metadata
    assert fn["parameters"]["required"] == ["code"]
    code = code_of(3)
    wrong = "".join(str((int(c) + 1) % 10) for c in code)
    near = code[:2] + wrong[2]
    assert env.check().score == 0.0 and env.check().detail == {"reward": 0.0}
    first = env.step(call("step", code=wrong))
    assert first.observation == [{"role": "tool", "tool_call_id": "c1", "content": "0 right"}]
    # the text syntax reaches the same tool; its answer is a user message
    second = env.step({"role": "assistant", "content": f"step {near}"})
    assert second.observation == [{"role": "user", "content": "2 right"}]
    assert env.check().score == pytest.approx(2 / 3) and env.check().detail == {"reward": 2.0}
    refused = env.step(call("step", code=42))  # refused here, against the schema
    assert "argument 'code' must be a string" in refused.observation[0]["content"]
    opened = env.step(call("step", code=code))
    assert opened.done and opened.observation[0]["content"] == "open!"
    assert env.check().score == 1.0 and env.check().success
    assert env.step(call("step", code=code)).observation[0]["content"] == \
        "error: the episode is over"
    task = env.task
    assert task["url"] == code_url and task["seed"] == 3 and task["env"] == "openenv"
    assert task["options"] == {"url": code_url, "reward_range": "0:3"}
    again = env_from_task(task)
    assert again.reset().messages == start.messages
    again.close()
    env.close()


@pytest.mark.slow
def test_forks_are_sessions_of_their_own_reached_by_replay(code_url: str) -> None:
    env = make_env("openenv", 5, url=code_url, reward_range="0:3")
    env.reset()
    code = code_of(5)
    env.step(call("step", code=code[0] + "xx"))
    child = fork(env)
    assert child.fork_mode == "replay" and child.history == env.history
    assert child.step(call("step", code=code)).done  # the child opens the lock ...
    assert child.check().score == 1.0
    parent = env.step(call("step", code="xxx"))  # ... in its own session, not the parent's
    assert not parent.done and env.check().score == 0.0
    # a recording whose observation the server does not give again diverges
    steps = [(a, r) for a, r in env.history]
    action, result = steps[0]
    tampered = [(action, [{**result.observation[0], "content": "3 right"}], False), *steps[1:]]
    fresh = env.fresh()
    with pytest.raises(ReplayDivergence, match="diverged at step 1") as caught:
        replay(fresh, tampered)
    assert getattr(caught.value, "replayed", None) == result.observation
    fresh.close()
    child.close()
    env.close()


@pytest.mark.slow
def test_env_play_plays_a_task_from_a_file_of_actions(code_url: str, tmp_path: Path) -> None:
    moves = tmp_path / "moves.txt"
    moves.write_text(f"step 000\n{json.dumps(call('step', code=code_of(3)))}\n")
    result = runner.invoke(app, ["env", "play", "openenv", "--task", "3", "--actions",
                                 str(moves), "--json", *flags(code_url, "reward_range=0:3")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [t["observation"][0]["content"] for t in out["transcript"]][-1] == "open!"
    assert out["done"] is True and out["score"] == 1.0 and out["success"] is True


@pytest.mark.slow
def test_an_mcp_environment_offers_its_tool_list_and_its_tools_answer(notes_url: str) -> None:
    env = make_env("openenv", 7, url=notes_url, reward_range="-1:2")
    start = env.reset()
    assert start.messages[0]["content"] == "Copy the note under 'hint' to the key 'answer'."
    by_name = {t["function"]["name"]: t["function"] for t in start.tools}
    assert set(by_name) == {"read", "write"}
    assert by_name["write"]["description"] == "Write a note under a key."
    assert by_name["write"]["parameters"]["required"] == ["key", "value"]
    assert env.step(call("read", key="hint")).observation[0]["content"] == "word7"
    missing = env.step(call("read", key="nope")).observation[0]["content"]
    assert missing.startswith("error: ") and "no note 'nope'" in missing
    assert "unknown tool 'erase'" in env.step(call("erase")).observation[0]["content"]
    assert env.check().score == 0.0 and env.check().detail == {"reward": -1.0}
    done = env.step(call("write", key="answer", value="word7"))
    assert done.done and done.observation[0]["content"] == "wrote answer"
    assert env.check().score == 1.0 and env.check().detail == {"reward": 2.0}
    env.close()


@pytest.mark.slow
def test_a_server_at_capacity_is_named_with_its_limit(notes_url: str) -> None:
    held = [make_env("openenv", k, url=notes_url) for k in range(4)]
    try:
        for env in held:
            env.reset()
        with pytest.raises(EnvironmentUnavailable, match=r"refused the session.*holds 4 "
                                                         r"sessions at most"):
            make_env("openenv", 9, url=notes_url).reset()
    finally:
        for env in held:
            env.close()


def notes(body: dict[str, Any]) -> Any:
    """Two different looks around, then the answer (which ends the episode)."""
    if sum(m["role"] == "tool" for m in body["messages"]) >= 2:
        return [call("write", key="answer", value=f"word{tasks_in_split('train', 1)[0]}")
                ] * body["n"]
    return [call("read", key="hint"), call("write", key="note", value="x")][:body["n"]]


@pytest.mark.slow
def test_a_tree_holds_a_session_per_open_branch_only(notes_url: str, tmp_path: Path) -> None:
    # branching 2, depth 2, each leaf rolled out to the end: four branches open at once, on
    # a server that holds four sessions; a parent that kept its session while its subtree
    # grew, or a fork for every child, would need more
    db = tmp_path / "n.db"
    with ScriptedEndpoint(notes) as ep:
        result = runner.invoke(app, ["sample", "--env", "openenv", "--tasks", "1",
                                     "--base-url", ep.base_url, "--model", "tiny",
                                     "--branching", "2", "--depth", "2", "--rollouts", "1",
                                     "--db", f"sqlite:///{db}", "--quiet", "--run", "n",
                                     *flags(notes_url, "reward_range=-1:2")])
    assert result.exit_code == 0, result.output
    scores = [e for e in payloads(events_of(db)) if isinstance(e, ScoreAssigned)]
    assert len(scores) == 4 and {s.value for s in scores} == {1.0}


def tries(body: dict[str, Any]) -> Any:
    """Each of the n candidates tries the code of one of the sampled tasks."""
    codes = [code_of(t) for t in tasks_in_split("train", 2)]
    return [{"content": None, "tool_calls": [{"id": f"t{k}", "type": "function", "function": {
        "name": "step", "arguments": json.dumps({"code": codes[k % 2]})}}]}
        for k in range(body["n"])]


@pytest.mark.slow
def test_sample_grows_trees_whose_pairs_export(code_url: str, tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with ScriptedEndpoint(tries) as ep:
        result = runner.invoke(app, ["sample", "--env", "openenv", "--tasks", "2",
                                     "--base-url", ep.base_url, "--model", "tiny",
                                     "--branching", "2", "--depth", "2", "--db",
                                     f"sqlite:///{db}", "--quiet", "--run", "o",
                                     *flags(code_url, "reward_range=0:3")])
    assert result.exit_code == 0, result.output
    assert "actions as tools" in result.output
    events = payloads(events_of(db))
    roots = [e for e in events if isinstance(e, NodeCreated) and e.parent_id is None]
    assert sorted(r.task["task_id"] for r in roots if r.task) == tasks_in_split("train", 2)
    assert all(r.task and r.task["url"] == code_url and r.task["seed"] == r.task["task_id"]
               for r in roots)
    scores = [e for e in events if isinstance(e, ScoreAssigned)]
    assert 1.0 in {s.value for s in scores} and all("reward" in (s.detail or {}) for s in scores)
    out = tmp_path / "pairs.jsonl"
    exported = runner.invoke(app, ["export", "dpo", "--db", f"sqlite:///{db}", "--out",
                                   str(out), "--with-metadata"])
    assert exported.exit_code == 0, exported.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["tools"][0]["function"]["name"] == "step" for r in rows)
    first_steps = [r for r in rows if len(r["prompt"]) == 1]  # pairs at the root
    assert len(first_steps) == 2
    for row in first_steps:  # the chosen try is the code of the tree's own task
        chosen = row["chosen"][0]["tool_calls"][0]["function"]["arguments"]
        rejected = row["rejected"][0]["tool_calls"][0]["function"]["arguments"]
        assert chosen["code"] == code_of(int(row["metadata"]["task_id"]))
        assert rejected["code"] != chosen["code"]


@pytest.mark.slow
def test_branch_grows_a_recorded_trajectory_by_replay_and_reports_a_divergence(
        code_url: str, tmp_path: Path) -> None:
    def recorded(tree_id: str, task_id: int, *, tamper: bool = False) -> list[Any]:
        env = make_env("openenv", task_id, url=code_url, reward_range="0:3")
        opening = env.reset()
        b = TreeBuilder(tree_id, writer="sdk")
        b.root(opening.messages, {**env.task, "action_format": "tools"}, tools=opening.tools,
               origin="sdk")
        node = "root"
        for k, code in enumerate(("000", "999")):
            result = env.step(call("step", call_id=f"r{k}", code=code))
            obs = result.observation
            if tamper and k == 1:
                obs = [{**obs[0], "content": obs[0]["content"] + " (edited)"}]
            node = b.step(node, call("step", call_id=f"r{k}", code=code), obs, result.done)
        env.close()
        return b.take()

    db = tmp_path / "b.db"
    store(db, recorded("rec/code/4", 4), recorded("bad/code/6", 6, tamper=True))
    before = read(db, "bad/code/6")

    def opens(body: dict[str, Any]) -> Any:
        return [{"content": None, "tool_calls": [{"id": "x", "type": "function", "function": {
            "name": "step", "arguments": json.dumps({"code": code_of(4)})}}]}] * body["n"]

    with ScriptedEndpoint(opens) as ep:
        out = runner.invoke(app, ["branch", "--base-url", ep.base_url, "--model", "tiny",
                                  "--db", f"sqlite:///{db}", "--run", "b1"])
    assert out.exit_code == 0, out.output
    assert "bad/code/6: diverged: replay diverged at step 2" in out.output
    assert "1 branched, 1 diverged" in out.output
    assert read(db, "bad/code/6") == before
    events = payloads(read(db, "rec/code/4"))
    scores = [e.value for e in events if isinstance(e, ScoreAssigned)]
    assert 1.0 in scores  # an alternative opened the lock the recording missed


def test_options_are_checked_before_anything_connects() -> None:
    for options, message in (({}, "needs --option url"),
                             ({"url": "localhost:8000"}, "needs --option url"),
                             ({"url": "http://h:1", "reward_range": "3:0"}, "LOW < HIGH"),
                             ({"url": "http://h:1", "reward_sum": "yes"}, "reward_sum"),
                             ({"url": "http://h:1", "timeout": 0}, "timeout")):
        with pytest.raises(ValueError, match=message):
            make_env("openenv", 0, **options)
    with pytest.raises(ValueError, match="needs --option url"):
        OpenEnvEnv.select_tasks("train", count=2)


def test_a_server_that_is_not_there_is_a_clear_error() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = make_env("openenv", 0, url=url)
    with pytest.raises(EnvironmentUnavailable, match=f"cannot open a session on the OpenEnv "
                                                     f"server at {url}"):
        env.reset()
    played = runner.invoke(app, ["env", "play", "openenv", "--task", "0", "--option",
                                 f"url={url}"], input="step 1\n")
    assert played.exit_code == 1 and "is it running?" in played.output


def test_observations_read_as_their_one_text_else_as_json() -> None:
    assert render_observation({"feedback": "2 right"}) == "2 right"
    assert render_observation({"feedback": "x", "board": None}) == "x"
    assert render_observation({"a": 1, "b": "t"}) == '{"a": 1, "b": "t"}'
    assert render_observation({"tool_name": "t", "result": {"data": [1, 2]}}) == "[1, 2]"
    assert render_observation({"tool_name": "t", "result": {
        "content": [{"type": "text", "text": "bad"}], "data": None, "is_error": True}}) == \
        "error: bad"
    assert render_observation({"tool_name": "t", "result": None, "error": {
        "error_type": "timeout", "message": "slow"}}) == "error: slow"


def test_an_action_the_server_refuses_reads_as_its_validation_errors() -> None:
    refused = {"message": "Invalid message", "code": "VALIDATION_ERROR", "errors": [
        {"type": "missing", "loc": ["code"], "msg": "Field required"},
        {"type": "extra_forbidden", "loc": ["type"], "msg": "Extra inputs are not permitted"}]}
    assert _error_text(refused) == ("error: invalid action: code: Field required; type: "
                                    "Extra inputs are not permitted")
    assert _error_text({"message": "boom", "code": "EXECUTION_ERROR"}) == "error: boom"
