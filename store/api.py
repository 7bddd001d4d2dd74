"""The store's HTTP API: a Litestar router over an :class:`~branchpoint.store.log.EventLog`.

Routes (all under ``/v1``; the app in :mod:`branchpoint.cli.app` adds auth and the viewer):

``POST /v1/events``
    A batch of events, a JSON array (``application/json``) or JSON Lines
    (``application/jsonl``, ``application/x-ndjson``), appended atomically and
    idempotently. 400 lists every bad event (``index`` in the batch, ``line`` for JSON
    Lines, ``event_id``, ``field``, ``reason``, and ``dependent: true`` with
    ``depends_on`` for the events refused only because one they depend on was); 409 a
    conflicting re-send; 413 a body over the limit (the body says the limit); 415 another
    media type; 503 a store outage. Nothing of a refused batch is stored. Events that do
    not decode are reported by this module (with what hangs on them); the store's rules
    by the store's whole-batch report (:attr:`InvalidEvent.problems`).
``GET /v1/trees``, ``GET /v1/trees/{tree_id:path}``, ``GET /v1/node``
    Trees listed with filters and paging; one tree (a window of it: lazy sub-trees) with
    its values, their evidence and its pairs; one node in full.
``GET /v1/stats``, ``GET /v1/summary``
    What ``branchpoint stats --json`` prints; the distributions the viewer draws.
``POST /v1/scores``
    A person's score (source ``human``) for a node.
``GET /v1/export/{format}``
    Every export format, streamed: the very bytes ``branchpoint export`` writes.

Tree and node ids may hold ``/``, so a tree id is only ever the last part of a path, and a
node id a query parameter. Values and pairs follow the export's options everywhere
(``margin``, ``value``, ``sources``, ``judge_weight``, ``confidence``, ``discount``,
``binary``) and trees the CLI's filters (``env``, ``task``, ``tree``, ``origin``,
``since``, ``until``, ``finished``, ``split``), both read by a dependency.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import FromPath, FromQuery, JSONBody, PathParameter, QueryParameter
from litestar.response import Stream

from branchpoint.store.errors import (
    ConflictingEvent,
    InvalidEvent,
    StoreUnavailable,
    TreeNotFound,
)
from branchpoint.store.events import Event, ScoreAssigned, decode_event, normalize
from branchpoint.store.exports import FORMATS, ExportOptions, TreeView, compute_stats, export_lines
from branchpoint.store.log import EventLog, TreeFilter, TreeSummary
from branchpoint.store.pairs import DEFAULT_MARGIN, scan
from branchpoint.store.tree import fold
from branchpoint.store.values import node_estimates
from branchpoint.store.views import branch_points, evidence, leaf_values, subtree

__all__ = ["DEFAULT_MAX_BODY", "ErrorBody", "api_router"]

DEFAULT_MAX_BODY = 32 * 1024 * 1024
#: the open log, injected by the router (``app.state.log``)
Log = NamedDependency[EventLog]
#: the router's cache of folded trees
Trees = NamedDependency["TreeCache"]
JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/json-lines")


# --- wire shapes ---------------------------------------------------------------------------


class BadEvent(msgspec.Struct, omit_defaults=True):
    """One refused event of a batch."""

    index: int
    reason: str
    line: int | None = None
    event_id: str | None = None
    field: str | None = None
    dependent: bool = False
    depends_on: str | None = None
    conflict: bool = False


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every error answer: what went wrong, and for a refused batch every bad event."""

    status_code: int
    detail: str
    errors: list[BadEvent] | None = None
    limit: int | None = None
    extra: dict[str, Any] | list[Any] | None = None


class AppendOut(msgspec.Struct):
    stored: int
    duplicates: int
    last_seq: int | None


class ScoreIn(msgspec.Struct, forbid_unknown_fields=True):
    tree_id: str
    node_id: str
    value: float
    note: str | None = None


class ScoreOut(msgspec.Struct):
    event_id: str
    stored: int
    seq: int | None


class TreeItem(msgspec.Struct):
    tree_id: str
    env: str
    task_id: str
    origin: str | None
    created_at: datetime
    closed: str | None
    nodes: int
    leaves: int
    value: float | None
    pairs: int
    branching_points: int


