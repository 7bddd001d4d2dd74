"""Task claims with leases, on SQLite, PostgreSQL and in memory; and two sampler workers
sharing one PostgreSQL store never sample the same tree; a worker whose lease was taken
over stops without writing into the tree again."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from branchpoint.sampler.claims import Claims, Leases, MemoryClaims, SqlClaims, Worker
from branchpoint.sampler.grow import RunStats, SampleConfig, sample_run
from branchpoint.sampler.policy import ChatPolicy, Sampling
from branchpoint.store.errors import LeaseLost
from branchpoint.store.events import NodeCreated, TreeClosed
from branchpoint.store.log import open_log
from tests.sampler.scripted_endpoint import ScriptedEndpoint

RUN = "run1"
TREES = ["run1/fs/0", "run1/fs/2", "run1/fs/3"]


def make(url: str, name: str, lease: float = 60.0, *, pid: int = 1_000_001,
         host: str = "far-away") -> Claims:
    worker = Worker(name, host, pid)
    return MemoryClaims(worker, lease) if url == "memory://" else SqlClaims(url, worker, lease)


SQL = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=SQL)
def claims_url(request: pytest.FixtureRequest) -> str:
    """A store URL of each SQL kind (claims shared between processes)."""
    name = "pg_url" if request.param == "postgresql" else "sqlite_url"
    return str(request.getfixturevalue(name))


@pytest.fixture(params=["memory", *SQL])
def any_claims_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    name = "pg_url" if request.param == "postgresql" else "sqlite_url"
    return str(request.getfixturevalue(name))


async def test_two_workers_never_hold_the_same_tree(claims_url: str) -> None:
    a, b = make(claims_url, "a"), make(claims_url, "b")
    await a.register(RUN, TREES)
    await b.register(RUN, TREES)  # registering twice adds nothing
    got = [await a.claim(RUN), await b.claim(RUN), await a.claim(RUN)]
    assert sorted(t for t in got if t) == TREES
    assert await b.claim(RUN) is None
    await a.close()
    await b.close()


async def test_an_expired_lease_is_taken_over_and_a_finished_tree_never(
        any_claims_url: str) -> None:
    claims_url = any_claims_url
    # A lease of -1 s has run out the moment it is taken (nothing renews it here).
    a = make(claims_url, "a", lease=-1)
    await a.register(RUN, TREES[:2])
    first = await a.claim(RUN)
    second = await a.claim(RUN, frozenset({first or ""}))
    assert {first, second} == set(TREES[:2])
    await a.finish(TREES[0])
    b = a if claims_url == "memory://" else make(claims_url, "b")
    assert await b.claim(RUN) == TREES[1]
    assert await b.claim(RUN, frozenset({TREES[1]})) is None
    await a.close()
    await b.close()


async def test_a_dead_process_of_this_host_loses_its_leases_at_once(claims_url: str) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    gone = make(claims_url, "gone", lease=3600, pid=dead.pid, host=socket.gethostname())
    await gone.register(RUN, TREES[:1])
    assert await gone.claim(RUN) == TREES[0]
    alive = make(claims_url, "alive", lease=3600, pid=1, host="elsewhere")
    assert await alive.claim(RUN) is None  # another host: waits for the lease
    me = make(claims_url, "me", lease=3600, pid=dead.pid + 10**7, host=socket.gethostname())
    assert await me.claim(RUN) == TREES[0]
    for c in (gone, alive, me):
        await c.close()


@pytest.mark.postgres
async def test_two_sampler_workers_on_postgresql_split_the_tasks(pg_url: str) -> None:
    def script(body: dict[str, Any]) -> Any:
        return [{"content": c} for c in ("ls", "submit")][: body["n"]]

    tasks = [0, 2, 3, 4, 5, 6]
    with ScriptedEndpoint(script) as ep:
        async def worker(name: str) -> list[str]:
            cfg = SampleConfig(env="fs", tasks=tasks, model="tiny", branching=2, depth=2,
                               concurrency=2, run="w", writer=name,
                               sampling=Sampling(max_tokens=8))
            log = await open_log(pg_url)
            policy = ChatPolicy(ep.base_url, "tiny", cfg.sampling)
            claims = SqlClaims(pg_url, Worker(name, "host-" + name, 1), lease_seconds=60)
            try:
                out = await sample_run(cfg, policy, log, use_tools=False, claims=claims)
            finally:
                await claims.close()
                await policy.close()
                await log.close()
            return [o.tree_id for o in out]

        mine_a, mine_b = await asyncio.gather(worker("a"), worker("b"))
    assert sorted(mine_a + mine_b) == sorted(f"w/fs/{t}" for t in tasks)
    assert not set(mine_a) & set(mine_b)
    log = await open_log(pg_url)
    try:
        for tree_id in mine_a + mine_b:
            events = await log.read_tree(tree_id)
            writers = {e.payload.node_id.split(".")[0] for e in events
                       if isinstance(e.payload, NodeCreated) and e.payload.parent_id}
            assert len(writers) == 1, (tree_id, writers)
            assert len([e for e in events if isinstance(e.payload, TreeClosed)]) == 1
    finally:
        await log.close()


def beside(url: str, first: Claims, name: str, lease: float = 60.0) -> Claims:
    """Another worker on the same claims (in memory: the same rows)."""
    other = make(url, name, lease)
    if isinstance(first, MemoryClaims) and isinstance(other, MemoryClaims):
        other.rows = first.rows
    return other


async def test_a_worker_learns_when_it_renews_that_its_expired_lease_was_taken_over(
        any_claims_url: str) -> None:
    url = any_claims_url
    a = make(url, "a", lease=-1)  # runs out at once: a stalled worker
    await a.register(RUN, TREES[:2])
    first = await a.claim(RUN)
    second = await a.claim(RUN, frozenset({first or ""}))
    assert first and second
    b = beside(url, a, "b")
    assert await b.claim(RUN) == first  # expired: taken over
    # The lease nobody took is still a's (renewed); the other is reported with its holder.
    assert await a.renew([first, second]) == {first: "b"}
    await a.finish(first)  # not a's any more: marks nothing
    assert await b.renew([first]) == {}
    await b.finish(first)
    assert await b.renew([first]) == {first: "b"}  # finished: no lease left to renew
    assert await a.renew([]) == {}
    await a.close()
    await b.close()


async def test_the_lease_guard_refuses_a_write_into_a_tree_taken_over(
        any_claims_url: str) -> None:
    url = any_claims_url
    a = make(url, "a", lease=-1)
    await a.register(RUN, TREES[:1])
    told: list[tuple[str, str | None]] = []
    leases = Leases(a, on_lost=lambda t, holder: told.append((t, holder)))
    since = time.time()
    assert await a.claim(RUN) == TREES[0]
    leases.hold(TREES[0], since)
    await leases.check(TREES[0])  # expired, but nobody took it: renewed, still a's
    b = beside(url, a, "b")
    assert await b.claim(RUN) == TREES[0]
    for _ in range(2):
        with pytest.raises(LeaseLost, match="b holds it now") as caught:
            await leases.check(TREES[0])
    assert caught.value.holder == "b" and caught.value.tree_id == TREES[0]
    assert told == [(TREES[0], "b")]  # said once
    await a.close()
    await b.close()


class Stall:
    """An endpoint script: one candidate ``ls`` per request; the first request that
    continues past the root stalls (``waiting`` set) until ``release``."""

    def __init__(self) -> None:
        self.waiting, self.release = threading.Event(), threading.Event()

    def __call__(self, body: dict[str, Any]) -> Any:
        if len(body["messages"]) > 2:
            self.waiting.set()
            self.release.wait(60)
        return [{"content": "ls"}]


def one_candidate(writer: str) -> SampleConfig:
    # One candidate per node: when a stalls on its second request, no other write of its
    # is on its way (its lease of -1 s lets another worker take the tree at any moment).
    return SampleConfig(env="fs", tasks=[2], model="tiny", branching=1, depth=2,
                        concurrency=1, run="w", writer=writer, sampling=Sampling(max_tokens=8))


async def run_worker(url: str, name: str, base_url: str, log: Any, *, lease: float,
                     stats: RunStats | None = None) -> list[Any]:
    cfg = one_candidate(name)
    policy = ChatPolicy(base_url, "tiny", cfg.sampling)
    claims = SqlClaims(url, Worker(name, "host-" + name, ord(name)), lease_seconds=lease)
    try:
        return await sample_run(cfg, policy, log, use_tools=False, claims=claims,
                                stats=stats)
    finally:
        await claims.close()
        await policy.close()


@pytest.mark.parametrize("noticed_at", ["renewal", "write"])
async def test_a_sampler_whose_tree_was_taken_over_stops_without_writing_to_it(
        claims_url: str, noticed_at: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker a stalls mid-tree with an expired lease (a paused process); worker b takes
    the tree over and finishes it; a notices when it renews (or, its renewals stuck, when
    it is about to write), stops, and writes nothing into the tree after b took it."""
    if noticed_at == "write":
        from branchpoint.sampler import grow

        async def stuck(leases: Any, stats: Any, stop: asyncio.Event) -> None:
            await stop.wait()

        monkeypatch.setattr(grow, "_renew", stuck)
    stall, stats_a = Stall(), RunStats()
    with ScriptedEndpoint(stall) as ep_a, ScriptedEndpoint(lambda b: [{"content": "ls"}]
                                                           ) as ep_b:
        log_a, log_b = Recording(await open_log(claims_url)), await open_log(claims_url)
        run_a = asyncio.create_task(run_worker(claims_url, "a", ep_a.base_url, log_a,
                                               lease=-1, stats=stats_a))
        try:
            assert await asyncio.to_thread(stall.waiting.wait, 30)
            log_a.cut = True  # from here on, the tree is b's
            out_b = await run_worker(claims_url, "b", ep_b.base_url, log_b, lease=60)
            if noticed_at == "write":
                stall.release.set()  # a gets its answer and goes to write it
            # Told by its renewal, a stops at once: it does not wait for its answer.
            out_a = await asyncio.wait_for(run_a, 20)
            events = await log_b.read_tree("w/fs/2")
        finally:
            stall.release.set()
            await log_a.inner.close()
            await log_b.close()
    assert [o.reason for o in out_b] == ["depth"]
    (lost,) = out_a
    assert lost.reason == "lease_lost" and lost.detail["holder"] == "b"
    assert "stopped without writing" in lost.detail["message"]
    assert stats_a.errors.get("lease_lost") == 1 and stats_a.trees_done == 0
    assert log_a.after_cut == []
    assert len([e for e in events if isinstance(e.payload, TreeClosed)]) == 1
    # a did grow the tree before it stalled, and b finished it from there
    assert any(isinstance(e.payload, NodeCreated) and e.payload.node_id.startswith("a.")
               for e in events)


class Recording:
    """A log that keeps what is appended after ``cut`` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.cut = False
        self.after_cut: list[Any] = []

    async def append(self, events: Any, **kw: Any) -> Any:
        if self.cut:
            self.after_cut.extend(events)
        return await self.inner.append(events, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
