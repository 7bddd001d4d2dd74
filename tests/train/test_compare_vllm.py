"""The trajectory arm's episodes through real vLLM: rounds of `branchpoint sample --strategy
episodes --branching 1` against `serve-model`'s server, stopped at the step-level budget,
with the tokens read back from the store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from branchpoint.store.events import NodeCreated, ScoreAssigned
from branchpoint.store.log import open_log
from branchpoint.train.compare import completion_tokens, episodes_stage
from branchpoint.train.pipeline import DemoSettings
from tests.conftest import ServedModel

pytestmark = pytest.mark.slow


async def _trees(db: str) -> dict[str, list[object]]:
    log = await open_log(db)
    try:
        return {t.tree_id: list(await log.read_tree(t.tree_id)) for t in await log.list_trees()}
    finally:
        await log.close()


def test_rounds_of_served_episodes_stop_near_the_budget(served_model: ServedModel,
                                                        tmp_path: Path) -> None:
    settings = DemoSettings(env="fs", options={"difficulty": "easy", "max_steps": 3},
                            sample_tasks=3, temperature=1.0, max_tokens=16)
    said: list[str] = []
    info = episodes_stage(served_model.base_url, served_model.name, settings, budget=400,
                          folder=tmp_path, say=lambda stage, msg: said.append(msg))
    rounds = info["rounds"]
    assert rounds[0] == 3 and len(said) == len(rounds) >= 2
    trees = asyncio.run(_trees(info["db"]))
    assert len(trees) == info["episodes"] == sum(rounds)
    assert sorted(trees) == sorted(f"ep{r}/fs/{task}" for r, m in enumerate(rounds, 1)
                                   for task in (0, 1, 2)[:m])
    events = [e for evs in trees.values() for e in evs]
    assert info["tokens"] == completion_tokens(events) > 0  # type: ignore[arg-type]
    per_episode = info["tokens"] / info["episodes"]
    assert 400 - info["tokens"] < per_episode
    for tree_id, evs in trees.items():
        steps = [e.payload for e in evs  # type: ignore[attr-defined]
                 if isinstance(e.payload, NodeCreated) and e.payload.parent_id]  # type: ignore[attr-defined]
        scores = [e for e in evs if isinstance(e.payload, ScoreAssigned)]  # type: ignore[attr-defined]
        assert 1 <= len(steps) <= 3 and len(scores) == 1, tree_id  # one whole episode
        assert all(s.produced_by["sampling"]["n"] == 1 for s in steps)
    # the store's own export takes them as trajectory-level pairs
    target = tmp_path / "pairs.jsonl"
    done = subprocess.run([str(Path(sys.executable).with_name("branchpoint")), "export",
                           "trajectory-pairs", "--db", info["db"], "--split", "train",
                           "--out", str(target)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