class TreeList(msgspec.Struct):
    trees: list[TreeItem]
    total: int
    next_cursor: str | None


class NodeOut(msgspec.Struct):
    node_id: str
    parent_id: str | None
    depth: int
    seq: int
    executed: bool
    done: bool | None
    value: float | None
    own_score: float | None
    scores: dict[str, float]
    leaves: int
    stderr: float | None
    children: int
    children_loaded: bool
    role: Literal["chosen", "rejected"] | None
    branch: dict[str, Any] | None
    label: str


class TreeOut(msgspec.Struct):
    tree_id: str
    env: str
    task_id: str
    origin: str | None
    closed: str | None
    root: str
    start: str
    node_count: int
    counts: dict[str, Any]
    pairs: list[dict[str, Any]]
    nodes: list[NodeOut]


class ScoreRecord(msgspec.Struct):
    source: str
    value: float
    seq: int | None
    recorded_at: datetime
    detail: dict[str, Any] | None
    event_id: str


class NodeDetail(msgspec.Struct):
    tree_id: str
    node_id: str
    parent_id: str | None
    depth: int
    prompt: list[dict[str, Any]]
    action: dict[str, Any] | None
    observation: list[dict[str, Any]] | None
    done: bool | None
    info: dict[str, Any] | None
    latency_ms: float | None
    produced_by: dict[str, Any] | None
    value: float | None
    own_score: float | None
    leaves: int
    stderr: float | None
    scores: list[ScoreRecord]
    branch: dict[str, Any] | None
    tools: list[dict[str, Any]] | None


class Health(msgspec.Struct):
    status: str


def _error(status: int, detail: str, **extra: Any) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, extra=extra or None)


ERRORS = {
    400: ResponseSpec(data_container=ErrorBody, description="Bad request: what was wrong"),
    401: ResponseSpec(data_container=ErrorBody, description="A bearer token is required"),
    503: ResponseSpec(data_container=ErrorBody, description="The store is unavailable"),
}
NOT_FOUND = {404: ResponseSpec(data_container=ErrorBody, description="No such tree or node")}


# --- options shared with the CLI -----------------------------------------------------------
# Two dependencies read them from the query string, under the CLI's names: the value and
# pair options (``--margin`` ... ``--binary``) and the tree filters (``--env`` ... ``--split``).

Split = Literal["train", "validation", "heldout"]


