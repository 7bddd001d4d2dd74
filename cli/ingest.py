"""``branchpoint ingest``: append a file of events to the store.

The file is JSON Lines (one event per line), or one JSON array of events (what
``json.dump`` writes), either one starting with a UTF-8 byte-order mark or not. Both are
read the same way: one atomic batch, or atomic chunks of ``--batch-size`` events; errors
name the line where the bad event starts.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import sys
from collections.abc import AsyncGenerator, Iterable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer

from branchpoint.cli.main import DbOption, fail
from branchpoint.store.errors import BranchpointError, InvalidEvent
from branchpoint.store.events import MAX_DEPTH, Event, decode_event

if TYPE_CHECKING:
    from branchpoint.store.log import Chunk


CHUNK = 10_000  # events handed to the store at a time; it inserts one while we decode the next
_YIELD_EVERY = 256  # events decoded between two turns of the event loop


BOM = b"\xef\xbb\xbf"


def _items(stream: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """The events of a stream as ``(line, JSON text)``, blank lines left out: each line of
    JSON Lines, or each element of a file holding one JSON array. A UTF-8 byte-order mark
    at the start is skipped.

    Raises:
        InvalidEvent: the array is not well-formed JSON, located at its line.
    """
    lines = enumerate(stream, start=1)
    head: list[tuple[int, bytes]] = []
    for number, raw in lines:
        text = raw[len(BOM):] if number == 1 and raw.startswith(BOM) else raw
        head.append((number, text))
        if text.strip():
            break
    if head and head[-1][1].lstrip().startswith(b"["):
        text = b"".join(raw for _, raw in head) + b"".join(raw for _, raw in lines)
        yield from _array_items(text)
        return
    for number, raw in itertools.chain(head, lines):
        if raw.strip():
            yield number, raw


def _array_items(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The elements of one JSON array as ``(line where it starts, its JSON text)``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidEvent(f"not UTF-8 text ({exc.reason})", line=line) from None
    decoder = json.JSONDecoder()
    line, seen = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, seen
        line += text.count("\n", seen, pos)
        seen = pos
        return line

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def malformed(pos: int, what: str) -> InvalidEvent:
        return InvalidEvent(f"malformed JSON array ({what})", line=line_at(pos))

    pos = skip(text.index("[") + 1)
    if pos < len(text) and text[pos] == "]":
        pos = skip(pos + 1)
    else:
        while True:
            try:
                _, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise malformed(exc.pos, exc.msg) from None
            except RecursionError:
                raise InvalidEvent(f"nested deeper than {MAX_DEPTH} levels",
                                   line=line_at(pos)) from None
            yield line_at(pos), text[pos:end].encode()
            pos = skip(end)
            if pos < len(text) and text[pos] == ",":
                pos = skip(pos + 1)
                continue
            if pos < len(text) and text[pos] == "]":
                pos = skip(pos + 1)
                break
            raise malformed(pos, "expected ',' or ']'")
    if pos < len(text):
        raise malformed(pos, "text after the closing ']'")


class _Reader:
    """The events of a stream, decoded as they are read, a batch at a time."""

    def __init__(self, stream: BinaryIO) -> None:
        self._lines = _items(stream)
        self.done = False

    async def batch(self, size: int | None) -> AsyncGenerator[Chunk]:
        """Chunks of the next ``size`` events (all that are left when None).

        Raises:
            InvalidEvent: a line is not a valid event, located at its line.
        """
        left = size
        events: list[Event] = []
        lines: list[int] = []
        for number, raw in self._lines:
            events.append(decode_event(raw, line=number))
            lines.append(number)
            if len(events) % _YIELD_EVERY == 0:
                # the store inserts the previous chunk meanwhile (SQLite in aiosqlite's
                # thread); where that needs the event loop (PostgreSQL's I/O), it gets it
                await asyncio.sleep(0)
            if len(events) == CHUNK or len(events) == left:
                yield events, lines
                if left is not None:
                    left -= len(events)
                    if left == 0:
                        return
                events, lines = [], []
        self.done = True
        if events:
            yield events, lines


@dataclass
class _Tally:
    """What the committed batches did; read it even when a later batch failed."""

    stored: int = 0
    duplicates: int = 0
    batches: int = 0


async def _ingest(source: BinaryIO, db: str, batch_size: int | None, tally: _Tally) -> None:
    from branchpoint.store.log import open_log

    log = await open_log(db)
    reader = _Reader(source)
    # Cyclic GC passes over hundreds of thousands of event dicts cost more than the whole
    # ingest, and decoded events hold no cycles.
    gc.disable()
    try:
        while not reader.done:
            # one atomic batch: the whole file, or the next batch_size events
            async with aclosing(reader.batch(batch_size)) as chunks:
                res = await log.append_stream(chunks, normalized=True)
            tally.stored += res.stored
            tally.duplicates += res.duplicates
            tally.batches += 1
    finally:
        gc.enable()
        await log.close()


def _stored_before(tally: _Tally) -> str:
    """What a failed ingest had already committed, for its error message."""
    if not tally.batches:
        return ""
    batches = "batch was" if tally.batches == 1 else "batches were"
    return (f"; the {tally.batches} earlier {batches} stored ({tally.stored} events new, "
            f"{tally.duplicates} already present): fix the file and run the same command "
            "again, stored events are skipped")


def register(app: typer.Typer) -> None:
    @app.command()
    def ingest(
        file: Annotated[str, typer.Argument(
            help="File of events (JSON Lines, or one JSON array), or - for stdin.")],
        db: DbOption,
        batch_size: Annotated[int | None, typer.Option(
            "--batch-size", min=1,
            help="Commit in atomic chunks of N events (default: the whole file at once).")
        ] = None,
    ) -> None:
        """Append events from a JSON Lines file (or a file holding one JSON array of
        events); the whole file is one atomic batch unless --batch-size is given. Events
        already stored with identical content are skipped."""
        tally = _Tally()
        try:
            if file == "-":
                asyncio.run(_ingest(sys.stdin.buffer, db, batch_size, tally))
            else:
                path = Path(file)
                if path.is_dir():
                    raise fail(f"{file} is a folder; give a file of events", 2)
                if not path.is_file():
                    raise fail(f"no such file: {file}", 2)
                with path.open("rb") as fh:
                    asyncio.run(_ingest(fh, db, batch_size, tally))
        except InvalidEvent as exc:
            raise fail(f"{exc}; nothing of this batch was stored{_stored_before(tally)}"
                       ) from None
        except (BranchpointError, ValueError, OSError) as exc:
            # ValueError: a --db URL of no backend; OSError: the file cannot be read
            raise fail(f"{exc}{_stored_before(tally)}") from None
        typer.echo(f"stored {tally.stored} events, {tally.duplicates} already present",
                   err=True)
