"""``branchpoint branch``: replay recorded trajectories, sample alternatives at their steps
and add them to the same tree; a diverging recording is left untouched."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.sampler.envs.registry import make_env
from branchpoint.store.builder import TreeBuilder, make_task
from branchpoint.store.events import Event, NodeCreated, ScoreAssigned
from branchpoint.store.log import open_log
from tests.sampler.scripted_endpoint import ScriptedEndpoint

runner = CliRunner()


def recording(tree_id: str, task_id: int, steps: int, *, tamper: int | None = None,
              max_steps: int = 30) -> list[Event]:
    """An expert's first ``steps`` steps on fs, recorded as the SDK would (tools mode);
    with ``tamper`` the observation of that step (1-based) is altered."""
    env = make_env("fs", task_id, max_steps=max_steps)
    opening = env.reset()
    b = TreeBuilder(tree_id, writer="sdk")
    b.root(opening.messages, make_task("fs", task_id, action_format="tools",
                                       options={"max_steps": max_steps}),
           tools=opening.tools, origin="sdk")
    expert = env.expert()
    node, messages = "root", list(opening.messages)
    for k in range(1, steps + 1):
        action = expert.act(messages)
        result = env.step(action)
        obs = result.observation
        if k == tamper:
            obs = [{**obs[0], "content": obs[0]["content"] + " (edited)"}, *obs[1:]]
        node = b.step(node, action, obs, result.done)
        messages += [action, *obs]
    env.close()
    return b.take()


def store(db: Path, *trees: list[Event]) -> None:
    async def go() -> None:
        log = await open_log(f"sqlite:///{db}")
        try:
            for events in trees:
                await log.append(events)
        finally:
            await log.close()

    asyncio.run(go())


def read(db: Path, tree_id: str) -> list[Event]:
    async def go() -> list[Event]:
        log = await open_log(f"sqlite:///{db}")
        try:
            return await log.read_tree(tree_id)
        finally:
            await log.close()

    return asyncio.run(go())


def submit(body: dict[str, Any]) -> Any:
    return [{"content": "submit"}] * body["n"]


def branch(db: Path, url: str, *extra: str) -> Any:
    return runner.invoke(app, ["branch", "--base-url", url, "--model", "tiny", "--db",
                               f"sqlite:///{db}", "--run", "b1", *extra])


def test_every_recorded_step_gets_alternatives_rolled_out_and_scored(tmp_path: Path) -> None:
    db = tmp_path / "bp.db"
    store(db, recording("rec/fs/2", 2, 3))
    with ScriptedEndpoint(submit) as ep:
        result = branch(db, ep.base_url)
        assert result.exit_code == 0, result.output
        assert "rec/fs/2: branched at 3 steps, 3 new nodes" in result.output
        again = branch(db, ep.base_url)
    assert again.exit_code == 0, again.output
    assert len(ep.requests) == 3  # the second run repeated nothing
    events = read(db, "rec/fs/2")
    new = [e.payload for e in events if isinstance(e.payload, NodeCreated)
           and (e.payload.meta or {}).get("branch_run") == "b1"]
    assert len(new) == 3 and all(p.produced_by["count"] == 2 for p in new)
    parents = {p.parent_id for p in new}
    assert len(parents) == 3  # one alternative at each of the three steps
    scored = {e.payload.node_id for e in events if isinstance(e.payload, ScoreAssigned)}
    assert {p.node_id for p in new} <= scored
    assert len(scored) == 4  # the three alternatives and the recorded leaf
    # The model saw the recorded conversation, with the recorded tools.
    assert all(r["tools"] for r in ep.requests)


def test_steps_narrow_where_it_branches(tmp_path: Path) -> None:
    db = tmp_path / "bp.db"
    store(db, recording("rec/fs/2", 2, 3))
    with ScriptedEndpoint(submit) as ep:
        result = branch(db, ep.base_url, "--steps", "1")
    assert result.exit_code == 0, result.output
    assert "branched at 1 steps" in result.output
    assert len(ep.requests) == 1 and len(ep.requests[0]["messages"]) > 3


def test_a_recording_that_diverges_on_replay_is_reported_and_left_untouched(
        tmp_path: Path) -> None:
    db = tmp_path / "bp.db"
    store(db, recording("bad/fs/2", 2, 3, tamper=2), recording("good/fs/3", 3, 2))
    before = read(db, "bad/fs/2")
    with ScriptedEndpoint(submit) as ep:
        result = branch(db, ep.base_url)
    assert result.exit_code == 0, result.output
    assert "bad/fs/2: diverged: replay diverged at step 2" in result.output
    assert "(edited)" in result.output
    assert "good/fs/3: branched at 2 steps" in result.output
    assert "1 branched, 1 diverged" in result.output
    assert read(db, "bad/fs/2") == before