def _time(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    raw = text.strip()
    try:
        when = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError:
        raise _error(400, f"{name}: {text!r} is not an ISO 8601 date or time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def value_options(  # noqa: PLR0917 - every option is a query parameter
    margin: Annotated[float, QueryParameter(
        ge=0, le=1e9, description="A pair needs the best child's value above the worst's "
        "by at least this.")] = DEFAULT_MARGIN,
    value: Annotated[Literal["mean", "max"], QueryParameter(
        description="An inner node's value: the mean or the max of its children's.")] = "mean",
    sources: Annotated[str | None, QueryParameter(
        description="Comma-separated score sources a leaf's value may come from.")] = None,
    judge_weight: Annotated[float | None, QueryParameter(
        ge=0, le=1, description="Leaf value = (1-W)*checker + W*judge.")] = None,
    confidence: Annotated[float | None, QueryParameter(
        ge=0, le=1e9, description="Keep a pair only when its margin is at least this many "
        "standard errors.")] = None,
    discount: Annotated[float, QueryParameter(
        ge=0, le=1, description="A leaf's score counts G**k k steps above it.")] = 1.0,
    binary: Annotated[bool, QueryParameter(
        description="Checker scores count 1.0 when 1.0, else 0.0.")] = False,
) -> ExportOptions:
    """The value and pair options of ``branchpoint export`` and ``stats``.

    Raises:
        HTTPException: 400 for an option out of range.
    """
    names = None
    if sources is not None:
        names = tuple(x.strip() for x in sources.split(",") if x.strip())
        if not names:
            raise _error(400, "sources must name at least one source")
    opts = ExportOptions(margin=margin, value=value, sources=names, judge_weight=judge_weight,
                         confidence=confidence, discount=discount, binary=binary)
    return _checked(opts)


def _checked(opts: ExportOptions) -> ExportOptions:
    try:
        opts.check()
    except ValueError as exc:
        raise _error(400, str(exc)) from None
    return opts


def tree_filter(  # noqa: PLR0917 - every filter is a query parameter
    env: Annotated[str | None, QueryParameter(description="Only trees of this environment.")
                   ] = None,
    task: Annotated[str | None, QueryParameter(description="Only trees of this task id.")
                    ] = None,
    tree: Annotated[str | None, QueryParameter(description="Only the tree with this id.")
                    ] = None,
    origin: Annotated[str | None, QueryParameter(
        description="Only trees from this origin.")] = None,
    since: Annotated[str | None, QueryParameter(
        description="Only trees recorded at or after this ISO 8601 time (UTC when no zone)."
    )] = None,
    until: Annotated[str | None, QueryParameter(
        description="Only trees recorded before this ISO 8601 time.")] = None,
    finished: Annotated[bool | None, QueryParameter(
        description="Only closed trees (true) or unfinished ones (false).")] = None,
    split: Annotated[Split | None, QueryParameter(
        description="Only tasks of this split.")] = None,
) -> TreeFilter:
    """The tree filters of the CLI (``--env --task --tree --origin --since --until
    --finished --split``).

    Raises:
        HTTPException: 400 for a time that does not parse, or since not before until.
    """
    start, end = _time(since, "since"), _time(until, "until")
    if start is not None and end is not None and start >= end:
        raise _error(400, f"since ({since}) must be before until ({until})")
    return TreeFilter(tree_id=tree, env=env, task_id=task, origin=origin, since=start,
                      until=end, finished=finished, split=split)


Options = NamedDependency[ExportOptions]
Where = NamedDependency[TreeFilter]


# --- ingest ---------------------------------------------------------------------------------


def _peek(raw: bytes) -> tuple[str | None, str | None, str | None, bool]:
    """``(event_id, tree_id, node_id, is_node_created)`` of a raw event, as far as they
    read."""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None, None, None, False
    if not isinstance(obj, dict):
        return None, None, None, False
    raw_payload = obj.get("payload")
    payload: dict[str, Any] = raw_payload if isinstance(raw_payload, dict) else {}

    def s(v: Any) -> str | None:
        return v if isinstance(v, str) else None

    return (s(obj.get("event_id")), s(obj.get("tree_id")), s(payload.get("node_id")),
            obj.get("type") == "node_created")


def _split(body: bytes, content_type: str) -> list[tuple[bytes, int | None]]:
    """The batch's raw events with their JSON Lines line numbers (None for an array).

    Raises:
        HTTPException: 400 when the body is not a JSON array; 415 for another media type.
    """
    media = content_type.split(";", maxsplit=1)[0].strip().lower()
    if media in JSONL_TYPES:
        return [(line, n) for n, line in enumerate(body.split(b"\n"), start=1) if line.strip()]
    if media in ("application/json", ""):
        try:
            raws = msgspec.json.decode(body, type=list[msgspec.Raw])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise _error(400, f"the body is not a JSON array of events: {exc}") from None
        return [(bytes(r), None) for r in raws]
    raise _error(415, f"unsupported media type {media!r}; send application/json (an array) "
                 f"or application/jsonl (one event per line)")


def _decode_batch(body: bytes, content_type: str
                  ) -> tuple[list[Event], list[int | None], list[BadEvent]]:
    """The events decoded and normalized, the JSON Lines line of each position in the
    batch (None for an array), and every reason an event was refused; events that refer
    to a refused event's node are refused too, as ``dependent``."""
    parts = _split(body, content_type)
    source_lines = [line for _, line in parts]
    events: list[Event] = []
    bad: list[BadEvent] = []
    refused_nodes: dict[tuple[str, str], int] = {}
    refs: list[tuple[int, Event]] = []
    ids: dict[int, str | None] = {}  # event ids of the refused, by position
    for i, (raw, line) in enumerate(parts):
        try:
            ev = normalize(decode_event(raw, line=line or i + 1))
        except InvalidEvent as exc:
            event_id, tree_id, node_id, created = _peek(raw)
            bad.append(BadEvent(index=i, line=line, event_id=exc.event_id or event_id,
                                field=exc.field, reason=exc.reason))
            if tree_id is not None and node_id is not None and created:
                refused_nodes.setdefault((tree_id, node_id), i)
            ids[i] = exc.event_id or event_id
            continue
        events.append(ev)
        refs.append((i, ev))
    if bad:
        # A refused node drags down what hangs on it: its children (transitively), and
        # its execution and scores. Those are listed so a client fixes the cause once.
        changed = True
        dependent: set[int] = set()
        while changed:
            changed = False
            for i, ev in refs:
                if i in dependent:
                    continue
                p = ev.payload
                ref = getattr(p, "parent_id", None) if ev.type == "node_created" else ev.node_id
                cause = refused_nodes.get((ev.tree_id, ref)) if ref is not None else None
                if cause is not None:
                    dependent.add(i)
                    changed = True
                    ids[i] = ev.event_id
                    if ev.node_id is not None and ev.type == "node_created":
                        refused_nodes.setdefault((ev.tree_id, ev.node_id), i)
                    bad.append(BadEvent(index=i, line=parts[i][1], event_id=ev.event_id,
                                        field="payload.parent_id" if ev.type == "node_created"
                                        else "payload.node_id",
                                        reason=f"refused because the event at index {cause}, "
                                               f"which it depends on, was refused",
                                        dependent=True, depends_on=ids.get(cause)))
        bad.sort(key=lambda b: b.index)
    return events, source_lines, bad


class _EventsOperation(Operation):
    """The request body as the handler reads it (raw, so both media types are accepted)."""

    def __post_init__(self) -> None:
        text = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
        self.request_body = RequestBody(
            required=True,
            description="A batch of events: a JSON array, or JSON Lines (one per line).",
            content={
                "application/json": OpenAPIMediaType(schema=Schema(
                    type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT))),
                "application/jsonl": text,
                "application/x-ndjson": text,
            },
        )


