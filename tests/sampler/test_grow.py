"""The tree sampler against a scripted endpoint (a real local HTTP server): shapes of the
strategies, merging, scoring, budgets, errors, and resuming after a crash."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from branchpoint.sampler.grow import RunStats, SampleConfig, run_name, sample_run
from branchpoint.sampler.policy import ChatPolicy, Sampling
from branchpoint.store.builder import TreeBuilder
from branchpoint.store.events import (
    ActionExecuted,
    Event,
    NodeCreated,
    ScoreAssigned,
    TreeClosed,
)
from branchpoint.store.exports import compute_stats, export_lines
from branchpoint.store.log import AppendResult, EventLog, MemoryEventLog
from tests.sampler.scripted_endpoint import ScriptedEndpoint, error

TASK = 2  # a train task of fs


def replies(*contents: str) -> Any:
    """Every request gets the first ``n`` of ``contents`` (cycled)."""
    return lambda body: [{"content": contents[i % len(contents)]} for i in range(body["n"])]


def config(**kw: Any) -> SampleConfig:
    base: dict[str, Any] = {"env": "fs", "tasks": [TASK], "model": "tiny", "branching": 2,
                            "depth": 2, "concurrency": 2, "run": "t",
                            "sampling": Sampling(max_tokens=16)}
    return SampleConfig(**{**base, **kw})


async def grow(ep: ScriptedEndpoint, log: EventLog, cfg: SampleConfig, *,
               use_tools: bool = False) -> Any:
    policy = ChatPolicy(ep.base_url, "tiny", cfg.sampling, backoff=0.01, retries=1)
    try:
        return await sample_run(cfg, policy, log, use_tools=use_tools)
    finally:
        await policy.close()


def of(events: Sequence[Event], kind: type) -> list[Any]:
    return [e.payload for e in events if isinstance(e.payload, kind)]


async def test_tree_strategy_asks_once_per_node_and_scores_every_leaf() -> None:
    log = MemoryEventLog()
    with ScriptedEndpoint(replies("ls", "submit")) as ep:
        (outcome,) = await grow(ep, log, config())
    events = await log.read_tree("t/fs/2")
    nodes = [p for p in of(events, NodeCreated) if p.parent_id is not None]
    # root -> {ls, submit}; ls -> {ls, submit}; submit ends the episode.
    assert len(ep.requests) == 2
    assert all(r["n"] == 2 for r in ep.requests)
    assert len(nodes) == 4
    assert len(of(events, ActionExecuted)) == 4
    scores = of(events, ScoreAssigned)
    assert sorted(s.detail["end"] for s in scores) == ["depth", "done", "done"]
    assert all(s.source == "checker" and "subgoals" in s.detail for s in scores)
    (closed,) = of(events, TreeClosed)
    assert closed.reason == "depth" and outcome.reason == "depth"
    root = next(p for p in of(events, NodeCreated) if p.parent_id is None)
    assert root.task["split"] == "train" and root.task["action_format"] == "text"
    assert root.tools is None and "ls [PATH]" in root.messages[0]["content"]
    pb = nodes[0].produced_by
    assert pb["model"] == "tiny" and pb["sampling"]["n"] == 2 and pb["token_ids"]


async def test_identical_candidates_become_one_node_with_their_count() -> None:
    log = MemoryEventLog()
    with ScriptedEndpoint(replies("submit")) as ep:
        await grow(ep, log, config(branching=3))
    nodes = [p for p in of(await log.read_tree("t/fs/2"), NodeCreated) if p.parent_id]
    assert len(nodes) == 1
    assert nodes[0].produced_by["count"] == 3


async def test_tool_mode_records_the_tools_the_model_saw() -> None:
    log = MemoryEventLog()
    call = {"id": "x", "type": "function", "function": {"name": "submit", "arguments": "{}"}}
    with ScriptedEndpoint(lambda body: [{"content": None, "tool_calls": [call]}]) as ep:
        await grow(ep, log, config(branching=1), use_tools=True)
    events = await log.read_tree("t/fs/2")
    root = next(p for p in of(events, NodeCreated) if p.parent_id is None)
    assert root.task["action_format"] == "tools"
    assert [t["function"]["name"] for t in root.tools] == \
        [t["function"]["name"] for t in ep.requests[0]["tools"]]
    (run,) = of(events, ActionExecuted)
    assert run.done is True and run.observation[0]["role"] == "tool"


async def test_branch_rollout_branches_along_one_line_and_rolls_the_others_out() -> None:
    log = MemoryEventLog()
    # Single requests (rollouts) submit; branching requests offer ls and cd.
    script = lambda body: ([{"content": "submit"}] if body["n"] == 1  # noqa: E731
                           else [{"content": "ls"}, {"content": "cd /"}])
    with ScriptedEndpoint(script) as ep:
        await grow(ep, log, config(strategy="branch-rollout", depth=2))
    events = await log.read_tree("t/fs/2")
    lines = [p.meta["line"] for p in of(events, NodeCreated) if p.parent_id]
    # depth 0: ls (main), cd (alt); depth 1 under ls: ls (main), cd (alt);
    # every alt gets a rollout (submit), the main line ends with a rollout too.
    assert sorted(lines) == ["alt", "alt", "main", "main", "rollout", "rollout", "rollout"]
    assert sorted(r["n"] for r in ep.requests) == [1, 1, 1, 2, 2]
    scores = of(events, ScoreAssigned)
    assert len(scores) == 3 and all(s.detail["end"] == "done" for s in scores)
    assert of(events, TreeClosed)[0].reason == "done"


async def test_episodes_are_independent_rollouts_from_the_root() -> None:
    log = MemoryEventLog()
    script = lambda body: ([{"content": "submit"}] if body["n"] == 1  # noqa: E731
                           else [{"content": "ls"}, {"content": "cd /"}, {"content": "ls /"}])
    with ScriptedEndpoint(script) as ep:
        await grow(ep, log, config(strategy="episodes", branching=3))
    events = await log.read_tree("t/fs/2")
    assert sorted(r["n"] for r in ep.requests) == [1, 1, 1, 3]
    assert len(of(events, ScoreAssigned)) == 3


async def test_a_node_budget_closes_the_tree_with_reason_budget() -> None:
    log = MemoryEventLog()
    with ScriptedEndpoint(replies("ls", "cd /")) as ep:
        (outcome,) = await grow(ep, log, config(depth=4, tree_node_budget=3))
    events = await log.read_tree("t/fs/2")
    assert outcome.reason == "budget"
    assert of(events, TreeClosed)[0].reason == "budget"
    assert len(ep.requests) == 2  # 2 nodes, then 4 >= 3: no third request
    assert all(s.detail["end"] == "budget" for s in of(events, ScoreAssigned))


async def test_a_request_longer_than_the_context_makes_a_leaf_with_its_end_reason() -> None:
    log = MemoryEventLog()

    def script(body: dict[str, Any]) -> Any:
        if len(body["messages"]) > 2:
            return error(400, "This model's maximum context length is 64 tokens.")
        return [{"content": "ls"}] * body["n"]

    with ScriptedEndpoint(script) as ep:
        (outcome,) = await grow(ep, log, config(branching=1))
    events = await log.read_tree("t/fs/2")
    (score,) = of(events, ScoreAssigned)
    assert score.detail["end"] == "context_overflow"
    assert "maximum context length" in score.detail["message"]
    assert outcome.reason == "done"


async def test_a_failing_endpoint_closes_that_tree_with_error_and_the_run_goes_on() -> None:
    log = MemoryEventLog()

    def by_tree(body: dict[str, Any]) -> Any:
        # The tree of task 2 keeps failing; the tree of task 3 works.
        if body["messages"][1]["content"] == first_prompt[0]:
            return error(503, "down")
        return [{"content": "submit"}] * body["n"]

    first_prompt: list[str] = []
    from branchpoint.sampler.envs.registry import make_env

    env = make_env("fs", TASK)
    first_prompt.append(env.reset().messages[1]["content"])
    env.close()
    with ScriptedEndpoint(by_tree) as ep:
        outcomes = await grow(ep, log, config(tasks=[TASK, 3], concurrency=1))
    by_id = {o.tree_id: o for o in outcomes}
    assert by_id["t/fs/2"].reason == "error"
    assert by_id["t/fs/3"].reason == "done"
    (closed,) = of(await log.read_tree("t/fs/2"), TreeClosed)
    assert closed.detail["kind"] == "http_503" and "kept failing" in closed.detail["message"]


class ReadCounting:
    """A log that counts how often each tree is read."""

    def __init__(self, inner: EventLog) -> None:
        self.inner = inner
        self.reads: dict[str, int] = {}

    async def read_tree(self, tree_id: str) -> list[Event]:
        self.reads[tree_id] = self.reads.get(tree_id, 0) + 1
        return await self.inner.read_tree(tree_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_pairs_so_far_are_counted_once_per_finished_tree_as_the_export_counts_them(
        ) -> None:
    # At the root, submit (the file system intact: partial credit) against writing a
    # stray file (nothing met): a pair; under the stray file, two equal leaves: a tie.
    log = ReadCounting(MemoryEventLog())
    stats = RunStats()
    seen: list[tuple[int, int]] = []
    policy_replies = replies("submit", "write /junk.txt x")
    with ScriptedEndpoint(policy_replies) as ep:
        policy = ChatPolicy(ep.base_url, "tiny", Sampling(max_tokens=16))
        cfg = config(tasks=[TASK, 3, 4], concurrency=1)
        try:
            await sample_run(cfg, policy, log, use_tools=False,  # type: ignore[arg-type]
                             stats=stats, on_tree=lambda o: seen.append(
                                 (stats.trees_done, stats.pairs)))
        finally:
            await policy.close()
    # After each tree, the pairs of the trees done so far: one per tree.
    assert seen == [(1, 1), (2, 2), (3, 3)]
    report = await compute_stats(log.inner)
    assert stats.pairs == report["pairs"] == 3
    assert stats.branching_points == report["branching_points"] == 6
    assert stats.pairs_uncounted == 0
    # Each tree read once to resume (not there yet) and once to count: a tree closing
    # never reads the others again.
    assert log.reads == {f"t/fs/{t}": 2 for t in (TASK, 3, 4)}
    rows = [line async for line in export_lines(log.inner, "dpo")]
    assert len(rows) == stats.pairs


async def test_trees_found_finished_count_as_done_and_add_no_pairs() -> None:
    log = MemoryEventLog()
    with ScriptedEndpoint(replies("submit", "write /junk.txt x")) as ep:
        await grow(ep, log, config())
        stats = RunStats()
        policy = ChatPolicy(ep.base_url, "tiny", Sampling(max_tokens=16))
        try:
            (again,) = await sample_run(config(), policy, log, use_tools=False, stats=stats)
        finally:
            await policy.close()
    assert again.reason == "skipped"
    assert (stats.trees_done, stats.trees_skipped, stats.pairs) == (1, 1, 0)


class Killed(BaseException):
    """Stands for the process being killed: nothing in the sampler catches it."""


class CrashingLog:
    """A log that dies (like a killed process) after ``after`` appends."""

    def __init__(self, inner: EventLog, after: int) -> None:
        self.inner, self.after = inner, after

    async def append(self, events: Sequence[Event], **kw: Any) -> AppendResult:
        if self.after <= 0:
            raise Killed
        self.after -= 1
        return await self.inner.append(events, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("crash_after", [1, 3, 5, 8])
async def test_a_run_killed_mid_way_resumes_to_the_same_tree_and_recreates_nothing(
        crash_after: int) -> None:
    whole, crashed = MemoryEventLog(), MemoryEventLog()
    with ScriptedEndpoint(replies("ls", "submit")) as ep:
        await grow(ep, whole, config())
        with pytest.raises(Killed):
            await grow(ep, CrashingLog(crashed, crash_after), config())  # type: ignore[arg-type]
        before = {e.event_id for e in await crashed.read_tree("t/fs/2")}
        await grow(ep, crashed, config())
        resumed = await crashed.read_tree("t/fs/2")
        again = await grow(ep, crashed, config())
    assert before <= {e.event_id for e in resumed}
    assert again[0].reason == "skipped"

    def shape(events: Sequence[Event]) -> list[Any]:
        state = TreeBuilder.resume("t/fs/2", events, writer="check").state
        paths = []
        for node_id in state.nodes:
            steps = [state.nodes[n].action["content"] for n in state.path(node_id)
                     if state.nodes[n].action]
            paths.append(tuple(steps))
        return sorted(paths)

    assert shape(resumed) == shape(await whole.read_tree("t/fs/2"))
    assert len(of(resumed, ScoreAssigned)) == 3
    assert len(of(resumed, TreeClosed)) == 1


def test_the_default_run_name_changes_with_what_shapes_a_tree() -> None:
    a = config(run=None)
    assert run_name(a) == run_name(config(run=None, tasks=[5, 6]))
    assert run_name(a) != run_name(config(run=None, branching=3))
    assert run_name(a) != run_name(config(run=None, options={"difficulty": "hard"}))
    assert run_name(a) != run_name(config(run=None, sampling=Sampling(temperature=0.2)))
