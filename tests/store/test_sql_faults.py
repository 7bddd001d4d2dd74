"""Faults of the SQL backends: killed writers, concurrent writers, concurrent readers, and
the translation of driver errors."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from branchpoint.store.errors import InvalidEvent, StoreUnavailable, TreeNotFound
from branchpoint.store.events import Event
from branchpoint.store.log import open_log
from branchpoint.store.sql import SqlEventLog
from branchpoint.store.validation import Validator
from tests.store.test_log_contract import Tree, small_tree

ROOT = Path(__file__).resolve().parents[2]


def many_trees(first: int, last: int) -> list[Event]:
    """Trees ``f<first>`` .. ``f<last - 1>``, eight events each."""
    return [e for i in range(first, last) for e in small_tree(f"f{i}")]


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _wait_for(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:  # ends at EOF if the child dies first
        if line.strip() == word:
            return
    raise AssertionError(f"child ended before {word!r}: {proc.communicate()[1]}")


KILLED_WRITER = """
import asyncio, sys
from branchpoint.store.log import open_log
from branchpoint.store.sql import PgStatements
from branchpoint.store.sqlbase import Appender, SqliteStatements
from tests.store.test_sql_faults import many_trees

url, mode = sys.argv[1], sys.argv[2]

def hold():
    print("inserting", flush=True)
    sys.stdin.readline()  # hold the transaction open until killed

for cls in (SqliteStatements, PgStatements):
    def insert(self, db, rows, trees, real=cls.insert):
        if len(rows) > 1000 and mode == "during_insert":  # the second batch
            print("inserting", flush=True)
        real(self, db, rows, trees)
    cls.insert = insert

def result(self, db, real=Appender.result):
    if self.stored > 1000 and mode == "before_commit":
        hold()  # every row of the second batch is in, not committed
    return real(self, db)
Appender.result = result

async def chunks():
    events = many_trees(10, 2000)
    for i in range(0, len(events), 2000):
        if i == 8000:
            hold()  # four chunks inserted, the stream goes on
        yield events[i:i + 2000], None

async def main():
    log = await open_log(url)
    await log.append(many_trees(0, 10))
    if mode == "mid_stream":
        await log.append_stream(chunks())
    else:
        await log.append(many_trees(10, 2000))  # 15,920 events: killed in the middle

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["before_commit", "during_insert", "mid_stream"])
async def test_a_writer_killed_mid_batch_leaves_that_batch_wholly_present_or_absent(
        db_url: str, mode: str) -> None:
    proc = _child(KILLED_WRITER, db_url, mode)
    try:
        _wait_for(proc, "inserting")  # the first batch is committed, the second is going in
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    log = await open_log(db_url)
    try:
        stored = len(await log.read_after(0, limit=100_000))
        first = len(many_trees(0, 10))
        if mode == "during_insert":
            assert stored in (first, len(many_trees(0, 2000)))
        else:
            assert stored == first
            with pytest.raises(TreeNotFound):
                await log.read_tree("f10")
        # and the log takes new appends after the crash
        assert (await log.append(small_tree("after"))).stored == 8
    finally:
        await log.close()
    if db_url.startswith("sqlite"):
        con = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        con.close()


CONCURRENT_WRITER = """
import asyncio, sys
from branchpoint.store.log import open_log
from tests.store.test_sql_faults import many_trees

url, k = sys.argv[1], int(sys.argv[2])
shared = many_trees(1000, 1020)  # every process sends these: stored once
own = many_trees(100 * k, 100 * k + 60)
print("ready", flush=True)
sys.stdin.readline()

async def main():
    log = await open_log(url)  # the four open, and create the schema, at once
    try:
        for i in range(0, len(own), 24):
            await log.append(own[i:i + 24])
            if i % 96 == 0:
                await log.append(shared)
    finally:
        await log.close()

asyncio.run(main())
"""


@pytest.mark.slow
async def test_four_processes_appending_to_one_sqlite_file_store_every_event_once(
        sqlite_url: str) -> None:
    procs = [_child(CONCURRENT_WRITER, sqlite_url, str(k)) for k in range(4)]
    try:
        for p in procs:
            _wait_for(p, "ready")
        for p in procs:  # release them together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, results, strict=True):
        assert "locked" not in err
        assert p.returncode == 0, err

    want = {e.event_id for e in many_trees(1000, 1020)}
    for k in range(4):
        want |= {e.event_id for e in many_trees(100 * k, 100 * k + 60)}
    log = await open_log(sqlite_url)
    try:
        got = await log.read_after(0, limit=100_000)
    finally:
        await log.close()
    assert sorted(e.event_id for e in got) == sorted(want)  # each exactly once
    assert [e.seq for e in got] == list(range(1, len(want) + 1))


@pytest.mark.postgres
async def test_a_postgres_reader_never_sees_seq_go_back_under_concurrent_writers(
        pg_url: str) -> None:
    writers = [await SqlEventLog.open(pg_url) for _ in range(4)]
    reader = await SqlEventLog.open(pg_url)
    done = asyncio.Event()

    async def write(k: int) -> None:
        events = many_trees(100 * k, 100 * k + 40)
        for i in range(0, len(events), 8):
            await writers[k].append(events[i:i + 8])

    seen: list[int] = []

    async def read() -> None:
        last = 0
        while True:
            finished = done.is_set()  # read once more after the writers are done
            for ev in await reader.read_after(last, limit=50):
                assert ev.seq is not None and ev.seq > last
                last = ev.seq
                seen.append(last)
            if finished and not await reader.read_after(last, limit=1):
                return

    async def writers_then_done() -> None:
        await asyncio.gather(*(write(k) for k in range(4)))
        done.set()

    try:
        await asyncio.gather(writers_then_done(), read())
        everything = [e.seq for e in await reader.read_after(0, limit=100_000)]
    finally:
        for log in (*writers, reader):
            await log.close()
    # a reader that skipped past an event committed late would miss it here
    assert seen == everything
    assert len(everything) == 4 * 40 * 8


# --- driver errors, translated at the edge ------------------------------------------------------


async def test_a_file_that_is_not_a_database_raises_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a SQLite database at all" * 200)
    with pytest.raises(StoreUnavailable, match="not a database"):
        await open_log(f"sqlite:///{path}")


async def test_a_sqlite_file_in_a_missing_folder_raises_store_unavailable(
        tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        await open_log(f"sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}")


async def test_an_unreachable_postgres_raises_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        await open_log("postgresql://postgres@127.0.0.1:1/nowhere")


async def test_an_unsupported_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        await open_log("mysql://u@h/db")


@pytest.mark.parametrize("field_case", ["node_created", "action_executed"])
async def test_a_unique_index_firing_behind_validation_raises_invalid_event_naming_it(
        db_url: str, monkeypatch: pytest.MonkeyPatch, field_case: str) -> None:
    # What a writer that skipped the lock would cause: validation passed on a stale view,
    # then the database's own guard refused the row.
    t = Tree()
    before = [t.root(), t.node("a", "r"), t.run("a")]
    bad = t.node("a", "r") if field_case == "node_created" else t.run("a")
    log = await open_log(db_url)
    try:
        await log.append(before)
        monkeypatch.setattr(Validator, "check", lambda *a, **k: None)
        with pytest.raises(InvalidEvent) as err:
            await log.append([Tree("other").root(), bad], lines=[4, 5])
        assert (err.value.event_id, err.value.field, err.value.line) == (
            bad.event_id, "payload.node_id", 5)
        assert "concurrent writer" in str(err.value)
        monkeypatch.undo()
        assert len(await log.read_after(0)) == 3  # nothing of the batch
    finally:
        await log.close()