def _events_handler(max_body: int) -> Any:
    @post("/events", operation_class=_EventsOperation, request_max_body_size=max_body,
          status_code=200, summary="Append a batch of events",
          responses={**ERRORS,
                     409: ResponseSpec(data_container=ErrorBody,
                                       description="An event_id is stored with other content"),
                     413: ResponseSpec(data_container=ErrorBody,
                                       description="The body is over the limit (see limit)"),
                     415: ResponseSpec(data_container=ErrorBody,
                                       description="Neither JSON nor JSON Lines")})
    async def post_events(request: Request[Any, Any, Any], log: Log) -> AppendOut:
        body = await request.body()
        events, source_lines, bad = _decode_batch(body,
                                                  request.headers.get("content-type", ""))
        if bad:
            raise _error(400, f"{len(bad)} bad event(s); nothing of this batch was stored",
                         errors=msgspec.to_builtins(bad))
        try:
            # positions in the batch (1-based) as the lines, mapped back in _refused
            res = await log.append(events, lines=range(1, len(events) + 1), normalized=True)
        except ConflictingEvent as exc:
            raise _error(409, f"{exc}; nothing of this batch was stored",
                         errors=msgspec.to_builtins(_refused(exc, source_lines))) from None
        except InvalidEvent as exc:
            raise _error(400, f"{exc}; nothing of this batch was stored",
                         errors=msgspec.to_builtins(_refused(exc, source_lines))) from None
        return AppendOut(res.stored, res.duplicates, res.last_seq)

    return post_events


def _refused(exc: InvalidEvent, source_lines: Sequence[int | None]) -> list[BadEvent]:
    """Every refused event of a batch the store refused: the store's whole report where it
    gives one (``problems``), else its first problem."""
    problems = getattr(exc, "problems", None) or [exc]
    out = []
    for p in problems:
        index = p.index if getattr(p, "index", None) is not None else (
            p.line - 1 if p.line is not None else 0)
        line = source_lines[index] if 0 <= index < len(source_lines) else None
        depends_on = getattr(p, "depends_on", None)
        out.append(BadEvent(index=index, line=line, event_id=p.event_id, field=p.field,
                            reason=p.reason, dependent=depends_on is not None,
                            depends_on=depends_on,
                            conflict=bool(getattr(p, "conflict", False))
                            or isinstance(p, ConflictingEvent)))
    return out


