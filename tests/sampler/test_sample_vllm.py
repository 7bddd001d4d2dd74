"""``branchpoint sample`` against real vLLM (served by ``branchpoint serve-model`` on the
project's own small model): both environments, tree and branch-rollout, tool mode through
the hermes parser, and a run killed mid-way then resumed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from branchpoint.store.events import ActionExecuted, NodeCreated, ScoreAssigned, TreeClosed
from branchpoint.store.log import open_log
from tests.conftest import ServedModel

pytestmark = pytest.mark.slow


def _cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("branchpoint")), *args]


def _sample(served: ServedModel, db: Path, *extra: str) -> list[str]:
    return _cli("sample", "--base-url", served.base_url, "--model", served.name,
                "--db", f"sqlite:///{db}", "--max-tokens", "12", "--seed", "1", *extra)


async def _events(db: Path) -> dict[str, list[Any]]:
    log = await open_log(f"sqlite:///{db}")
    try:
        out = {}
        for t in await log.list_trees():
            out[t.tree_id] = await log.read_tree(t.tree_id)
        return out
    finally:
        await log.close()


def _check_finished(trees: dict[str, list[Any]]) -> None:
    """Every node ran once, every leaf has one checker score, every tree closed once."""
    for tree_id, events in trees.items():
        created = [e.payload for e in events if isinstance(e.payload, NodeCreated)]
        ran = Counter(e.payload.node_id for e in events if isinstance(e.payload, ActionExecuted))
        scores = Counter(e.payload.node_id for e in events
                         if isinstance(e.payload, ScoreAssigned))
        closed = [e.payload for e in events if isinstance(e.payload, TreeClosed)]
        children = Counter(p.parent_id for p in created if p.parent_id)
        steps = [p for p in created if p.parent_id]
        assert len(closed) == 1, tree_id
        assert all(ran[p.node_id] == 1 for p in steps), tree_id
        leaves = [p.node_id for p in steps if children[p.node_id] == 0]
        assert leaves and all(scores[n] == 1 for n in leaves), tree_id
        assert all(p.produced_by["token_ids"] for p in steps), tree_id


def test_tree_sampling_in_tool_mode_on_fs(served_model: ServedModel, tmp_path: Path) -> None:
    db = tmp_path / "fs.db"
    out = subprocess.run(_sample(served_model, db, "--env", "fs", "--tasks", "2",
                                 "--branching", "2", "--depth", "2",
                                 "--action-format", "tools"),
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert "actions as tools" in out.stderr
    trees = asyncio.run(_events(db))
    assert len(trees) == 2
    _check_finished(trees)
    root = next(e.payload for e in next(iter(trees.values()))
                if isinstance(e.payload, NodeCreated) and e.payload.parent_id is None)
    assert root.task["action_format"] == "tools" and root.tools


def test_branch_rollout_in_text_mode_on_shop(served_model: ServedModel, tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    out = subprocess.run(_sample(served_model, db, "--env", "shop", "--tasks", "1",
                                 "--strategy", "branch-rollout", "--branching", "2",
                                 "--depth", "2", "--action-format", "text",
                                 "--option", "max_steps=3"),
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    trees = asyncio.run(_events(db))
    _check_finished(trees)
    (events,) = trees.values()
    lines = Counter((e.payload.meta or {}).get("line") for e in events
                    if isinstance(e.payload, NodeCreated) and e.payload.parent_id)
    assert lines["main"] >= 1 and lines["rollout"] >= 1


def test_a_request_longer_than_the_servers_context_makes_a_leaf_with_its_end_reason(
        served_model: ServedModel, tmp_path: Path) -> None:
    from tests.sampler.long_env import IMPORT_PATH

    db = tmp_path / "long.db"
    root = Path(__file__).resolve().parents[2]  # where `tests.sampler.long_env` imports
    # The root's request is short; every step is answered with 3000 words, so each
    # child's request is longer than the server's 2048 tokens: vLLM refuses it (HTTP 400).
    out = subprocess.run(_sample(served_model, db, "--env", IMPORT_PATH, "--tasks", "1",
                                 "--branching", "2", "--depth", "3", "--quiet"),
                         capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert "context_overflow" in out.stdout  # among the summary's errors
    (events,) = asyncio.run(_events(db)).values()
    steps = [e.payload for e in events
             if isinstance(e.payload, NodeCreated) and e.payload.parent_id]
    assert steps and all(p.parent_id == "root" for p in steps)  # nothing grew below
    scores = {e.payload.node_id: e.payload for e in events
              if isinstance(e.payload, ScoreAssigned)}
    assert set(scores) == {p.node_id for p in steps}  # each child is a scored leaf
    for score in scores.values():
        assert score.source == "checker"
        assert score.detail["end"] == "context_overflow"
        assert "maximum context length" in score.detail["message"]
    (closed,) = [e.payload for e in events if isinstance(e.payload, TreeClosed)]
    assert closed.reason == "done"


def test_a_killed_run_resumes_and_finishes_without_recreating_anything(
        served_model: ServedModel, tmp_path: Path) -> None:
    db = tmp_path / "kill.db"
    cmd = _sample(served_model, db, "--env", "fs", "--tasks", "3", "--branching", "2",
                  "--depth", "3", "--concurrency", "2", "--option", "max_steps=3")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    # Kill it once some steps are stored and before it is finished.
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            trees = asyncio.run(_events(db))
            if sum(len(v) for v in trees.values()) >= 8:
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = {e.event_id for v in asyncio.run(_events(db)).values() for e in v}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    trees = asyncio.run(_events(db))
    after = {e.event_id for v in trees.values() for e in v}
    assert before < after
    _check_finished(trees)
    assert "resumed" in out.stdout


@pytest.mark.postgres
def test_two_workers_on_postgresql_never_sample_the_same_task(
        served_model: ServedModel, pg_url: str) -> None:
    from tests.store.conftest import require_pg

    require_pg()
    cmd = _cli("sample", "--base-url", served_model.base_url, "--model", served_model.name,
               "--db", pg_url, "--max-tokens", "8", "--env", "fs", "--tasks", "6",
               "--branching", "2", "--depth", "1", "--concurrency", "1", "--quiet")
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1][-2000:] for o in outs]
    sampled = [int(o[0].split(" sampled here")[0].rsplit(" ", 1)[1]) for o in outs]
    assert sum(sampled) == 6  # every task once, by one worker or the other

    async def check() -> None:
        import asyncpg

        from branchpoint.sampler.claims import _pg_dsn

        log = await open_log(pg_url)
        try:
            trees = {t.tree_id: await log.read_tree(t.tree_id) for t in await log.list_trees()}
        finally:
            await log.close()
        assert len(trees) == 6
        _check_finished(trees)
        dsn, schema = _pg_dsn(pg_url)
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema or "public"})
        try:
            rows = await conn.fetch("SELECT tree_id, worker, finished FROM claims")
        finally:
            await conn.close()
        assert sorted(r["tree_id"] for r in rows) == sorted(trees)
        assert all(r["finished"] == 1 and r["worker"] for r in rows)

    asyncio.run(check())


def test_branch_replays_a_recorded_trajectory_and_leaves_a_diverging_one_alone(
        served_model: ServedModel, tmp_path: Path) -> None:
    from tests.sampler.test_branch import read, recording, store

    db = tmp_path / "rec.db"
    # A step limit of 5 bounds the rollouts of an untrained model.
    store(db, recording("rec/fs/2", 2, 3, max_steps=5),
          recording("bad/fs/3", 3, 2, tamper=1, max_steps=5))
    before = read(db, "bad/fs/3")
    out = subprocess.run(_cli("branch", "--base-url", served_model.base_url, "--model",
                              served_model.name, "--db", f"sqlite:///{db}", "--max-tokens",
                              "12", "--seed", "1", "--branching", "2", "--lease-seconds",
                              "60"),
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert "rec/fs/2: branched at 3 steps" in out.stdout
    assert "bad/fs/3: diverged: replay diverged at step 1" in out.stderr
    assert read(db, "bad/fs/3") == before
    events = read(db, "rec/fs/2")
    new = [e.payload for e in events if isinstance(e.payload, NodeCreated)
           and (e.payload.meta or {}).get("branch_run")]
    assert new and all(p.produced_by["token_ids"] for p in new)
    alternatives = [p for p in new if p.meta["line"] == "alt"]
    # Alternatives grow from the recorded steps (the root and the recorder's nodes).
    assert alternatives
    assert all(p.parent_id == "root" or p.parent_id.startswith("sdk.") for p in alternatives)
    scored = {e.payload.node_id for e in events if isinstance(e.payload, ScoreAssigned)}
    ran = {e.payload.node_id for e in events if isinstance(e.payload, ActionExecuted)}
    assert {p.node_id for p in new} <= ran
    assert scored  # the alternatives' rollouts and the recorded leaf are scored
