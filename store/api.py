"""The store's HTTP API: a Litestar router over an :class:`~branchpoint.store.log.EventLog`.

Routes (all under ``/v1``; the app in :mod:`branchpoint.cli.app` adds auth and the viewer):

``POST /v1/events``
    A batch of events, a JSON array (``application/json``) or JSON Lines
    (``application/jsonl``, ``application/x-ndjson``), appended atomically and
    idempotently. 400 lists every bad event (``index`` in the batch, ``line`` for JSON
    Lines, ``event_id``, ``field``, ``reason``, and ``dependent: true`` for the events
    refused only because one they depend on was); 409 a conflicting re-send; 413 a body
    over the limit (the body says the limit); 503 a store outage. Nothing of a refused
    batch is stored.
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
(``margin``, ``value``, ``sources``, ``judge_weight``).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
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
from branchpoint.store.pairs import DEFAULT_MARGIN, extract_pairs, scan
from branchpoint.store.tree import fold
from branchpoint.store.values import node_values
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

Margin = Annotated[float, QueryParameter(ge=0, le=1e9, description="A pair needs the best child's "
                                    "value above the worst's by at least this.")]
ValueMode = Annotated[Literal["mean", "max"], QueryParameter(
    description="An inner node's value: the mean or the max of its children's.")]
Sources = Annotated[str | None, QueryParameter(
    description="Comma-separated score sources a leaf's value may come from.")]
JudgeWeight = Annotated[float | None, QueryParameter(
    ge=0, le=1, description="Leaf value = (1-W)*checker + W*judge.")]


def export_options(*, env: str | None = None, margin: float = DEFAULT_MARGIN,
                   value: str = "mean", sources: str | None = None,
                   judge_weight: float | None = None, **rest: Any) -> ExportOptions:
    """Query parameters as :class:`ExportOptions`, the way the CLI builds them.

    Raises:
        HTTPException: 400 for an option out of range.
    """
    names = None
    if sources is not None:
        names = tuple(s.strip() for s in sources.split(",") if s.strip())
        if not names:
            raise _error(400, "sources must name at least one source")
    opts = ExportOptions(env=env, margin=margin, value=value,  # type: ignore[arg-type]
                         sources=names, judge_weight=judge_weight, **rest)
    try:
        opts.check()
    except ValueError as exc:
        raise _error(400, str(exc)) from None
    return opts


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
                  ) -> tuple[list[Event], list[int], list[BadEvent]]:
    """Every event decoded and normalized, or every reason it was not; events that refer
    to a refused event's node are refused too, as ``dependent``."""
    parts = _split(body, content_type)
    events: list[Event] = []
    lines: list[int] = []
    bad: list[BadEvent] = []
    refused_nodes: dict[tuple[str, str], int] = {}
    refs: list[tuple[int, Event]] = []
    for i, (raw, line) in enumerate(parts):
        try:
            ev = normalize(decode_event(raw, line=line or i + 1))
        except InvalidEvent as exc:
            event_id, tree_id, node_id, created = _peek(raw)
            bad.append(BadEvent(index=i, line=line, event_id=exc.event_id or event_id,
                                field=exc.field, reason=exc.reason))
            if tree_id is not None and node_id is not None and created:
                refused_nodes.setdefault((tree_id, node_id), i)
            continue
        events.append(ev)
        lines.append(i + 1)
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
                    if ev.node_id is not None and ev.type == "node_created":
                        refused_nodes.setdefault((ev.tree_id, ev.node_id), i)
                    bad.append(BadEvent(index=i, line=parts[i][1], event_id=ev.event_id,
                                        field="payload.parent_id" if ev.type == "node_created"
                                        else "payload.node_id",
                                        reason=f"refused because the event at index {cause}, "
                                               f"which it depends on, was refused",
                                        dependent=True))
        bad.sort(key=lambda b: b.index)
    return events, lines, bad


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
        events, lines, bad = _decode_batch(body, request.headers.get("content-type", ""))
        if bad:
            raise _error(400, f"{len(bad)} bad event(s); nothing of this batch was stored",
                         errors=msgspec.to_builtins(bad))
        try:
            res = await log.append(events, lines=lines, normalized=True)
        except ConflictingEvent as exc:
            raise _error(409, f"{exc}; nothing of this batch was stored",
                         errors=_bads_of(exc)) from None
        except InvalidEvent as exc:
            raise _error(400, f"{exc}; nothing of this batch was stored",
                         errors=_bads_of(exc)) from None
        return AppendOut(res.stored, res.duplicates, res.last_seq)

    return post_events