def _bad_of(exc: InvalidEvent) -> BadEvent:
    return _refused(exc, ())[0]


# --- trees ----------------------------------------------------------------------------------


async def _tree_facts(log: EventLog, trees: list[TreeSummary], opts: ExportOptions
                      ) -> dict[str, TreeItem]:
    """Sizes, root value and pair counts of ``trees``, folded from heads in one bulk read;
    only trees with a candidate pair have their actions read (to drop identical steps)."""
    by_id = {t.tree_id: t for t in trees}
    out: dict[str, TreeItem] = {}
    if not trees:
        return out
    async for tree_id, heads in log.iter_heads(tree_ids=list(by_id)):
        s = by_id.get(tree_id)
        if s is None:
            continue
        g = fold(tree_id, heads)
        estimates = node_estimates(g, opts.values)
        values = {n: e.value for n, e in estimates.items()}
        sc = scan(g, estimates, margin=opts.margin)
        pairs = len(sc.candidates)
        if pairs:  # the actions decide identical steps, the draw counts the values
            view = TreeView(tree_id, await log.read_tree(tree_id), opts)
            pairs = len(view.pairs()[0])
            values = view.values
        root = g.graph["root"]
        out[tree_id] = TreeItem(
            tree_id=tree_id, env=s.env, task_id=str(s.task_id), origin=s.origin,
            created_at=s.created_at, closed=s.closed, nodes=g.number_of_nodes(),
            leaves=sum(1 for n in g.nodes if g.out_degree(n) == 0 and n != root),
            value=values.get(root) if root is not None else None, pairs=pairs,
            branching_points=sc.branching_points)
    return out


@get("/trees", summary="List trees", responses=ERRORS)
async def list_trees(  # noqa: PLR0917 - every filter is a query parameter
    log: Log,
    opts: Options,
    where: Where,
    q: Annotated[str | None, QueryParameter(
        description="Only trees whose id or task id contains this.")] = None,
    has_pairs: Annotated[bool | None, QueryParameter(
        description="Only trees with (true) or without (false) a pair.")] = None,
    min_value: Annotated[float | None, QueryParameter(ge=0, le=1)] = None,
    max_value: Annotated[float | None, QueryParameter(ge=0, le=1)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, QueryParameter(
        description="next_cursor of the previous page.")] = None,
) -> TreeList:
    """Trees matching every filter, oldest first, a page at a time. ``total`` counts every
    match; ``next_cursor`` continues after this page (None on the last)."""
    after = _cursor(cursor)
    trees: list[TreeSummary] = list(await log.list_trees(where))
    if q:
        needle = q.casefold()
        trees = [t for t in trees if needle in t.tree_id.casefold()
                 or needle in str(t.task_id).casefold()]
    by_value = has_pairs is not None or min_value is not None or max_value is not None
    if by_value:
        facts = await _tree_facts(log, trees, opts)

        def keep(i: TreeItem) -> bool:
            return ((has_pairs is None or (i.pairs > 0) == has_pairs)
                    and (min_value is None or (i.value is not None and i.value >= min_value))
                    and (max_value is None or (i.value is not None and i.value <= max_value)))

        trees = [t for t in trees if t.tree_id in facts and keep(facts[t.tree_id])]
    total = len(trees)
    page = [t for t in trees if t.root_seq > after][:limit + 1]
    more = len(page) > limit
    page = page[:limit]
    if not by_value:
        facts = await _tree_facts(log, page, opts)
    items = [facts[t.tree_id] for t in page if t.tree_id in facts]
    return TreeList(items, total, str(page[-1].root_seq) if more and page else None)


