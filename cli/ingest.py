"""``branchpoint ingest``: append a JSONL file of events to the store."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

from branchpoint.cli.main import DbOption, fail
from branchpoint.store.errors import BranchpointError, InvalidEvent
from branchpoint.store.events import Event, decode_event


def _read(stream: BinaryIO) -> Iterator[tuple[int, Event]]:
    for number, raw in enumerate(stream, start=1):
        if raw.strip():
            yield number, decode_event(raw, line=number)


async def _ingest(source: BinaryIO, db: str, batch_size: int | None) -> tuple[int, int]:
    from branchpoint.store.log import open_log

    log = await open_log(db)
    stored = duplicates = 0
    # The batch is held in memory: cyclic GC passes over hundreds of thousands of event
    # dicts cost more than the whole ingest, and decoded events hold no cycles.
    gc.disable()
    try:
        events: list[Event] = []
        lines: list[int] = []
        for number, ev in _read(source):
            events.append(ev)
            lines.append(number)
            if batch_size and len(events) >= batch_size:
                res = await log.append(events, lines=lines, normalized=True)
                stored, duplicates = stored + res.stored, duplicates + res.duplicates
                events, lines = [], []
        if events:
            res = await log.append(events, lines=lines, normalized=True)
            stored, duplicates = stored + res.stored, duplicates + res.duplicates
    finally:
        gc.enable()
        await log.close()
    return stored, duplicates


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
        try:
            if file == "-":
                stored, dups = asyncio.run(_ingest(sys.stdin.buffer, db, batch_size))
            else:
                path = Path(file)
                if not path.is_file():
                    raise fail(f"no such file: {file}", 2)
                with path.open("rb") as fh:
                    stored, dups = asyncio.run(_ingest(fh, db, batch_size))
        except InvalidEvent as exc:
            msg = f"{exc}; nothing of this batch was stored"
            raise fail(msg if not batch_size else msg + " (earlier batches were)") from None
        except BranchpointError as exc:
            raise fail(str(exc)) from None
        typer.echo(f"stored {stored} events, {dups} already present", err=True)
