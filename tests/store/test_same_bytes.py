"""Same events, same bytes: on every backend, every append path, every hash seed; and the
``events`` export moves a store into another one without changing a byte of any export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from branchpoint.store.events import Event, decode_event, encode_event
from branchpoint.store.exports import FORMATS, ExportOptions, export_lines
from branchpoint.store.log import EventLog, MemoryEventLog, TreeFilter, open_log
from tests.store.builders import TreeBuilder, action
from tests.store.test_core_exports import CASES, scenario

REPO = Path(__file__).resolve().parents[2]


def reordered(value: Any) -> Any:
    """``value`` with every object's keys in reverse order, at every level."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


def wire_lines(events: list[Event]) -> list[bytes]:
    """The events as a sender might write them: keys in another order at every level,
    inside messages, tool calls and the task included."""
    return [json.dumps(reordered(json.loads(encode_event(e)))).encode() for e in events]


def all_events() -> list[Event]:
    return [e for b in scenario() for e in b.events]


async def export_all(log: EventLog) -> dict[str, bytes]:
    out = {}
    for fmt in FORMATS:
        out[fmt] = b"".join([line async for line in export_lines(
            log, fmt, ExportOptions(**CASES.get(fmt, {})))])
    return out


async def _built(log: EventLog) -> None:
    await log.append(all_events())


async def _decoded(log: EventLog) -> None:  # what `branchpoint ingest` does
    events = [decode_event(x, line=i) for i, x in enumerate(wire_lines(all_events()), 1)]
    await log.append(events, normalized=True)


async def _streamed(log: EventLog) -> None:
    events = [decode_event(x) for x in wire_lines(all_events())]
    await log.append_stream([(events[i:i + 7], None) for i in range(0, len(events), 7)],
                            normalized=True)


PATHS: dict[str, Callable[[EventLog], Awaitable[None]]] = {
    "built in Python": _built, "decoded from JSON": _decoded, "streamed": _streamed}


@pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())
async def test_every_backend_and_append_path_exports_the_same_bytes(log: EventLog,
                                                                    path: Any) -> None:
    reference = MemoryEventLog()
    await _built(reference)
    expected = await export_all(reference)
    await path(log)
    got = await export_all(log)
    for fmt in FORMATS:
        assert got[fmt] == expected[fmt], fmt
    assert [encode_event(e) for e in await log.read_after(0, limit=1000)] == [
        encode_event(e) for e in await reference.read_after(0, limit=1000)]


async def test_a_resend_with_keys_reordered_inside_messages_is_a_duplicate(
        log: EventLog) -> None:
    events = all_events()
    await log.append(events)
    again = [decode_event(x) for x in wire_lines(events)]
    # the reordering reaches inside messages, not only the envelope's fields
    sent = json.loads(wire_lines(events)[0])["payload"]["messages"][0]
    first = json.loads(encode_event(events[0]))["payload"]["messages"][0]
    assert sent == first and list(sent) == list(reversed(first))
    result = await log.append(again, normalized=True)
    assert (result.stored, result.duplicates) == (0, len(events))
    result = await log.append(again)
    assert (result.stored, result.duplicates) == (0, len(events))


# --- the events export moves a store ---------------------------------------------------------

async def test_events_exported_from_sqlite_ingest_into_another_store_unchanged(
        tmp_path: Path, backend: str) -> None:
    source = await open_log(f"sqlite:///{tmp_path / 'source.db'}")
    try:
        for b in scenario():
            await source.append(b.events)
        expected = await export_all(source)
        dump = expected["events"]
    finally:
        await source.close()
    target = await open_log(backend)
    try:
        lines = [x for x in dump.split(b"\n") if x]
        await target.append([decode_event(x, line=i) for i, x in enumerate(lines, 1)],
                            normalized=True)
        got = await export_all(target)
        for fmt in FORMATS:
            assert got[fmt] == expected[fmt], fmt
        assert got["dpo"], "the scenario has pairs"
    finally:
        await target.close()


async def test_the_events_export_keeps_the_filtered_trees_in_seq_order() -> None:
    log = MemoryEventLog()
    a, b = TreeBuilder("a").root(), TreeBuilder("b", env="shop").root()
    a.step("x", "r", action("go"))
    b.step("y", "r", action("buy"))
    # interleave the two trees in the log
    for pair in zip(a.events, b.events, strict=False):
        await log.append(list(pair))
    options = ExportOptions(where=TreeFilter(env="shop"))
    got = [json.loads(x) async for x in export_lines(log, "events", options)]
    assert [e["event_id"] for e in got] == [e.event_id for e in b.events]
    assert all("seq" not in e for e in got)
    options = ExportOptions(where=TreeFilter(tree_id="nope"))
    assert [x async for x in export_lines(log, "events", options)] == []


# --- hash seeds --------------------------------------------------------------------------------

EXPORT_SCRIPT = """
import asyncio, json, sys
from branchpoint.store.exports import FORMATS, ExportOptions, export_lines
from branchpoint.store.log import open_log
from tests.store.test_core_exports import CASES

async def main():
    log = await open_log(sys.argv[1])
    out = {}
    for fmt in FORMATS:
        out[fmt] = b"".join([x async for x in export_lines(
            log, fmt, ExportOptions(**CASES.get(fmt, {})))]).decode()
    await log.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def many_tasks() -> list[TreeBuilder]:
    """The export scenario plus eight tasks with two episodes each, so that any order
    that followed Python's string hashes would differ between two seeds."""
    out = scenario()
    for i in range(8):
        for k, value in enumerate((0.9, 0.1)):
            b = TreeBuilder(f"task{i}-{k}", env="fs", task_id=f"job-{i}").root()
            b.step("s", "r", action(f"try {i}.{k}"), done=True).score("s", value)
            out.append(b.close())
    return out


async def test_exports_do_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'seeds.db'}"
    log = await open_log(url)
    try:
        for b in many_tasks():
            await log.append(b.events)
    finally:
        await log.close()
    runs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, url], cwd=REPO, env=env,
                              capture_output=True, check=True, timeout=120)
        runs.append(json.loads(done.stdout))
    assert set(runs[0]) == set(FORMATS)
    for fmt in FORMATS:
        assert runs[0][fmt], f"{fmt} exported nothing"
        assert runs[0][fmt] == runs[1][fmt], fmt
    assert runs[0]["trajectory-pairs"].count("\n") >= 9  # every task paired