def _cursor(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    try:
        value = int(cursor)
    except ValueError:
        raise _error(400, f"cursor {cursor!r} is not one this server gave") from None
    if value < 0:
        raise _error(400, f"cursor {cursor!r} is not one this server gave")
    return value


class Folded(NamedTuple):
    """One tree as the tree and node routes show it, derived once per version of it."""

    stamp: tuple[int, int]
    events: list[Event]
    view: TreeView
    points: dict[str, dict[str, Any]]
    evidence: dict[str, tuple[int, float | None]]
    origin: str | None


class TreeCache:
    """The last few trees folded, so the viewer's lazy loads of a big tree do not read
    and fold it whole each time. An entry serves only while the tree's heads (count and
    last ``seq``, read from the store on every call) are unchanged, so writes from any
    process show at once."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, ExportOptions], Folded] = OrderedDict()

    async def get(self, log: EventLog, tree_id: str, opts: ExportOptions) -> Folded:
        """Raises: NotFoundException: no such tree. StoreUnavailable: as the log."""
        try:
            heads = await log.read_heads(tree_id)
        except TreeNotFound:
            raise NotFoundException(f"no tree {tree_id!r}") from None
        stamp = (len(heads), max((h.seq for h in heads), default=0))
        key = (tree_id, opts)
        hit = self._entries.get(key)
        if hit is not None and hit.stamp == stamp:
            self._entries.move_to_end(key)
            return hit
        try:
            events = await log.read_tree(tree_id)
        except TreeNotFound:
            raise NotFoundException(f"no tree {tree_id!r}") from None
        view = TreeView(tree_id, events, opts)
        origin = next((getattr(e.payload, "origin", None) for e in events
                       if e.type == "node_created" and e.payload.parent_id is None  # type: ignore[union-attr]
                       ), None)
        folded = Folded(stamp, events, view, branch_points(view), evidence(view), origin)
        self._entries[key] = folded
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return folded


@get("/trees/{tree_id:path}", summary="One tree, or a window of it",
     responses={**ERRORS, **NOT_FOUND})
async def get_tree(  # noqa: PLR0917 - every option is a query parameter
    log: Log,
    trees: Trees,
    opts: Options,
    tree_id: FromPath[str],
    node: Annotated[str | None, QueryParameter(
        description="Start the window at this node (default: the root).")] = None,
    depth: Annotated[int, QueryParameter(ge=0, le=10_000)] = 3,
    limit: Annotated[int, QueryParameter(ge=1, le=100_000,
                                    description="About this many nodes at most.")] = 300,
) -> TreeOut:
    """A tree with its values, their evidence (valued leaves under a node and the
    standard error of their mean) and its pairs: the nodes from ``node`` down to ``depth``
    levels, about ``limit`` of them. A node whose ``children_loaded`` is false is asked
    for again with ``node`` set to it."""
    tree_id = tree_id.lstrip("/")
    folded = await trees.get(log, tree_id, opts)
    t = folded.view
    root = t.graph.graph["root"]
    if root is None:
        raise NotFoundException(f"tree {tree_id!r} has no root")
    start = node if node is not None else root
    try:
        nodes = subtree(t, start, depth=depth, limit=limit, points=folded.points,
                        ev=folded.evidence)
    except KeyError:
        raise NotFoundException(f"no node {start!r} in tree {tree_id!r}") from None
    pairs, counts = t.pairs()
    return TreeOut(
        tree_id=tree_id, env=t.env, task_id=str(t.task_id),
        origin=folded.origin, closed=t.graph.graph["closed"], root=root,
        start=start, node_count=t.graph.number_of_nodes(), counts=counts.as_dict(),
        pairs=[p._asdict() for p in pairs],
        nodes=[msgspec.convert(n, NodeOut) for n in nodes])


@get("/node", summary="One node in full", responses={**ERRORS, **NOT_FOUND})
async def get_node(
    log: Log,
    trees: Trees,
    tree_id: FromQuery[str],
    node_id: FromQuery[str],
    opts: Options,
) -> NodeDetail:
    """The node's prompt (the conversation before its action), its action, observation,
    every score with its source and detail, its value and evidence, and its branching
    point's outcome."""
    folded = await trees.get(log, tree_id, opts)
    events, t = folded.events, folded.view
    g = t.graph
    if node_id not in g.nodes:
        raise NotFoundException(f"no node {node_id!r} in tree {tree_id!r}")
    parents = list(g.predecessors(node_id))
    parent = parents[0] if parents else None
    produced_by = info = latency = None
    done = g.nodes[node_id]["done"]
    scores = []
    for ev in events:
        p = ev.payload
        if ev.node_id != node_id:
            continue
        if ev.type == "node_created":
            produced_by = getattr(p, "produced_by", None)
        elif ev.type == "action_executed":
            info, latency = getattr(p, "info", None), getattr(p, "latency_ms", None)
        elif isinstance(p, ScoreAssigned):
            scores.append(ScoreRecord(p.source, p.value, ev.seq, ev.recorded_at, p.detail,
                                      ev.event_id))
    prompt = t.conversation(parent) if parent is not None else [
        t.message(m) for m in t.root_messages]
    leaves, se = folded.evidence[node_id]
    return NodeDetail(
        tree_id=tree_id, node_id=node_id, parent_id=parent, depth=g.nodes[node_id]["depth"],
        prompt=prompt,
        action=t.message(t.actions[node_id]) if node_id in t.actions else None,
        observation=([t.message(m) for m in t.observations[node_id]]
                     if node_id in t.observations else None),
        done=done, info=info, latency_ms=latency, produced_by=produced_by,
        value=t.values.get(node_id), own_score=t.own_score(node_id), leaves=leaves,
        stderr=se, scores=scores, branch=folded.points.get(node_id), tools=t.tools)


# --- stats, summary -------------------------------------------------------------------------


@get("/stats", summary="What `branchpoint stats --json` prints", responses=ERRORS)
async def stats(log: Log, opts: Options, where: Where) -> dict[str, Any]:
    """Trees, nodes, branching points, pairs and drops by reason, in all and per env, for
    the trees the filters select."""
    opts = _checked(msgspec.structs.replace(opts, where=where))
    result: dict[str, Any] = await compute_stats(log, opts)
    return result


BINS = 10


def _histogram(values: list[float], lo: float, hi: float, bins: int = BINS) -> list[int]:
    counts = [0] * bins
    width = (hi - lo) / bins or 1.0
    for v in values:
        counts[min(max(int((v - lo) / width), 0), bins - 1)] += 1
    return counts


@get("/summary", summary="Distributions for the viewer's summary page", responses=ERRORS)
async def summary(log: Log, opts: Options, where: Where) -> dict[str, Any]:
    """``stats`` (as ``/v1/stats``), ``leaf_scores`` (per env, counts of leaf values in ten
    bins over [0, 1]), ``tree_sizes`` (node counts: ``bins`` edges and ``counts``)."""
    opts = _checked(msgspec.structs.replace(opts, where=where))
    envs = {t.tree_id: t.env for t in await log.list_trees(where)}
    leaves: dict[str, list[float]] = {}
    sizes: list[int] = []
    async for tree_id, heads in log.iter_heads(where):
        g = fold(tree_id, heads)
        values = {n: e.value for n, e in node_estimates(g, opts.values).items()}
        leaves.setdefault(envs.get(tree_id, "?"), []).extend(leaf_values(g, values))
        sizes.append(g.number_of_nodes())
    top = max(sizes, default=1)
    edges = [round(1 + i * (top - 1) / BINS, 2) for i in range(BINS + 1)]
    return {
        "stats": await compute_stats(log, opts),
        "leaf_scores": {e: _histogram(v, 0.0, 1.0) for e, v in sorted(leaves.items())},
        "tree_sizes": {"bins": edges, "counts": _histogram([float(s) for s in sizes],
                                                           1.0, float(top))},
    }


# --- scores ---------------------------------------------------------------------------------


@post("/scores", summary="A person's score for a node", status_code=201,
      responses={**ERRORS, **NOT_FOUND})
async def post_score(data: JSONBody[ScoreIn], log: Log) -> ScoreOut:
    """Appends a ``score_assigned`` event with source ``human`` and the note as its detail,
    the same event any writer could append."""
    try:
        heads = await log.read_heads(data.tree_id)
    except TreeNotFound:
        raise NotFoundException(f"no tree {data.tree_id!r}") from None
    if not any(h.node_id == data.node_id and h.type == "node_created" for h in heads):
        raise NotFoundException(f"no node {data.node_id!r} in tree {data.tree_id!r}")
    detail = {"note": data.note} if data.note else None
    event_id = f"{data.tree_id}/{data.node_id}/score/viewer/human/{uuid.uuid4().hex}"
    ev = Event.of(ScoreAssigned(node_id=data.node_id, value=data.value, source="human",
                                detail=detail),
                  tree_id=data.tree_id, event_id=event_id, recorded_at=datetime.now(UTC))
    try:
        res = await log.append([ev])
    except InvalidEvent as exc:
        raise _error(400, str(exc), errors=msgspec.to_builtins(_refused(exc, ()))) from None
    return ScoreOut(event_id, res.stored, res.last_seq)


# --- export ---------------------------------------------------------------------------------


class _JsonlOperation(Operation):
    """A 200 answer of JSON Lines text."""

    def __post_init__(self) -> None:
        if self.responses is not None:
            self.responses["200"] = OpenAPIResponse(
                description="JSON Lines, one example per line",
                content={"application/jsonl": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING))})


