"""Branch-rollout trees grown in-process become step-level pairs through the store."""

from __future__ import annotations

import json

from branchpoint.sampler.envs.base import tasks_in_split
from branchpoint.store.builder import task_options
from branchpoint.store.exports import ExportOptions, export_lines
from branchpoint.store.log import open_log
from branchpoint.train.grow import GrowSettings, grow_trees
from tests.experts import erring_expert

OPTIONS = {"difficulty": "easy", "max_steps": 12}



async def test_grown_trees_export_pairs_whose_chosen_step_scored_higher() -> None:
    tasks = tasks_in_split("train", 6)
    events = grow_trees(erring_expert(0.4, 1), "fs", tasks, run="t", options=OPTIONS,
                        settings=GrowSettings(candidates=3, rollouts=2, branch_points=3))
    log = await open_log("memory://")
    try:
        await log.append(events)
        trees = await log.list_trees()
        assert sorted(t.tree_id for t in trees) == sorted(f"t/fs/{i}" for i in tasks)
        lines = [json.loads(x) async for x in export_lines(
            log, "dpo", ExportOptions(margin=0.1, with_metadata=True))]
    finally:
        await log.close()
    assert lines, "an erring expert's branches differ, so some pairs must come out"
    for row in lines:
        assert row["metadata"]["chosen_value"] >= row["metadata"]["rejected_value"] + 0.1 - 1e-9
        assert row["chosen"] != row["rejected"]
        # The prompt opens as the policy saw it (text mode) and ends on an observation.
        assert "Commands:" in row["prompt"][0]["content"]
        assert row["prompt"][-1]["role"] == "user"


def test_every_tree_records_its_split_and_options() -> None:
    tasks = tasks_in_split("train", 2)
    events = grow_trees(erring_expert(0.0, 0), "fs", tasks, run="r", options=OPTIONS,
                        settings=GrowSettings(candidates=2, rollouts=1, branch_points=1))
    roots = [e for e in events if e.event_id.endswith("/root")]
    assert len(roots) == 2
    for root in roots:
        task = root.payload.task  # type: ignore[attr-defined]
        assert task["split"] == "train"
        assert task_options(task) == OPTIONS
