"""``branchpoint ingest``: append a JSONL file of events to the store."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer

from branchpoint.cli.main import DbOption, fail
from branchpoint.store.errors import BranchpointError, InvalidEvent
from branchpoint.store.events import Event, decode_event

if TYPE_CHECKING:
    from branchpoint.store.log import Chunk


CHUNK = 10_000  # events handed to the store at a time; it inserts one while we decode the next
_YIELD_EVERY = 256  # events decoded between two turns of the event loop


class _Reader:
    """The events of a JSON Lines stream, decoded as they are read, a batch at a time."""

    def __init__(self, stream: BinaryIO) -> None:
        self._lines = enumerate(stream, start=1)
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
            if not raw.strip():
                continue
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


def register(app: typer.Typer) -> None:
    @app.command()
    def ingest(
        file: Annotated[str, typer.Argument(help="JSONL file of events, or - for stdin.")],
        db: DbOption,
        batch_size: Annotated[int | None, typer.Option(
            "--batch-size", min=1,
            help="Commit in atomic chunks of N events (default: the whole file at once).")
        ] = None,
    ) -> None:
        """Append events from a JSON Lines file; the whole file is one atomic batch unless
        --batch-size is given. Events already stored with identical content are skipped."""
        tally = _Tally()
        try:
            if file == "-":
                asyncio.run(_ingest(sys.stdin.buffer, db, batch_size, tally))
            else:
                path = Path(file)
                if not path.is_file():
                    raise fail(f"no such file: {file}", 2)
                with path.open("rb") as fh:
                    asyncio.run(_ingest(fh, db, batch_size, tally))
        except InvalidEvent as exc:
            msg = f"{exc}; nothing of this batch was stored"
            raise fail(msg + " (earlier batches were)" if tally.batches else msg) from None
        except (BranchpointError, ValueError) as exc:  # ValueError: a --db URL of no backend
            raise fail(str(exc)) from None
        typer.echo(f"stored {tally.stored} events, {tally.duplicates} already present",
                   err=True)
