"""Destinations the recorder's worker sends batches to: a SQLite file or a branchpoint
server. A sink answers a batch in one of three ways, and the worker acts on each:

- it returns: the batch is stored (events already stored are skipped by the store);
- :class:`Refused`: the store refused events for their content; the report says which and
  why, and whether it covers the whole batch or only the first event the store found bad;
- :class:`Outage`: the destination is down, locked or slow; the batch is retried later.

Sinks run in the worker thread only. The HTTP sink imports httpx when it is created, so an
agent that records into SQLite never loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import msgspec

from branchpoint.store.errors import InvalidEvent, MissingDependency, StoreUnavailable
from branchpoint.store.events import Event, encode_event

__all__ = ["HttpSink", "Outage", "Refused", "Rejection", "Sink", "SqliteSink", "TooLarge",
           "open_sink"]

log = logging.getLogger("branchpoint.sdk")


@dataclass(frozen=True)
class Rejection:
    """One refused event: its position in the batch, the store's reason and field, and the
    position of the refused event it depends on when it was refused only for that."""

    index: int
    reason: str
    field: str | None = None
    depends_on: int | None = None


@dataclass
class Refused(Exception):
    """The destination refused events of a batch for their content; nothing of the batch
    was stored. ``complete``: the report names every bad event of the batch, not only the
    first the store met."""

    rejections: list[Rejection]
    complete: bool = False
    status: int | None = field(default=None)

    def __str__(self) -> str:
        return "; ".join(f"#{r.index}: {r.reason}" for r in self.rejections)


class Outage(Exception):
    """The destination cannot take the batch now; it is retried later."""


class TooLarge(Exception):
    """The batch is over the destination's size limit; it is sent again in halves."""


class Sink(Protocol):
    """A destination. A sink may also say ``max_batch``: how many events it takes in one
    batch when a backlog has built up (default: the recorder's batch size)."""

    destination: str

    def send(self, events: Sequence[Event], *, normalized: bool = False) -> None:
        """Store a batch atomically (``normalized``: the events come from
        :func:`~branchpoint.store.events.decode_event`, already validated).

        Raises:
            Refused: events break the store's rules; nothing was stored.
            Outage: the destination is unreachable, locked, or failing.
            TooLarge: the batch is over the destination's body limit.
        """
        ...

    def close(self) -> None: ...


def _rejections_of(exc: InvalidEvent, n: int) -> Refused:
    """The store's whole-batch report (:attr:`InvalidEvent.problems`): the events refused
    on their own. Those refused only for an event they depend on are found again by the
    worker, which names the event each one depends on."""
    out = []
    for p in exc.problems:
        if p.depends_on is not None:
            continue
        idx = p.index if p.index is not None else (p.line - 1 if p.line is not None else None)
        if idx is None or not 0 <= idx < n:
            return Refused([Rejection(0 if n == 1 else -1, p.reason, p.field)])
        out.append(Rejection(idx, p.reason, p.field))
    return Refused(out, complete=True) if out else Refused([Rejection(-1, str(exc))])


class SqliteSink:
    """Appends to a SQLite file with the stdlib-only writer, the same rules and rows as
    every other writer. The file is opened on the first batch (and again after a failure),
    so a locked or missing disk is an outage like any other."""

    #: events per transaction when a backlog has built up (one transaction, its lookups and
    #: its commit, per 5000 events rather than per batch)
    max_batch = 5000

    def __init__(self, path: str) -> None:
        self.path = str(Path(path).expanduser().resolve())
        self.destination = f"sqlite:///{self.path}"
        self._writer: Any = None

    def send(self, events: Sequence[Event], *, normalized: bool = False) -> None:
        from branchpoint.store.sqlite3_writer import Sqlite3Writer

        try:
            if self._writer is None:
                self._writer = Sqlite3Writer(self.path)
            self._writer.append(events, normalized=normalized)
        except InvalidEvent as exc:
            raise _rejections_of(exc, len(events)) from exc
        except (StoreUnavailable, OSError) as exc:
            self.close()
            raise Outage(str(exc)) from exc

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except Exception:  # a broken connection has nothing left to close
                log.debug("closing %s failed", self.destination, exc_info=True)


