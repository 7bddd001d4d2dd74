"""Errors raised by branchpoint.

Every error derives from :class:`BranchpointError` and also from the builtin a caller
would naturally catch, so ``except ValueError`` keeps working for code that does not know
branchpoint::

    BranchpointError
    ├── InvalidEvent (ValueError)          an event, or a batch, breaks the event contract
    │   └── ConflictingEvent               an event_id already stored with other content
    ├── TreeNotFound (LookupError)         no tree with that id in the log
    ├── StoreUnavailable (ConnectionError) the database cannot be reached or opened
    ├── UnknownEnvironment (LookupError)   no environment registered under that name
    ├── ReplayDivergence (RuntimeError)    a replayed action got another observation
    ├── MissingDependency (ImportError)    an optional extra is not installed
    ├── ServeError (RuntimeError)          a model server could not be set up or started
    └── EndpointError (ConnectionError)    a model endpoint failed (after retries)
        ├── EndpointUnusable               unreachable at start, or no such model served
        └── ContextOverflow                the request is longer than the model's context

Adapters translate driver errors into these at the edge; nothing above the adapters ever
sees a sqlalchemy, asyncpg or sqlite3 exception.
"""

from __future__ import annotations


class BranchpointError(Exception):
    """Base class of every error branchpoint raises on purpose."""


class InvalidEvent(BranchpointError, ValueError):
    """An event, or a batch of events, breaks the event contract.

    ``line`` is the 1-based line (or position in the batch), ``event_id`` the offending
    event's id when it could be read, ``field`` a path such as ``payload.node_id``.
    Nothing of a batch that raised this was stored.
    """

    def __init__(
        self,
        reason: str,
        *,
        line: int | None = None,
        event_id: str | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.line = line
        self.event_id = event_id
        self.field = field
        where = []
        if line is not None:
            where.append(f"line {line}")
        if event_id is not None:
            where.append(f"event_id {event_id!r}")
        if field is not None:
            where.append(f"field {field}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)

    def at(self, line: int) -> InvalidEvent:
        """The same error, located at ``line`` of the input."""
        return type(self)(self.reason, line=line, event_id=self.event_id, field=self.field)


class ConflictingEvent(InvalidEvent):
    """An ``event_id`` that is already stored arrived again with different content."""


class TreeNotFound(BranchpointError, LookupError):
    """No tree with this id exists in the log."""


class StoreUnavailable(BranchpointError, ConnectionError):
    """The database behind a store cannot be reached, opened or understood."""


class UnknownEnvironment(BranchpointError, LookupError):
    """No environment is registered under the requested name."""


class ReplayDivergence(BranchpointError, RuntimeError):
    """Replaying a recorded action produced an observation other than the recorded one."""


class MissingDependency(BranchpointError, ImportError):
    """An optional extra is needed for this feature; the message names it."""


class ServeError(BranchpointError, RuntimeError):
    """A model server (vLLM) could not be installed, started, or did not become healthy;
    the message says which, with the tail of its log where there is one."""


class EndpointError(BranchpointError, ConnectionError):
    """A model endpoint kept failing (timeouts, 5xx, refused connections) after the
    retries, or answered with an error that retrying cannot fix. ``kind`` names the
    failure for summaries (``timeout``, ``connection``, ``http_500``, ...)."""

    def __init__(self, message: str, *, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


class EndpointUnusable(EndpointError):
    """At start: the endpoint cannot be reached, or does not serve the requested model."""


class ContextOverflow(EndpointError):
    """The request (prompt plus ``max_tokens``) is longer than the model's context."""