def _bads_of(exc: InvalidEvent) -> list[Any]:
    """Every event the store refused (``InvalidEvent.problems``), as wire ``errors``."""
    return [msgspec.to_builtins(BadEvent(
        index=p.index if p.index is not None else (p.line - 1 if p.line is not None else 0),
        line=p.line, event_id=p.event_id, field=p.field, reason=p.reason,
        dependent=p.depends_on is not None)) for p in exc.problems]


# --- trees ----------------------------------------------------------------------------------


def _filter(  # noqa: PLR0917 - the TreeFilter fields in order
    env: str | None, task_id: str | None, origin: str | None,
            since: datetime | None, until: datetime | None, finished: bool | None
            ) -> TreeFilter:
    return TreeFilter(env=env, task_id=task_id, origin=origin, since=since, until=until,
                      finished=finished)


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
        values = node_values(g, reduce=opts.value, sources=opts.sources,
                             judge_weight=opts.judge_weight)
        sc = scan(g, values, margin=opts.margin)
        pairs = len(sc.candidates)
        if pairs:
            view = TreeView(tree_id, await log.read_tree(tree_id), opts)
            pairs = len(extract_pairs(view.graph, view.values, view.actions,
                                      margin=opts.margin)[0])
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
    env: FromQuery[str | None] = None,
    task_id: FromQuery[str | None] = None,
    origin: FromQuery[str | None] = None,
    since: FromQuery[datetime | None] = None,
    until: FromQuery[datetime | None] = None,
    finished: FromQuery[bool | None] = None,
    q: Annotated[str | None, QueryParameter(
        description="Only trees whose id or task id contains this.")] = None,
    has_pairs: FromQuery[bool | None] = None,
    min_value: Annotated[float | None, QueryParameter(ge=0, le=1)] = None,
    max_value: Annotated[float | None, QueryParameter(ge=0, le=1)] = None,
    margin: Margin = DEFAULT_MARGIN,
    value: ValueMode = "mean",
    sources: Sources = None,
    judge_weight: JudgeWeight = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, QueryParameter(
        description="next_cursor of the previous page.")] = None,
) -> TreeList:
    """Trees matching every filter, oldest first, a page at a time. ``total`` counts every
    match; ``next_cursor`` continues after this page (None on the last)."""
    opts = export_options(margin=margin, value=value, sources=sources,
                          judge_weight=judge_weight)
    after = _cursor(cursor)
    trees: list[TreeSummary] = await log.list_trees(
        _filter(env, task_id, origin, since, until, finished))
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
        folded = Folded(stamp, events, view, branch_points(view),
                        evidence(view.graph, view.values), origin)
        self._entries[key] = folded
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return folded


@get("/trees/{tree_id:path}", summary="One tree, or a window of it",
     responses={**ERRORS, **NOT_FOUND})
async def get_tree(  # noqa: PLR0917 - every option is a query parameter
    log: Log,
    trees: Trees,
    tree_id: FromPath[str],
    node: Annotated[str | None, QueryParameter(
        description="Start the window at this node (default: the root).")] = None,
    depth: Annotated[int, QueryParameter(ge=0, le=10_000)] = 3,
    limit: Annotated[int, QueryParameter(ge=1, le=100_000,
                                    description="About this many nodes at most.")] = 300,
    margin: Margin = DEFAULT_MARGIN,
    value: ValueMode = "mean",
    sources: Sources = None,
    judge_weight: JudgeWeight = None,
) -> TreeOut:
    """A tree with its values, their evidence (valued leaves under a node and the
    standard error of their mean) and its pairs: the nodes from ``node`` down to ``depth``
    levels, about ``limit`` of them. A node whose ``children_loaded`` is false is asked
    for again with ``node`` set to it."""
    opts = export_options(margin=margin, value=value, sources=sources,
                          judge_weight=judge_weight)
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
    pairs, counts = extract_pairs(t.graph, t.values, t.actions, margin=opts.margin)
    return TreeOut(
        tree_id=tree_id, env=t.env, task_id=str(t.task_id),
        origin=folded.origin, closed=t.graph.graph["closed"], root=root,
        start=start, node_count=t.graph.number_of_nodes(), counts=counts.as_dict(),
        pairs=[p._asdict() for p in pairs],
        nodes=[msgspec.convert(n, NodeOut) for n in nodes])