class HttpSink:
    """``POST /v1/events`` on a branchpoint server, a JSON array per batch.

    400 and 409 are refusals (the body lists the bad events), 413 a batch to split, and
    everything else that is not 2xx (5xx, 401/403 from a wrong token, connection errors,
    timeouts) an outage: the events stay in the spool until the server takes them.

    Raises (constructor):
        MissingDependency: httpx is not installed.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 10.0) -> None:
        try:
            import httpx
        except ImportError as exc:
            raise MissingDependency("recording to a server needs httpx: "
                                    "pip install 'branchpoint[sdk]'") from exc
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]  # never credentials in a folder name
        self.destination = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._httpx = httpx
        self._client = httpx.Client(base_url=self.destination, headers=headers,
                                    timeout=timeout_s)

    def send(self, events: Sequence[Event], *, normalized: bool = False) -> None:
        body = b"[" + b",".join(encode_event(e) for e in events) + b"]"
        try:
            resp = self._client.post("/v1/events", content=body)
        except self._httpx.HTTPError as exc:
            raise Outage(f"{type(exc).__name__}: {exc}") from exc
        code = resp.status_code
        if 200 <= code < 300:
            return
        if code == 413:
            raise TooLarge(resp.text[:200])
        if code in (400, 409, 422):
            raise _refusal_from_body(resp.content, code, len(events))
        if code in (401, 403):
            log.error("%s refuses the recorder's token (HTTP %d); events wait in the spool",
                      self.destination, code)
        raise Outage(f"HTTP {code}: {resp.text[:200]}")

    def close(self) -> None:
        self._client.close()


def _refusal_from_body(content: bytes, status: int, n: int) -> Refused:
    """The server's list of bad events (index, reason, field, and the event a dependant
    was refused for). A body without such a list refuses the whole batch's first event, and
    the worker narrows down from there."""
    try:
        body = msgspec.json.decode(content)
    except msgspec.DecodeError:
        body = None
    errors: Any = None
    if isinstance(body, dict):
        errors = body.get("errors")
        if errors is None and isinstance(body.get("extra"), dict):
            errors = body["extra"].get("errors")
    out: list[Rejection] = []
    if isinstance(errors, list):
        causes = [e for e in errors if isinstance(e, dict) and not e.get("dependent")
                  and not e.get("depends_on")]
        # those refused only for an event they depend on are found again by the worker,
        # which names the event each one depends on
        for e in causes or errors:
            if not isinstance(e, dict):
                continue
            idx = e.get("index")
            if idx is None and isinstance(e.get("line"), int):
                idx = e["line"] - 1
            if not isinstance(idx, int) or not 0 <= idx < n:
                continue
            dep = e.get("depends_on", e.get("because_of"))
            out.append(Rejection(idx, str(e.get("reason", "refused")), e.get("field"),
                                 dep if isinstance(dep, int) else None))
    if out:
        return Refused(out, complete=True, status=status)
    detail = body.get("detail") if isinstance(body, dict) else None
    # index -1: the worker finds the bad event by sending halves
    return Refused([Rejection(0 if n == 1 else -1, str(detail or f"HTTP {status}"))],
                   complete=False, status=status)


def open_sink(url: str, *, token: str | None = None) -> Sink:
    """The sink for a destination URL: ``sqlite:///PATH`` or ``http(s)://HOST:PORT``.

    Raises:
        ValueError: any other scheme.
        MissingDependency: httpx is missing for an HTTP destination.
    """
    if url.startswith("sqlite:///"):
        return SqliteSink(url[len("sqlite:///"):])
    if url.startswith(("http://", "https://")):
        return HttpSink(url, token=token)
    raise ValueError(f"unsupported recorder destination {url!r}: expected sqlite:///PATH "
                     "or http(s)://HOST:PORT")
