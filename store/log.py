"""The event log interface and its in-memory backend.

:class:`EventLog` is what every part of branchpoint stands on: idempotent, atomic appends
(of a batch in memory, or streamed in chunks through one transaction) and four reads (one
tree, a listing of trees, many trees' heads at once, everything after a ``seq``). Backends:

- :class:`MemoryEventLog` here, for tests and short-lived tools;
- :class:`branchpoint.store.sql.SqlEventLog` for a SQLite file (the default) or PostgreSQL.

:func:`open_log` picks one from a URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Sequence
from contextlib import aclosing
from datetime import datetime
from typing import Final, Protocol, TypeAlias, runtime_checkable

import msgspec

from branchpoint.store.errors import TreeNotFound
from branchpoint.store.events import (
    CURRENT_VERSION,
    ActionExecuted,
    Event,
    EventHead,
    HeadRow,
    NodeCreated,
    TreeClosed,
    canonical_payload,
    decode_payload,
    digest,
)
from branchpoint.store.splits import SPLITS, Split, split_of_task
from branchpoint.store.validation import NodeFacts, Validator

__all__ = [
    "AppendResult",
    "Chunk",
    "Chunks",
    "EventLog",
    "MemoryEventLog",
    "TreeFilter",
    "TreePage",
    "TreeSummary",
    "open_log",
    "tree_cursor",
]


class AppendResult(msgspec.Struct, frozen=True):
    """What an append did: how many events were stored, how many were already there."""

    stored: int
    duplicates: int
    last_seq: int | None


class TreeSummary(msgspec.Struct, frozen=True):
    """One tree as listed: where it came from and whether it is finished."""

    tree_id: str
    env: str
    task_id: str | int
    origin: str | None
    created_at: datetime
    root_seq: int
    closed: str | None = None  # the reason of the latest tree_closed, None while unfinished
    #: train, validation or heldout (see :func:`branchpoint.store.splits.split_of_task`);
    #: None: the tree belongs to no split
    split: Split | None = None


class TreeFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which trees to select; every field left None matches all. The same filter serves
    ``list_trees``, ``iter_heads`` and every export.

    ``tree_id``: that one tree. ``env``, ``task_id``, ``origin``: the root's. ``since``
    (inclusive) and ``until`` (exclusive): the root's ``recorded_at``. ``finished``: has a
    ``tree_closed`` (True) or has none (False). ``split``: the tree's split (the root's
    ``task.split``, else :func:`~branchpoint.store.splits.split_of` of a non-negative
    integer ``task_id``); trees with neither are left out whenever a split is asked for.

    Raises (on construction):
        ValueError: ``split`` is not one of train, validation, heldout.
    """

    tree_id: str | None = None
    env: str | None = None
    task_id: str | int | None = None
    origin: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    finished: bool | None = None
    split: Split | None = None

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {self.split!r}")

    def matches(self, t: TreeSummary) -> bool:
        return (
            (self.tree_id is None or t.tree_id == self.tree_id)
            and (self.split is None or t.split == self.split)
            and (self.env is None or t.env == self.env)
            and (self.task_id is None or str(t.task_id) == str(self.task_id))
            and (self.origin is None or t.origin == self.origin)
            and (self.since is None or t.created_at >= self.since)
            and (self.until is None or t.created_at < self.until)
            and (self.finished is None or (t.closed is not None) == self.finished)
        )


class TreePage(list[TreeSummary]):
    """One page of a tree listing: a list of :class:`TreeSummary` (oldest first) that
    also carries ``next_cursor``, the opaque cursor of the page after it, or None when
    this page is the last. A listing without a limit is one page holding every tree."""

    def __init__(self, trees: Iterable[TreeSummary] = (), next_cursor: str | None = None
                 ) -> None:
        super().__init__(trees)
        self.next_cursor = next_cursor


_CURSOR_PREFIX: Final = "t1."


def tree_cursor(after: TreeSummary) -> str:
    """The cursor of the listing that goes on after ``after``. Cursors follow the
    trees' ``root_seq`` (listing order), so a page never repeats or skips a tree however
    many trees are added meanwhile (new trees come last)."""
    return f"{_CURSOR_PREFIX}{after.root_seq}"