@get("/export/{fmt:str}", summary="Stream an export as JSON Lines", media_type="application/jsonl",
     operation_class=_JsonlOperation, responses={**ERRORS, **NOT_FOUND})
async def export(  # noqa: PLR0917 - every option is a query parameter
    log: Log,
    fmt: Annotated[str, PathParameter(description="One of: " + ", ".join(FORMATS))],
    opts: Options,
    where: Where,
    min_score: Annotated[float, QueryParameter(
        ge=0, le=1, description="sft: keep paths whose leaf value reaches this.")] = 1.0,
    label_threshold: Annotated[float, QueryParameter(
        ge=0, le=1, description="stepwise: a step is good when its value reaches this.")
    ] = 0.5,
    with_metadata: Annotated[bool, QueryParameter(
        description="dpo, trajectory-pairs: add tree, nodes, values, margin.")] = False,
    tool_arguments: Annotated[Literal["object", "string"], QueryParameter(
        description="Tool-call arguments as JSON objects or as the strings sent.")
    ] = "object",
) -> Stream:
    """Export ``fmt`` with the CLI's options, streamed line by line from the first byte:
    byte for byte what ``branchpoint export`` writes."""
    if fmt not in FORMATS:
        raise NotFoundException(f"unknown export format {fmt!r}; expected one of "
                                f"{list(FORMATS)}")
    opts = _checked(msgspec.structs.replace(
        opts, where=where, min_score=min_score, label_threshold=label_threshold,
        with_metadata=with_metadata, tool_arguments=tool_arguments))
    lines = export_lines(log, fmt, opts)
    # The first line is pulled before the answer starts, so a store that is down is a
    # 503 rather than a stream cut short.
    try:
        first = await anext(lines)
    except StopAsyncIteration:
        first = b""
    except ValueError as exc:
        raise _error(400, str(exc)) from None

    async def rest() -> AsyncIterator[bytes]:
        if first:
            yield first
            async for line in lines:
                yield line

    return Stream(rest(), media_type="application/jsonl")


