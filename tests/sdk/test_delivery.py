"""Delivery: outages, restarts, refusals, overflow and order, into SQLite and over HTTP."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from branchpoint.sdk import Recorder
from branchpoint.sdk.pipeline import Pipeline, refused_with_dependants
from branchpoint.sdk.sinks import Outage, Rejection
from branchpoint.sdk.spool import DeadLetters, Spool
from branchpoint.store.builder import TreeBuilder
from tests.sdk.conftest import StoreServer, stored, wait_for


def record(rec: Recorder, prefix: str, trees: int, steps: int) -> list[str]:
    """Record trajectories; returns the event ids in recording order."""
    ids: list[str] = []
    for k in range(trees):
        tid = f"{prefix}-{k}"
        with rec.trajectory(f"task {k}", env="e", task_id=k, tree_id=tid) as t:
            nodes = [t.step(f"s{i}", f"o{i}") for i in range(steps)]
            t.score(1.0)
        ids += [f"{tid}/root"] + [x for n in nodes for x in (f"{tid}/{n}", f"{tid}/{n}/run")]
        ids += [f"{tid}/{nodes[-1]}/score/{rec.writer}/checker/0", f"{tid}/closed/{rec.writer}/0"]
    return ids


def assert_exactly_once_in_order(rows: list[dict[str, Any]], ids: list[str]) -> None:
    got = [r["event_id"] for r in rows]
    assert Counter(got) == Counter(ids)  # all of them, each once
    by_tree: dict[str, list[str]] = {}
    for i in got:
        by_tree.setdefault(i.split("/")[0], []).append(i)
    for tree, seen in by_tree.items():  # each tree in recording order
        assert seen == [i for i in ids if i.split("/")[0] == tree]


def test_a_destination_down_for_the_whole_run_gets_every_event_once_it_is_up(
        tmp_path: Path, spool_dir: Path) -> None:
    db = tmp_path / "later" / "runs.db"  # its folder does not exist yet: SQLite cannot open it
    rec = Recorder(f"sqlite:///{db}", backoff_s=(0.01, 0.05), batch_size=50)
    ids = record(rec, "down", trees=30, steps=5)
    assert rec.flush(timeout=10)  # the spool holds them now
    s = rec.stats()
    assert s.sent == 0 and s.spooled == len(ids) and s.outages == 1
    assert any(spool_dir.rglob("*.seg"))
    db.parent.mkdir()
    wait_for(lambda: rec.stats().resent == len(ids), what="the spool to be re-sent")
    assert rec.flush(timeout=10)
    rec.close()
    assert_exactly_once_in_order(stored(db), ids)
    assert not any(spool_dir.rglob("*.seg"))


def test_a_server_killed_and_restarted_mid_run_gets_every_event_once_and_in_order(
        store_server: StoreServer) -> None:
    store_server.start()
    rec = Recorder(store_server.url, backoff_s=(0.01, 0.05), batch_size=20, linger_s=0.01)
    ids = record(rec, "a", trees=20, steps=4)
    wait_for(lambda: rec.stats().sent >= 20, what="a first batch sent")
    store_server.kill()
    ids += record(rec, "b", trees=20, steps=4)
    wait_for(lambda: rec.stats().outages == 1, what="the outage noticed")
    store_server.start()
    ids += record(rec, "c", trees=20, steps=4)
    assert rec.flush(timeout=20)
    wait_for(lambda: rec.stats().queued == 0 and rec.flush(timeout=1), what="all delivered")
    rec.close()
    assert rec.stats().dropped == 0 and rec.stats().dead_lettered == 0
    assert_exactly_once_in_order(stored(store_server.db), ids)


@pytest.mark.parametrize("kind", ["sqlite", "http"])
def test_a_refused_event_and_its_dependants_are_dead_lettered_and_the_rest_arrive(
        kind: str, db_path: Path, store_server: StoreServer) -> None:
    if kind == "http":
        store_server.start()
        url, db = store_server.url, store_server.db
    else:
        url, db = f"sqlite:///{db_path}", db_path
    rec = Recorder(url, batch_size=1000, linger_s=0.01)
    with rec.trajectory("go", env="e", task_id=1, tree_id="t") as t:
        ok = t.step("fine", "obs")
        # a user message as the action: the store refuses the node...
        bad = t.step({"role": "user", "content": "not an action"}, "obs")
        t.step("child of the refused step", "obs")  # ...and what hangs on it
        t.score(1.0)
        t.fork(ok).step("sibling", "obs")
    assert rec.flush(timeout=10)
    rec.close()
    dead = rec.dead_letters.read()
    dead_ids = [d["event"]["event_id"] for d in dead]
    assert dead_ids[0] == f"t/{bad}" and dead[0]["field"] == "payload.action.role"
    assert len(dead_ids) == 5  # the node, its run, its child, the child's run and score
    assert dead[1]["depends_on"] == f"t/{bad}"  # its run; the rest hang on its child
    assert all(d["depends_on"] in dead_ids[:i + 1] for i, d in enumerate(dead[1:]))
    assert rec.stats().dead_lettered == 5
    kept = {r["event_id"] for r in stored(db)}
    assert kept.isdisjoint(dead_ids)
    assert {"t/root", f"t/{ok}", f"t/{ok}/run"} <= kept and len(kept) == 6  # + sibling, close


def test_dependants_of_an_event_refused_in_an_earlier_batch_are_dead_lettered_too() -> None:
    b = TreeBuilder("t", writer="w")
    b.root([{"role": "user", "content": "x"}], {"env": "e", "task_id": 1})
    a = b.step("root", {"role": "assistant", "content": "a"}, [], None)
    first = b.take()
    b.step(a, {"role": "assistant", "content": "b"}, [], None)
    b.score(a, 1.0)
    b.close("done")
    second = b.take()
    dead: dict[tuple[str, str], str] = {}
    trees: dict[str, str] = {}
    why = refused_with_dependants(first, [Rejection(1, "bad", "payload.action")], dead, trees)
    assert sorted(why) == [1, 2] and why[2]["depends_on"] == "t/w.0"
    why2 = refused_with_dependants(second, [], dead, trees)
    assert sorted(why2) == [0, 1, 2]  # node b, its run, the score of a; not the close
    why3 = refused_with_dependants(first, [Rejection(0, "bad root", None)], {}, trees)
    assert sorted(why3) == [0, 1, 2]


def test_a_full_queue_overflows_to_the_spool_and_order_is_kept(
        db_path: Path) -> None:
    rec = Recorder(f"sqlite:///{db_path}", queue_size=4, batch_size=4, overflow_size=10_000,
                   linger_s=0.001)
    ids = record(rec, "q", trees=40, steps=10)
    assert rec.flush(timeout=30)
    rec.close()
    assert rec.stats().dropped == 0
    assert_exactly_once_in_order(stored(db_path), ids)


def test_when_memory_and_disk_are_both_full_events_are_dropped_counted_and_logged(
        tmp_path: Path, spool_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "missing" / "runs.db"  # down for the whole test
    rec = Recorder(f"sqlite:///{db}", queue_size=2, overflow_size=3, batch_size=2,
                   backoff_s=(5.0, 5.0))
    folder = rec.spool_folder
    with rec.trajectory("go", env="e", task_id=1) as t:
        t.step("a", "b")
    assert rec.flush(timeout=10)
    shutil.rmtree(folder)
    folder.write_text("a file where the spool folder was: the disk refuses")
    for i in range(20):
        with rec.trajectory("go", env="e", task_id=i) as t:
            t.step("a", "b")
    rec.flush(timeout=10)
    s = rec.stats()
    assert s.dropped > 0 and s.spooled > 0
    assert "dropped" in caplog.text
    rec.close(timeout=1)


def _pipeline(sink: Any, tmp_path: Path, **options: Any) -> Pipeline:
    """A pipeline to ``sink`` with its spool under ``tmp_path``, lingering 1 ms."""
    folder = tmp_path / "spool"
    return Pipeline(sink, Spool(folder), DeadLetters(folder, sink.destination),
                    linger_s=0.001, **options)


def _opened_tree() -> TreeBuilder:
    """A builder of tree ``t`` with its root recorded."""
    b = TreeBuilder("t", writer="w")
    b.root([{"role": "user", "content": "go"}], {"env": "e", "task_id": 1})
    return b


class _OutageThenUp:
    """A sink whose first send waits to be released and then finds the destination down;
    every later send stores its batch."""

    destination = "fake://outage-then-up"

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.stored: list[str] = []
        self.sends = 0

    def send(self, events: Any, *, normalized: bool = False) -> None:
        self.sends += 1
        if self.sends == 1:
            self.started.set()
            self.release.wait(10)
            raise Outage("down")
        self.stored += [e.event_id for e in events]

    def close(self) -> None:
        pass


def test_a_flush_waits_for_a_send_it_began_not_one_already_under_way(tmp_path: Path) -> None:
    sink = _OutageThenUp()
    pipeline = _pipeline(sink, tmp_path, backoff_s=(0.2, 0.2))
    b = _opened_tree()
    b.step("root", {"role": "assistant", "content": "a"}, [{"role": "user", "content": "b"}],
           done=True)
    events = b.take()
    pipeline.put(events)
    assert sink.started.wait(10)  # the first send is under way
    flushed: list[bool] = []
    flusher = threading.Thread(target=lambda: flushed.append(pipeline.flush(timeout=10)))
    flusher.start()
    wait_for(lambda: pipeline._flushing == 1, what="the flush to begin")
    sink.release.set()  # the send begun before the flush fails; the next one stores them
    flusher.join(15)
    assert flushed == [True]
    assert sink.stored == [e.event_id for e in events]
    assert pipeline.close(timeout=5)


class _SlowFirstSend:
    """A sink that takes up to ``max_batch`` events a batch and holds its first send until
    released, so that a backlog builds up behind it."""

    destination = "fake://slow-first-send"
    max_batch = 40

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.batches: list[list[str]] = []

    def send(self, events: Any, *, normalized: bool = False) -> None:
        if not self.batches:
            self.started.set()
            self.release.wait(10)
        self.batches.append([e.event_id for e in events])

    def close(self) -> None:
        pass


def test_a_backlog_goes_out_in_batches_up_to_the_sinks_max_batch(tmp_path: Path) -> None:
    sink = _SlowFirstSend()
    pipeline = _pipeline(sink, tmp_path, batch_size=10, queue_size=1000)
    b = _opened_tree()
    pipeline.put(b.take())
    assert sink.started.wait(10)  # the first send (the root) is under way
    head = "root"
    for i in range(60):  # 120 events wait behind it
        head = b.step(head, {"role": "assistant", "content": f"a{i}"},
                      [{"role": "user", "content": f"o{i}"}], None)
    events = b.take()
    pipeline.put(events)
    sink.release.set()
    assert pipeline.flush(timeout=10)
    assert pipeline.close(timeout=5)
    sizes = [len(x) for x in sink.batches[1:]]
    assert max(sizes) == 40 and sum(sizes) == 120  # past the batch size, up to max_batch
    assert [i for x in sink.batches[1:] for i in x] == [e.event_id for e in events]