@get("/node", summary="One node in full", responses={**ERRORS, **NOT_FOUND})
async def get_node(  # noqa: PLR0917 - every option is a query parameter
    log: Log,
    trees: Trees,
    tree_id: FromQuery[str],
    node_id: FromQuery[str],
    margin: Margin = DEFAULT_MARGIN,
    value: ValueMode = "mean",
    sources: Sources = None,
    judge_weight: JudgeWeight = None,
) -> NodeDetail:
    """The node's prompt (the conversation before its action), its action, observation,
    every score with its source and detail, its value and evidence, and its branching
    point's outcome."""
    opts = export_options(margin=margin, value=value, sources=sources,
                          judge_weight=judge_weight)
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
async def stats(  # noqa: PLR0917 - every option is a query parameter
    log: Log,
    env: FromQuery[str | None] = None,
    margin: Margin = DEFAULT_MARGIN,
    value: ValueMode = "mean",
    sources: Sources = None,
    judge_weight: JudgeWeight = None,
) -> dict[str, Any]:
    """Trees, nodes, branching points, pairs and drops by reason, in all and per env."""
    opts = export_options(env=env, margin=margin, value=value, sources=sources,
                          judge_weight=judge_weight)
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
async def summary(  # noqa: PLR0917 - every option is a query parameter
    log: Log,
    env: FromQuery[str | None] = None,
    margin: Margin = DEFAULT_MARGIN,
    value: ValueMode = "mean",
    sources: Sources = None,
    judge_weight: JudgeWeight = None,
) -> dict[str, Any]:
    """``stats`` (as ``/v1/stats``), ``leaf_scores`` (per env, counts of leaf values in ten
    bins over [0, 1]), ``tree_sizes`` (node counts: ``bins`` edges and ``counts``)."""
    opts = export_options(env=env, margin=margin, value=value, sources=sources,
                          judge_weight=judge_weight)
    envs = {t.tree_id: t.env for t in await log.list_trees(TreeFilter(env=env))}
    leaves: dict[str, list[float]] = {}
    sizes: list[int] = []
    async for tree_id, heads in log.iter_heads(TreeFilter(env=env)):
        g = fold(tree_id, heads)
        values = node_values(g, reduce=opts.value, sources=opts.sources,
                             judge_weight=opts.judge_weight)
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
        raise _error(400, str(exc), errors=_bads_of(exc)) from None
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
    fmt: Annotated[str, PathParameter(description="dpo, steps, sft, trajectory-pairs or stepwise")],
    env: FromQuery[str | None] = None,
    margin: Margin = DEFAULT_MARGIN,
    value: ValueMode = "mean",
    sources: Sources = None,
    judge_weight: JudgeWeight = None,
    min_score: Annotated[float, QueryParameter(ge=-1e9, le=1e9)] = 1.0,
    label_threshold: Annotated[float, QueryParameter(ge=-1e9, le=1e9)] = 0.5,
    with_metadata: FromQuery[bool] = False,
    tool_arguments: FromQuery[Literal["object", "string"]] = "object",
    tree: Annotated[str | None, QueryParameter(description="Only this tree.")] = None,
) -> Stream:
    """Export ``fmt`` with the CLI's options, streamed line by line from the first byte:
    byte for byte what ``branchpoint export`` writes."""
    if fmt not in FORMATS:
        raise NotFoundException(f"unknown export format {fmt!r}; expected one of "
                                f"{list(FORMATS)}")
    opts = export_options(env=env, margin=margin, value=value, sources=sources,
                          judge_weight=judge_weight, min_score=min_score,
                          label_threshold=label_threshold, with_metadata=with_metadata,
                          tool_arguments=tool_arguments)
    if tree is not None:  # the store's own tree filter: every format, events included
        opts = msgspec.structs.replace(
            opts, where=msgspec.structs.replace(opts.trees(), tree_id=tree))
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
                      "trees": Provide(lambda: cache, sync_to_thread=False)},
        exception_handlers={StoreUnavailable: store_unavailable},
        tags=["store"],
    )