@get("/health", summary="Liveness", include_in_schema=True, sync_to_thread=False)
def health() -> Health:
    """``{"status": "ok"}`` while the process serves."""
    return Health("ok")


# --- the router -----------------------------------------------------------------------------


def _log(state: State) -> EventLog:
    log: EventLog = state.log
    return log


def store_unavailable(request: Request[Any, Any, Any], exc: StoreUnavailable) -> Response[Any]:
    """A store outage is 503, whatever route met it."""
    return Response(ErrorBody(503, f"the store is unavailable: {exc}"), status_code=503)


def api_router(*, max_body: int = DEFAULT_MAX_BODY) -> Router:
    """The ``/v1`` routes over the log in ``app.state.log`` (dependency ``log``)."""
    cache = TreeCache()
    return Router(
        path="/v1",
        route_handlers=[_events_handler(max_body), list_trees, get_tree, get_node, stats,
                        summary, post_score, export],
        dependencies={"log": Provide(_log, sync_to_thread=False),
                      "opts": Provide(value_options, sync_to_thread=False),
                      "where": Provide(tree_filter, sync_to_thread=False),
                      "trees": Provide(lambda: cache, sync_to_thread=False)},
        exception_handlers={StoreUnavailable: store_unavailable},
        tags=["store"],
    )
