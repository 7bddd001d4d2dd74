"""Task claims with leases, on SQLite, PostgreSQL and in memory; and two sampler workers
sharing one PostgreSQL store never sample the same tree."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from branchpoint.sampler.claims import Claims, MemoryClaims, SqlClaims, Worker
from branchpoint.sampler.grow import SampleConfig, sample_run
from branchpoint.sampler.policy import ChatPolicy, Sampling
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
