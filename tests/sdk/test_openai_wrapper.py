"""``wrap_openai`` against a real HTTP upstream (the scripted server of ``upstream.py``):
tool loops, ``n`` choices, streaming, async, implicit forks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from typer.testing import CliRunner

from branchpoint.sdk import Recorder, wrap_openai
from tests.sdk.conftest import Upstream, stored

OPENING = [{"role": "system", "content": "You are terse."},
           {"role": "user", "content": "Read the file and report."}]
KW: dict[str, Any] = {"model": "scripted-1", "temperature": 0.7}


def collect(stream: Any) -> tuple[dict[str, Any], list[Any]]:
    """What an agent builds from a stream of chunks (choice 0), and the chunks."""
    chunks = list(stream)
    msg: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": []}
    for ch in chunks:
        for c in ch.choices:
            if c.index != 0:
                continue
            msg["content"] += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                if tc.id:
                    msg["tool_calls"].append({"id": tc.id, "type": "function", "function": {
                        "name": tc.function.name, "arguments": ""}})
                msg["tool_calls"][-1]["function"]["arguments"] += tc.function.arguments or ""
    if not msg["tool_calls"]:
        del msg["tool_calls"]
    return msg, chunks


def tool_loop(client: Any, *, seed: int = 0, stream: bool = False, **extra: Any) -> str:
    """A two-call agent: the model asks for a file, the agent reads it, the model answers."""
    messages: list[Any] = [dict(m) for m in OPENING]
    kw = {**KW, "seed": seed, **extra}
    if stream:
        first, _ = collect(client.chat.completions.create(messages=messages, stream=True,
                                                          **kw))
        call_id, args = first["tool_calls"][0]["id"], first["tool_calls"][0]["function"]
    else:
        first = client.chat.completions.create(messages=messages, **kw).choices[0].message
        call_id, args = first.tool_calls[0].id, first.tool_calls[0].function.model_dump()
    messages.append(first)  # the client's own message object, as agents do
    path = json.loads(args["arguments"])["path"]
    messages.append({"role": "tool", "tool_call_id": call_id, "content": f"text of {path}"})
    if stream:
        last, _ = collect(client.chat.completions.create(messages=messages, stream=True, **kw))
        return str(last["content"])
    return str(client.chat.completions.create(messages=messages, **kw).choices[0].message.content)


@pytest.fixture
def client(upstream: Upstream) -> Iterator[Any]:
    with openai.OpenAI(base_url=upstream.url, api_key="k") as c:
        yield wrap_openai(c)


def tree(db: Path) -> dict[str, dict[str, Any]]:
    """node_id -> the node's payload, with ``run`` (its execution) when it has one."""
    rows = stored(db)
    nodes = {r["payload"]["node_id"]: dict(r["payload"]) for r in rows
             if r["type"] == "node_created"}
    for r in rows:
        if r["type"] == "action_executed":
            nodes[r["payload"]["node_id"]]["run"] = r["payload"]
    return nodes


def children(nodes: dict[str, dict[str, Any]], parent: str) -> list[dict[str, Any]]:
    return [n for n in nodes.values() if n.get("parent_id") == parent]


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_loop_becomes_steps_whose_observation_is_the_next_calls_tool_result(
        client: Any, db_path: Path, stream: bool) -> None:
    rec = Recorder(f"sqlite:///{db_path}")
    with rec.trajectory(env="files", task_id=1):
        extra = {"stream_options": {"include_usage": True}} if stream else {}
        final = tool_loop(client, stream=stream, **extra)
    assert final == "done: text of file0.txt"  # the agent got the model's answer
    rec.close()
    nodes = tree(db_path)
    assert nodes["root"]["messages"] == OPENING  # the opening of the first call
    (first,) = children(nodes, "root")
    assert first["action"]["tool_calls"][0]["function"] == {
        "name": "read", "arguments": '{"path": "file0.txt"}'}
    obs = first["run"]["observation"]
    assert obs == [{"role": "tool", "tool_call_id": first["action"]["tool_calls"][0]["id"],
                    "content": "text of file0.txt"}]
    (second,) = children(nodes, first["node_id"])
    assert second["action"] == {"role": "assistant", "content": "done: text of file0.txt"}
    assert "run" not in second  # the last answer has no observation
    pb = second["produced_by"]
    assert pb["model"] == "scripted-1" and pb["params"] == {"temperature": 0.7, "seed": 0}
    assert pb["finish_reason"] == "stop" and pb["usage"]["completion_tokens"] == 4
    assert rec.stats().errors == 0


