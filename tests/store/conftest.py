"""Fixtures for the store's contract suite: the same tests over every backend.

``log`` is an open, empty :class:`EventLog` of each kind: in memory, a SQLite file under
``tmp_path``, and PostgreSQL at ``$BRANCHPOINT_TEST_PG`` (default
``postgresql://postgres@127.0.0.1:5432/test``), each test in a schema of its own that is
dropped afterwards. PostgreSQL tests skip when the server cannot be reached, and fail
instead when ``$CI`` is set, so that CI never passes by skipping them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import cache
from pathlib import Path

import pytest

from branchpoint.store.log import EventLog, open_log

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"


def pg_base_url() -> str:
    return os.environ.get("BRANCHPOINT_TEST_PG") or PG_DEFAULT


@cache
def _pg_unreachable() -> str | None:
    """Why the test server cannot be used, or None when it can."""
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(pg_base_url()), timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL at {pg_base_url()} is unreachable: {exc!r}"
    return None


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def require_pg() -> None:
    """Skip the calling test without a server; fail it under CI."""
    why = _pg_unreachable()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set, so this fails instead of skipping)")
    pytest.skip(why)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose schema is fresh for this test (dropped afterwards)."""
    require_pg()
    import asyncpg

    schema = f"bp_test_{uuid.uuid4().hex[:16]}"
    base = pg_base_url()
    yield f"{base}{'&' if '?' in base else '?'}schema={schema}"

    async def drop() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(base), timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A URL of an empty SQL database of each kind."""
    name = "pg_url" if request.param == "postgresql" else "sqlite_url"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The URL of an empty log of each kind."""
    if request.param == "memory":
        return "memory://"
    name = "pg_url" if request.param == "postgresql" else "sqlite_url"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture
async def log(backend: str) -> AsyncIterator[EventLog]:
    """An open, empty event log of each kind."""
    opened = await open_log(backend)
    try:
        yield opened
    finally:
        await opened.close()