def cursor_position(cursor: str | None) -> int:
    """The ``root_seq`` after which a listing resumes (0 for no cursor).

    Raises:
        ValueError: ``cursor`` is not one that :func:`tree_cursor` made.
    """
    if cursor is None:
        return 0
    digits = cursor.removeprefix(_CURSOR_PREFIX)
    if digits == cursor or not digits.isdigit() or not digits.isascii():
        raise ValueError(f"not a tree listing cursor: {cursor!r}")
    return int(digits)


def check_limit(limit: int | None) -> None:
    """Raises: ValueError: ``limit`` is not None or a positive integer."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")


#: Part of a batch: its events and their line numbers in the source (None: their positions
#: in the whole batch, counted from 1).
Chunk: TypeAlias = tuple[Sequence[Event], Sequence[int] | None]
#: A batch cut in chunks, produced as it is read (an async iterable lets the producer
#: await now and then, which lets the previous chunk's insert go on meanwhile).
Chunks: TypeAlias = Iterable[Chunk] | AsyncIterable[Chunk]


@runtime_checkable
class EventLog(Protocol):
    """An append-only log of events, shared by recorders, samplers and exporters."""

    async def append(self, events: Sequence[Event], *, lines: Sequence[int] | None = None,
                     normalized: bool = False) -> AppendResult:
        """Store a batch atomically: all of it, or none.

        Events already stored with identical content are skipped. ``lines`` gives each
        event's position in its source for error messages (default: 1-based index).
        ``normalized=True`` promises that every event comes straight from
        :func:`~branchpoint.store.events.decode_event` and skips validating it again.

        Raises:
            InvalidEvent: the batch breaks a rule; nothing was stored.
            ConflictingEvent: an ``event_id`` is stored with other content.
            StoreUnavailable: the database cannot be reached.
        """
        ...

    async def append_stream(self, chunks: Chunks, *, normalized: bool = False
                            ) -> AppendResult:
        """Store one batch that arrives in chunks, atomically: all of it, or none.

        The batch is judged exactly as if :meth:`append` got it whole (a parent or an
        ``event_id`` in an earlier chunk counts as earlier in the batch), but it need not
        be held in memory: SQL backends validate and insert each chunk inside one write
        transaction as it comes, and commit after the last. An exception from ``chunks``
        itself (e.g. a line that does not decode) also stores nothing, and propagates.

        Raises:
            InvalidEvent: the batch breaks a rule; nothing was stored.
            ConflictingEvent: an ``event_id`` is stored with other content.
            StoreUnavailable: the database cannot be reached.
        """
        ...

    async def read_tree(self, tree_id: str) -> list[Event]:
        """Every event of one tree, in ``seq`` order.

        Raises:
            TreeNotFound: no event of that tree is stored.
            StoreUnavailable: the database cannot be reached.
        """
        ...

    async def read_heads(self, tree_id: str) -> list[EventHead]:
        """The fold's view of one tree (no payloads), in ``seq`` order.

        Raises:
            TreeNotFound: no event of that tree is stored.
            StoreUnavailable: the database cannot be reached.
        """
        ...

    def iter_heads(self, where: TreeFilter | None = None, *,
                   tree_ids: Sequence[str] | None = None
                   ) -> AsyncIterator[tuple[str, list[HeadRow]]]:
        """``(tree_id, heads)`` of every tree matching ``where`` (and, when given, named in
        ``tree_ids``; ids of no stored tree are skipped), trees in :meth:`list_trees` order,
        each tree's heads equal to what :meth:`read_heads` returns, as plain tuples
        (:data:`~branchpoint.store.events.HeadRow`; ``EventHead(*row)`` names the fields).

        The bulk read for folding many trees: SQL backends read trees in chunks of a bounded
        size on one connection, instead of paying a connection round trip per tree.
        Events appended while the iteration runs may or may not be seen.

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        ...

    async def read_after(self, seq: int = 0, *, limit: int = 1000) -> list[Event]:
        """Up to ``limit`` events with ``seq`` greater than ``seq``, in order. A reader that
        has seen ``seq`` N never later meets a new event at or below N.

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        ...

    async def list_trees(self, where: TreeFilter | None = None, *, limit: int | None = None,
                         cursor: str | None = None) -> TreePage:
        """Trees matching ``where``, oldest first: at most ``limit`` of them (all when
        None), starting after ``cursor`` (the ``next_cursor`` of the page before; None for
        the first page). The page is a list; its ``next_cursor`` is None on the last page.

        Raises:
            ValueError: ``limit`` is not a positive integer, or ``cursor`` is not one that
                a listing returned.
            StoreUnavailable: the database cannot be reached.
        """
        ...

    async def close(self) -> None:
        """Release connections; the log is unusable afterwards."""
        ...


async def iter_events(log: EventLog, after: int = 0, *, page: int = 1000
                      ) -> AsyncIterator[Event]:
    """Every event after ``after``, page by page, for catch-up readers.

    Raises:
        StoreUnavailable: as :meth:`EventLog.read_after`.
    """
    while True:
        batch = await log.read_after(after, limit=page)
        if not batch:
            return
        for ev in batch:
            yield ev
        after = batch[-1].seq or after


def normalize_batch(events: Sequence[Event], lines: Sequence[int] | None = None
                    ) -> list[Event]:
    """:func:`~branchpoint.store.events.normalize` each event of a batch.

    Raises:
        InvalidEvent: as ``normalize``, located at the event's line (default: 1-based
            index), with every event that does not normalize in ``problems``.
    """
    rules = Validator()
    lines = range(1, len(events) + 1) if lines is None else lines
    out, _, _ = rules.normalized(events, lines, range(len(events)))
    rules.raise_if_refused()
    return out


class _Async:
    """A plain iterable of chunks, iterated with ``async for``."""

    def __init__(self, chunks: Iterable[Chunk]) -> None:
        self._it = iter(chunks)

    def __aiter__(self) -> _Async:
        return self

    async def __anext__(self) -> Chunk:
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None


async def prepared_chunks(chunks: Chunks, rules: Validator, *, normalized: bool = False
                          ) -> AsyncGenerator[tuple[list[Event], Sequence[int], Sequence[int]]]:
    """Each chunk of a batch as ``(events, lines, indices)``: line numbers filled in
    (positions counted across the chunks where a chunk has none), each event's 0-based
    position in the whole batch, events normalized unless ``normalized``. An event that
    does not normalize is refused in ``rules`` and left out of its chunk.

    Raises:
        ValueError: a chunk has not one line number per event.
    """
    seen = 0
    source = chunks if isinstance(chunks, AsyncIterable) else _Async(chunks)
    async for events, given in source:
        lines = range(seen + 1, seen + len(events) + 1) if given is None else given
        if len(lines) != len(events):
            raise ValueError(f"{len(events)} events but {len(lines)} line numbers")
        indices = range(seen, seen + len(events))
        seen += len(events)
        if normalized:
            yield list(events), lines, indices
        else:
            yield rules.normalized(events, lines, indices)


class MemoryEventLog:
    """The event log held in a Python list; same contract as the SQL backends."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._by_id: dict[str, str] = {}
        self._by_tree: dict[str, list[Event]] = {}
        self._facts: dict[tuple[str, str], NodeFacts] = {}
        self._trees: dict[str, TreeSummary] = {}
        self._lock = asyncio.Lock()

    async def append(self, events: Sequence[Event], *, lines: Sequence[int] | None = None,
                     normalized: bool = False) -> AppendResult:
        return await self.append_stream([(events, lines)], normalized=normalized)

    async def append_stream(self, chunks: Chunks, *, normalized: bool = False
                            ) -> AppendResult:
        async with self._lock:
            rules = Validator()
            fresh: list[Event] = []
            total = 0
            async with aclosing(prepared_chunks(chunks, rules, normalized=normalized)) as each:
                async for events, lines, indices in each:
                    total += len(events)
                    _, trees, keys = rules.unknown(events)
                    rules.learn((t for t in trees if t in self._trees),
                                {k: self._facts[k] for k in keys if k in self._facts})
                    kept = rules.drop_duplicates(events, self._by_id, lines, indices=indices)
                    kept_events = [events[i] for i in kept]
                    rules.check(kept_events, [lines[i] for i in kept],
                                [indices[i] for i in kept])
                    fresh += kept_events
            rules.raise_if_refused()
            for ev in fresh:  # every chunk passed: the batch is stored
                self._store(ev, canonical=not normalized)
            last = self._events[-1].seq if self._events else None
            return AppendResult(len(fresh), total - len(fresh), last)

    def _store(self, ev: Event, *, canonical: bool) -> None:
        # Stored as the SQL logs store it: the canonical payload (keys sorted at every
        # level), so that the same events read back, and export, as the same bytes.
        # normalize() already did this; events decoded from JSON keep the sender's order.
        payload = ev.payload if canonical else decode_payload(
            ev.type, CURRENT_VERSION, canonical_payload(ev.payload))
        ev = msgspec.structs.replace(ev, seq=len(self._events) + 1, payload=payload)
        self._events.append(ev)
        self._by_id[ev.event_id] = digest(ev)
        self._by_tree.setdefault(ev.tree_id, []).append(ev)
        p = ev.payload
        if isinstance(p, NodeCreated):
            self._facts[(ev.tree_id, p.node_id)] = NodeFacts(p.parent_id is None, False, None)
            parent = self._facts.get((ev.tree_id, p.parent_id or ""))
            if p.parent_id is not None and parent is not None and not parent.has_children:
                self._facts[(ev.tree_id, p.parent_id)] = parent._replace(has_children=True)
            if p.parent_id is None:
                task = p.task or {}
                self._trees[ev.tree_id] = TreeSummary(
                    ev.tree_id, task["env"], task["task_id"], p.origin, ev.recorded_at,
                    ev.seq or 0, split=split_of_task(task))
        elif isinstance(p, ActionExecuted):
            key = (ev.tree_id, p.node_id)
            self._facts[key] = self._facts[key]._replace(executed=True, done=p.done)
        elif isinstance(p, TreeClosed):
            self._trees[ev.tree_id] = msgspec.structs.replace(self._trees[ev.tree_id],
                                                              closed=p.reason)

    async def read_tree(self, tree_id: str) -> list[Event]:
        if tree_id not in self._by_tree:
            raise TreeNotFound(f"no tree {tree_id!r} in the log")
        return list(self._by_tree[tree_id])

    async def read_heads(self, tree_id: str) -> list[EventHead]:
        return [e.head() for e in await self.read_tree(tree_id)]

    async def iter_heads(self, where: TreeFilter | None = None, *,
                         tree_ids: Sequence[str] | None = None
                         ) -> AsyncIterator[tuple[str, list[HeadRow]]]:
        wanted = None if tree_ids is None else set(tree_ids)
        for t in await self.list_trees(where):
            if wanted is None or t.tree_id in wanted:
                yield t.tree_id, [e.head() for e in self._by_tree[t.tree_id]]

    async def read_after(self, seq: int = 0, *, limit: int = 1000) -> list[Event]:
        return self._events[max(seq, 0): max(seq, 0) + limit]

    async def list_trees(self, where: TreeFilter | None = None, *, limit: int | None = None,
                         cursor: str | None = None) -> TreePage:
        check_limit(limit)
        where = where or TreeFilter()
        after = cursor_position(cursor)
        found = [t for t in self._trees.values() if t.root_seq > after and where.matches(t)]
        return page_of(found, limit)

    async def close(self) -> None:
        return None


def page_of(trees: list[TreeSummary], limit: int | None) -> TreePage:
    """The page of the first ``limit`` of ``trees`` (read with one more than ``limit``,
    so that the page knows whether another follows)."""
    if limit is None or len(trees) <= limit:
        return TreePage(trees)
    return TreePage(trees[:limit], tree_cursor(trees[limit - 1]))


async def open_log(url: str) -> EventLog:
    """Open the log at ``url``: ``memory://``, ``sqlite:///relative.db``,
    ``sqlite:////absolute.db`` or ``postgresql://user@host:port/db`` (driver suffixes such
    as ``+asyncpg`` are accepted). Creates or migrates the schema.

    Raises:
        StoreUnavailable: the database cannot be opened or reached.
        ValueError: the URL names no supported backend.
    """
    if url.startswith("memory:"):
        return MemoryEventLog()
    from branchpoint.store.sql import SqlEventLog

    return await SqlEventLog.open(url)