def test_n_choices_are_recorded_as_sibling_steps_with_their_logprobs(
        client: Any, db_path: Path) -> None:
    with Recorder(f"sqlite:///{db_path}") as rec, rec.trajectory(env="files", task_id=1):
        resp = client.chat.completions.create(messages=OPENING, n=3, logprobs=True, **KW)
        assert len(resp.choices) == 3
    siblings = children(tree(db_path), "root")
    paths = [json.loads(n["action"]["tool_calls"][0]["function"]["arguments"])["path"]
             for n in siblings]
    assert paths == ["file0.txt", "file1.txt", "file2.txt"]
    assert all(n["produced_by"]["logprobs"]["content"][0]["logprob"] == -0.5
               for n in siblings)
    assert all(n["produced_by"]["params"]["n"] == 3 for n in siblings)


async def test_the_async_client_records_streamed_and_plain_calls(
        upstream: Upstream, db_path: Path) -> None:
    raw = openai.AsyncOpenAI(base_url=upstream.url, api_key="k")
    client = wrap_openai(raw)
    rec = Recorder(f"sqlite:///{db_path}")
    async with raw, rec.trajectory(env="files", task_id=1):
        plain = await client.chat.completions.create(messages=OPENING, **KW)
        stream = await client.chat.completions.create(messages=OPENING, seed=5, stream=True,
                                                      **KW)
        args = ""
        async for chunk in stream:
            for c in chunk.choices:
                for tc in c.delta.tool_calls or []:
                    args += tc.function.arguments or ""
    assert json.loads(args) == {"path": "file5.txt"}
    assert plain.choices[0].message.tool_calls[0].function.name == "read"
    await rec.aclose()
    paths = sorted(n["action"]["tool_calls"][0]["function"]["arguments"]
                   for n in children(tree(db_path), "root"))
    assert paths == ['{"path": "file0.txt"}', '{"path": "file5.txt"}']


def test_two_attempts_under_one_trajectory_fork_where_they_differ_and_give_a_pair(
        client: Any, db_path: Path) -> None:
    rec = Recorder(f"sqlite:///{db_path}")
    with rec.trajectory(env="files", task_id=1, tree_id="attempts") as t:
        tool_loop(client, seed=0)
        t.score(1.0)  # the head: the last answer of the first attempt
        tool_loop(client, seed=1)  # same opening, another first step: a fork at the root
        t.score(0.0)
        tool_loop(client, seed=0)  # the first attempt again: no new branch
    rec.close()
    nodes = tree(db_path)
    first_steps = children(nodes, "root")
    assert len(first_steps) == 3  # file0, file1, and file0 answered again (a sibling sample)
    assert sum(1 for n in first_steps if "run" in n) == 2  # each history followed its path
    assert sum(len(children(nodes, n["node_id"])) for n in first_steps) == 3

    from branchpoint.cli.main import app

    out = CliRunner().invoke(app, ["export", "dpo", "--db", f"sqlite:///{db_path}"])
    assert out.exit_code == 0, out.output
    (pair,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert "file0.txt" in json.dumps(pair["chosen"]) and "file1" in json.dumps(pair["rejected"])


def test_calls_outside_a_trajectory_are_not_recorded_and_errors_reach_the_agent(
        upstream: Upstream, client: Any, db_path: Path) -> None:
    rec = Recorder(f"sqlite:///{db_path}")
    client.chat.completions.create(messages=OPENING, **KW)  # no trajectory: not recorded
    with openai.OpenAI(base_url=upstream.url + "/nowhere", api_key="k", max_retries=0) as raw:
        broken = wrap_openai(raw)
        with pytest.raises(openai.NotFoundError), \
                rec.trajectory(OPENING, env="files", task_id=1):
            broken.chat.completions.create(messages=OPENING, **KW)
    rec.close()
    types = [r["type"] for r in stored(db_path)]
    assert types == ["node_created", "tree_closed"]  # the root, closed with the error
    assert stored(db_path)[-1]["payload"]["detail"]["type"] == "NotFoundError"
