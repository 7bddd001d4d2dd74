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
    ├── EnvironmentUnavailable (ConnectionError)  an environment's server cannot be reached
    ├── LeaseLost (RuntimeError)           another sampler worker took over a claimed tree
    ├── MissingDependency (ImportError)    an optional extra is not installed
    ├── ServeError (RuntimeError)          a model server could not be set up or started
    └── EndpointError (ConnectionError)    a model endpoint failed (after retries)
        ├── EndpointUnusable               unreachable at start, or no such model served
        └── ContextOverflow                the request is longer than the model's context

Adapters translate driver errors into these at the edge; nothing above the adapters ever
sees a sqlalchemy, asyncpg or sqlite3 exception.

Content problems are only ever :class:`InvalidEvent` (or :class:`ConflictingEvent`): a
caller must not retry them. :class:`StoreUnavailable` only ever means that the store could
not be reached or failed: retrying later may succeed. A refused batch is reported whole in
:attr:`InvalidEvent.problems`: every bad event, and every event refused only because an
event it depends on (its parent, its node, its tree's root) was refused.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Problem(msgspec.Struct, frozen=True):
    """One refused event of a batch.

    ``index`` is its 0-based position in the batch (across every chunk of a streamed
    append), ``line`` its line in the source (default: ``index + 1``), ``field`` a path
    such as ``payload.node_id``. ``conflict``: its ``event_id`` is stored, or earlier in
    the batch, with other content. ``depends_on``: the ``event_id`` of a refused event
    this one needs (its parent's or its node's ``node_created``, its tree's root); such
    an event is refused only for that reason, and would be accepted with it.
    """

    reason: str
    index: int | None = None
    line: int | None = None
    event_id: str | None = None
    field: str | None = None
    conflict: bool = False
    depends_on: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The problem as plain JSON-able data (what an HTTP 400 body carries)."""
        return msgspec.structs.asdict(self)

    def describe(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.event_id is not None:
            where.append(f"event_id {self.event_id!r}")
        if self.field is not None:
            where.append(f"field {self.field}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason


class BranchpointError(Exception):
    """Base class of every error branchpoint raises on purpose."""


class InvalidEvent(BranchpointError, ValueError):
    """An event, or a batch of events, breaks the event contract.

    ``line`` is the 1-based line (or position in the batch), ``event_id`` the offending
    event's id when it could be read, ``field`` a path such as ``payload.node_id``: those
    of the batch's first problem. ``problems`` lists every refused event of the batch
    (:class:`Problem`), in batch order. Nothing of a batch that raised this was stored.
    """

    def __init__(
        self,
        reason: str,
        *,
        line: int | None = None,
        event_id: str | None = None,
        field: str | None = None,
        index: int | None = None,
        problems: tuple[Problem, ...] | None = None,
    ) -> None:
        self.reason = reason
        self.line = line
        self.event_id = event_id
        self.field = field
        first = Problem(reason, index, line, event_id, field,
                        conflict=isinstance(self, ConflictingEvent))
        self.problems: tuple[Problem, ...] = problems or (first,)
        message = first.describe()
        more = len(self.problems) - 1
        if more > 0:
            dependent = sum(p.depends_on is not None for p in self.problems[1:])
            message += (f" (and {more} more refused event{'s' * (more != 1)} in the batch"
                        + (f", {dependent} only because an event they depend on was refused"
                           if dependent else "") + ")")
        super().__init__(message)

    @classmethod
    def of_batch(cls, problems: list[Problem] | tuple[Problem, ...]) -> InvalidEvent:
        """The error reporting a refused batch: a :class:`ConflictingEvent` when every
        event refused on its own is a conflict, else an :class:`InvalidEvent`; located at
        the first problem, carrying all of them."""
        if not problems:
            raise ValueError("a refused batch has at least one problem")
        own = [p for p in problems if p.depends_on is None]
        kind = ConflictingEvent if own and all(p.conflict for p in own) else InvalidEvent
        first = problems[0]
        return kind(first.reason, line=first.line, event_id=first.event_id,
                    field=first.field, index=first.index, problems=tuple(problems))

    def at(self, line: int, index: int | None = None) -> InvalidEvent:
        """The same error about one event, located at ``line`` (and ``index``)."""
        return type(self)(self.reason, line=line, event_id=self.event_id, field=self.field,
                          index=index)

    def problem(self) -> Problem:
        """This error as the :class:`Problem` of its one event."""
        return self.problems[0]


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


class EnvironmentUnavailable(BranchpointError, ConnectionError):
    """An environment served by another process (an OpenEnv server at a URL) cannot be
    reached, refused a session (at capacity, its factory failed), or stopped answering;
    the message names the server and what it said."""


class LeaseLost(BranchpointError, RuntimeError):
    """A sampler worker's lease on a tree ran out and another worker took the tree over:
    this worker stops working on it and writes nothing more into it. ``holder`` names the
    worker that holds it now (None when the claim is gone)."""

    def __init__(self, message: str, *, tree_id: str, holder: str | None = None) -> None:
        super().__init__(message)
        self.tree_id, self.holder = tree_id, holder


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
