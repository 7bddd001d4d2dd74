"""Export formats: streaming JSON Lines over an event log, one example per line.

Every format is one async generator, :func:`export_lines`, yielding each line as UTF-8
bytes ending in ``\\n``. The CLI writes these bytes to a file or stdout and the HTTP server
streams the very same bytes. Trees are read one at a time (``read_tree``), so memory stays
flat however large the log; output order is deterministic: trees in the order the log
lists them (oldest first), nodes in ``seq`` order.

Formats (``options`` is an :class:`ExportOptions`; values and pairs as in
:mod:`branchpoint.store.values` and :mod:`branchpoint.store.pairs`):

``dpo``
    ``{"prompt": [...], "chosen": [msg], "rejected": [msg]}`` per pair (TRL's conversational
    preference format with an explicit prompt). The prompt is the conversation at the
    branching node: the root's messages, then along the path each node's action and
    observation, up to and including the branching node's observation. ``tools`` is added
    when the tree has tool schemas; ``metadata`` with ``--with-metadata`` (tree, env, task,
    branching node, chosen and rejected node and value, ``margin`` = the value difference,
    and the evidence: ``chosen_leaves``/``rejected_leaves``, the scored leaves beneath each,
    ``chosen_se``/``rejected_se`` their standard errors, ``z`` = margin / the difference's
    standard error; plus ``chosen_mistake``/``rejected_mistake`` when the steps carry
    ``produced_by.mistake``).
``steps``
    One line per executed node: ``tree_id``, ``node_id``, ``parent_id``, ``depth``,
    ``prompt`` (the conversation before the action), ``action``, ``observation``, ``score``
    (the node's own score, or null; an inner node's score is shown here although its
    value comes from its leaves), ``value`` (its propagated value, or null), ``leaves``
    and ``se`` (the scored leaves beneath it and its value's standard error, or null).
``sft``
    ``{"messages": [...]}`` (plus ``tools``) for each root-to-leaf path whose leaf scores
    (its own score: never discounted) at least ``min_score``, done or cut off, and that
    holds an assistant step (a scored root alone gives no row: no export writes a row
    without an assistant step). The leaf's own observation is left off the end: the
    conversation ends with the last assistant turn, the one thing a trainer learns from.
``trajectory-pairs``
    Every root-to-leaf path with a valued leaf is an episode; episodes of one task
    (``env`` and ``task_id``, across trees) are ranked by value and paired from both
    ends: 1st against last, 2nd against second to last, ... while the two differ by at
    least the margin (among equal values the earlier tree, then the lower ``seq``, is
    taken first at either end). ``prompt`` is the root's messages (of the chosen
    episode's tree), ``chosen``/``rejected`` the rest of each episode, trimmed like
    ``sft``. Pairs come task by task, in the order the tasks first appear in the log.
``stepwise``
    TRL's stepwise supervision (``prompt``, ``completions``, ``labels``), one row per
    root-to-leaf path with a valued leaf. Text rendering (:func:`render_message`): each
    message is ``"<role>: <text>"``, each tool call adds a line ``[call <name>] <arguments
    as sent>``, non-text content parts show as ``[<type>]``. The prompt is the root's
    messages joined by blank lines. Step *i* is the observation that answered step *i-1*
    (none for the first) followed by action *i*, joined by blank lines, so a step's label
    is predicted before its own outcome is seen. Label *i* is ``value(node_i) >=
    label_threshold``.
``events``
    The raw events of the selected trees, one per line in the event format (what
    ``branchpoint ingest`` reads), in ``seq`` order, without the store-assigned ``seq``
    (a store assigns its own): a backup, or a move from one store to another (SQLite to
    PostgreSQL). Ingesting it into another store gives the same trees and the same
    exports. Export options other than the tree filter do not apply.

Tool-call arguments are written as JSON objects (what Hugging Face chat templates expect)
unless ``tool_arguments="string"``; an argument string that is not a JSON object (invalid
JSON, or a JSON array or scalar) stays a string. Note that ``datasets`` infers one type per
column, so a file mixing object and string arguments in the same position may not load;
export with ``tool_arguments="string"`` for such data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Final, Literal

import msgspec
import networkx as nx

from branchpoint.store.events import ActionExecuted, Event, NodeCreated, encode_event
from branchpoint.store.log import EventLog, TreeFilter, TreeSummary, iter_events
from branchpoint.store.pairs import (
    DEFAULT_MARGIN,
    TOLERANCE,
    Counts,
    Pair,
    extract_pairs,
    judge_pairs,
    mistake_label,
)
from branchpoint.store.tree import fold
from branchpoint.store.values import (
    Estimate,
    Reduce,
    ValueOptions,
    draw_count,
    node_estimates,
    own_score,
)

__all__ = [
    "FORMATS",
    "TRAINING_FORMATS",
    "ExportOptions",
    "TreeView",
    "compute_stats",
    "export_lines",
    "render_message",
    "tree_counts",
]

#: The formats of training data, each derived from trees.
TRAINING_FORMATS: Final[tuple[str, ...]] = ("dpo", "steps", "sft", "trajectory-pairs",
                                            "stepwise")
#: Every format: the training formats, and ``events``, the log itself.
FORMATS: Final[tuple[str, ...]] = (*TRAINING_FORMATS, "events")
Message = dict[str, Any]

_encoder = msgspec.json.Encoder()


class ExportOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What to export and how values and pairs are computed; every default is the CLI's."""

    #: which trees to export (tree, env, task, origin, since/until, finished, split)
    where: TreeFilter | None = None
    env: str | None = None  # kept for callers of old: the same as ``where.env``
    margin: float = DEFAULT_MARGIN
    value: Reduce = "mean"
    sources: tuple[str, ...] | None = None
    judge_weight: float | None = None
    min_score: float = 1.0
    label_threshold: float = 0.5
    with_metadata: bool = False
    tool_arguments: Literal["object", "string"] = "object"
    confidence: float | None = None  # Z: keep a pair only when its margin is >= Z SEs
    discount: float = 1.0  # G: a leaf's score counts G**k k steps above it
    binary: bool = False  # checker scores count 1.0 when 1.0, else 0.0

    @property
    def values(self) -> ValueOptions:
        """The options that make values (:mod:`branchpoint.store.values`)."""
        return ValueOptions(reduce=self.value, sources=self.sources,
                            judge_weight=self.judge_weight, discount=self.discount,
                            binary=self.binary)

    def trees(self) -> TreeFilter:
        """The tree filter: ``where``, with ``env`` when it is set.

        Raises:
            ValueError: ``env`` and ``where.env`` name different environments.
        """
        where = self.where or TreeFilter()
        if self.env is None or where.env == self.env:
            return where
        if where.env is not None:
            raise ValueError(f"two environments asked for: {self.env!r} and {where.env!r}")
        return msgspec.structs.replace(where, env=self.env)

    def check(self) -> None:
        """Raises: ValueError: an option out of range."""
        self.trees()
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin!r}")
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"min score must be in [0, 1], got {self.min_score!r}")
        if not 0 <= self.label_threshold <= 1:
            raise ValueError(f"label threshold must be in [0, 1], got {self.label_threshold!r}")
        if self.confidence is not None and not self.confidence >= 0:
            raise ValueError(f"confidence must be >= 0, got {self.confidence!r}")
        self.values.check()
        if self.tool_arguments not in ("object", "string"):
            raise ValueError(f"tool arguments must be object or string, "
                             f"got {self.tool_arguments!r}")


class TreeView:
    """One tree folded from its events, with the payloads the exports need."""

    def __init__(self, tree_id: str, events: Sequence[Event], options: ExportOptions) -> None:
        self.tree_id = tree_id
        # one fold of the whole tree: apply() per event would clear networkx's cache each time
        self.graph: nx.DiGraph = fold(tree_id, [ev.head() for ev in events])
        self.actions: dict[str, Message] = {}
        self.observations: dict[str, list[Message]] = {}
        self.root_messages: list[Message] = []
        self.tools: list[Message] | None = None
        self.env = ""
        self.task_id: str | int = ""
        counts: dict[str, int] = {}
        self.mistakes: dict[str, bool] = {}  # ground truth, where the policy recorded it
        for ev in events:
            p = ev.payload
            if isinstance(p, NodeCreated):
                if p.parent_id is None:
                    self.root_messages = p.messages or []
                    self.tools = p.tools or None
                    task = p.task or {}
                    self.env, self.task_id = task.get("env", ""), task.get("task_id", "")
                else:
                    if p.action is not None:
                        self.actions[p.node_id] = p.action
                    if p.produced_by is not None:
                        counts[p.node_id] = draw_count(p.produced_by)
                        if (label := mistake_label(p.produced_by)) is not None:
                            self.mistakes[p.node_id] = label
            elif isinstance(p, ActionExecuted):
                self.observations[p.node_id] = p.observation
        self.options = options
        self.estimates: dict[str, Estimate] = node_estimates(self.graph, options.values,
                                                             counts=counts)
        self.values = {n: e.value for n, e in self.estimates.items()}

    def pairs(self) -> tuple[list[Pair], Counts]:
        """The tree's pairs and counts under the options, judged against the ground truth
        when the tree carries it."""
        pairs, counts = extract_pairs(self.graph, self.estimates, self.actions,
                                      margin=self.options.margin,
                                      confidence=self.options.confidence)
        if self.mistakes:
            counts.labelled_trees = 1
            counts.pairs_decided, counts.pairs_correct = judge_pairs(pairs, self.mistakes)
        return pairs, counts

    def by_seq(self) -> list[str]:
        nodes = self.graph.nodes
        return sorted(nodes, key=lambda n: nodes[n]["seq"])

    def leaves(self) -> list[str]:
        g = self.graph
        return [n for n in self.by_seq() if g.out_degree(n) == 0]

    def path(self, node: str) -> list[str]:
        """Node ids from the root down to ``node``."""
        out = [node]
        pred = self.graph.pred
        while pred[out[-1]]:
            out.append(next(iter(pred[out[-1]])))
        out.reverse()
        return out

    def conversation(self, node: str) -> list[Message]:
        """The root's messages, then each step's action and observation down to ``node``."""
        out = [self.message(m) for m in self.root_messages]
        for n in self.path(node)[1:]:
            out.append(self.message(self.actions[n]))
            out.extend(self.message(m) for m in self.observations.get(n, ()))
        return out

    def own_score(self, node: str) -> float | None:
        score: float | None = own_score(self.graph.nodes[node]["scores"],
                                        sources=self.options.sources,
                                        judge_weight=self.options.judge_weight,
                                        binary=self.options.binary)
        return score

    def message(self, m: Message) -> Message:
        """``m`` as exported: tool-call arguments as objects unless asked otherwise."""
        calls = m.get("tool_calls")
        if not calls or self.options.tool_arguments == "string":
            return m
        return {**m, "tool_calls": [_call_with_object(c) for c in calls]}


def _call_with_object(call: Any) -> Any:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(raw := fn.get("arguments"), str):
        return call
    try:
        parsed = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return call
    if not isinstance(parsed, dict):
        return call
    return {**call, "function": {**fn, "arguments": parsed}}


def _trim(messages: list[Message]) -> list[Message]:
    end = len(messages)
    while end and messages[end - 1].get("role") != "assistant":
        end -= 1
    return messages[:end]


def _line(row: dict[str, Any]) -> bytes:
    return _encoder.encode(row) + b"\n"


# --- formats over one tree -----------------------------------------------------------------


def _dpo(t: TreeView) -> Iterator[bytes]:
    pairs, _ = t.pairs()
    for p in pairs:
        row: dict[str, Any] = {
            "prompt": t.conversation(p.parent),
            "chosen": [t.message(t.actions[p.chosen])],
            "rejected": [t.message(t.actions[p.rejected])],
        }
        if t.tools:
            row["tools"] = t.tools
        if t.options.with_metadata:
            row["metadata"] = {
                "tree_id": t.tree_id, "env": t.env, "task_id": str(t.task_id),
                "node_id": p.parent, "chosen_node_id": p.chosen,
                "rejected_node_id": p.rejected, "chosen_value": p.chosen_value,
                "rejected_value": p.rejected_value,
                "margin": p.chosen_value - p.rejected_value,
                "chosen_leaves": p.chosen_leaves, "rejected_leaves": p.rejected_leaves,
                "chosen_se": p.chosen_se, "rejected_se": p.rejected_se,
                "z": ((p.chosen_value - p.rejected_value) / p.diff_se if p.diff_se > 0
                      else None),
            }
            if p.chosen in t.mistakes and p.rejected in t.mistakes:
                row["metadata"]["chosen_mistake"] = t.mistakes[p.chosen]
                row["metadata"]["rejected_mistake"] = t.mistakes[p.rejected]
        yield _line(row)


def _steps(t: TreeView) -> Iterator[bytes]:
    nodes = t.graph.nodes
    for n in t.by_seq():
        if not nodes[n]["executed"]:
            continue
        parent = t.path(n)[-2]
        est = t.estimates.get(n)
        yield _line({
            "tree_id": t.tree_id, "node_id": n, "parent_id": parent, "depth": nodes[n]["depth"],
            "prompt": t.conversation(parent), "action": t.message(t.actions[n]),
            "observation": [t.message(m) for m in t.observations.get(n, ())],
            "score": t.own_score(n), "value": t.values.get(n),
            "leaves": est.leaves if est else None, "se": est.se if est else None,
        })


def _sft(t: TreeView) -> Iterator[bytes]:
    for leaf in t.leaves():
        value = t.values.get(leaf)  # a leaf's value is its own score: never discounted
        if value is None or value < t.options.min_score - TOLERANCE:
            continue
        if leaf == t.graph.graph["root"]:  # a scored root alone: no step to learn from
            continue
        messages = _trim(t.conversation(leaf))
        row: dict[str, Any] = {"messages": messages}
        if t.tools:
            row["tools"] = t.tools
        yield _line(row)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
        else:
            parts.append(f"[{part.get('type') if isinstance(part, dict) else 'part'}]")
    return "".join(parts)


def render_message(m: Message) -> str:
    """One message as text for ``stepwise``: ``"<role>: <text>"`` then one line per tool
    call, ``[call <name>] <arguments as sent>``."""
    lines = [f"{m.get('role')}: {_text(m.get('content'))}".rstrip()]
    for call in m.get("tool_calls") or ():
        fn = call.get("function", {}) if isinstance(call, dict) else {}
        args = fn.get("arguments")
        args_text = args if isinstance(args, str) else _encoder.encode(args).decode()
        lines.append(f"[call {fn.get('name')}] {args_text}")
    return "\n".join(lines)


def _stepwise(t: TreeView) -> Iterator[bytes]:
    prompt = "\n\n".join(render_message(m) for m in t.root_messages)
    for leaf in t.leaves():
        if leaf not in t.values:
            continue
        steps = t.path(leaf)[1:]
        if not steps:
            continue
        completions, labels = [], []
        before: list[Message] = []
        for n in steps:
            completions.append("\n\n".join(render_message(m) for m in [*before, t.actions[n]]))
            labels.append(t.values[n] >= t.options.label_threshold - TOLERANCE)
            before = t.observations.get(n, [])
        yield _line({"prompt": prompt, "completions": completions, "labels": labels})


_PER_TREE = {"dpo": _dpo, "steps": _steps, "sft": _sft, "stepwise": _stepwise}


# --- driving the log -------------------------------------------------------------------------


async def _trees(log: EventLog, options: ExportOptions) -> list[TreeSummary]:
    trees: list[TreeSummary] = await log.list_trees(options.trees())
    return trees


async def export_lines(log: EventLog, fmt: str, options: ExportOptions | None = None
                       ) -> AsyncIterator[bytes]:
    """The lines of export ``fmt`` over ``log``, each UTF-8 JSON ending in ``\\n``.

    Raises:
        ValueError: an unknown format or an option out of range (before any line).
        StoreUnavailable: the store cannot be read.
    """
    options = options or ExportOptions()
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {list(FORMATS)}")
    options.check()
    if fmt == "trajectory-pairs":
        async for line in _trajectory_pairs(log, options):
            yield line
        return
    if fmt == "events":
        async for line in _events(log, options):
            yield line
        return
    per_tree = _PER_TREE[fmt]
    for summary in await _trees(log, options):
        view = TreeView(summary.tree_id, await log.read_tree(summary.tree_id), options)
        for line in per_tree(view):
            yield line


async def _events(log: EventLog, options: ExportOptions) -> AsyncIterator[bytes]:
    where = options.trees()
    # the trees are chosen once, up front; events are read in seq order, page by page
    wanted = None if where == TreeFilter() else {t.tree_id for t in await _trees(log, options)}
    if wanted is not None and not wanted:
        return
    async for ev in iter_events(log):
        if wanted is None or ev.tree_id in wanted:
            yield encode_event(msgspec.structs.replace(ev, seq=None)) + b"\n"


async def _trajectory_pairs(log: EventLog, options: ExportOptions) -> AsyncIterator[bytes]:
    # Pass 1 ranks the episodes from heads only, every tree in one bulk read; pass 2 reads
    # the payloads of the trees that are paired, so a task's trees are never all in memory
    # at once (only their episodes, a few scalars per leaf).
    tasks: dict[tuple[str, str], list[tuple[float, int, int, str, str]]] = {}
    trees_of_task: dict[tuple[str, str], int] = {}
    task_of = {s.tree_id: (s.env, str(s.task_id)) for s in await _trees(log, options)}
    async for tree_id, heads in log.iter_heads(options.trees()):
        key = task_of.get(tree_id)
        if key is None:  # a tree whose root was stored after the listing above
            continue
        index = trees_of_task.get(key, 0)
        trees_of_task[key] = index + 1
        episodes = tasks.setdefault(key, [])
        g = fold(tree_id, heads)
        # leaf values only: draw counts and discounts do not touch them
        values = {n: e.value for n, e in node_estimates(g, options.values).items()}
        for n in g.nodes:
            if g.out_degree(n) == 0 and n in values and n != g.graph["root"]:
                episodes.append((values[n], index, g.nodes[n]["seq"], tree_id, n))
    del task_of
    for episodes in tasks.values():
        best_first = sorted(episodes, key=lambda e: (-e[0], e[1], e[2]))
        worst_first = sorted(episodes, key=lambda e: (e[0], e[1], e[2]))
        cache: dict[str, TreeView] = {}
        used: set[tuple[str, str]] = set()
        for best, worst in zip(best_first[:len(episodes) // 2], worst_first, strict=False):
            diff = best[0] - worst[0]
            if diff <= TOLERANCE or diff < options.margin - TOLERANCE:
                break
            if (best[3], best[4]) in used or (worst[3], worst[4]) in used:
                break
            used.update(((best[3], best[4]), (worst[3], worst[4])))
            views = []
            for ep in (best, worst):
                if ep[3] not in cache:
                    if len(cache) >= 2:
                        cache.pop(next(iter(cache)))
                    cache[ep[3]] = TreeView(ep[3], await log.read_tree(ep[3]), options)
                views.append(cache[ep[3]])
            chosen_view, rejected_view = views
            start = len(chosen_view.root_messages)
            row: dict[str, Any] = {
                "prompt": [chosen_view.message(m) for m in chosen_view.root_messages],
                "chosen": _trim(chosen_view.conversation(best[4]))[start:],
                "rejected": _trim(rejected_view.conversation(worst[4]))[
                    len(rejected_view.root_messages):],
            }
            if chosen_view.tools:
                row["tools"] = chosen_view.tools
            if options.with_metadata:
                row["metadata"] = {
                    "env": chosen_view.env, "task_id": str(chosen_view.task_id),
                    "chosen_tree_id": best[3], "chosen_node_id": best[4],
                    "rejected_tree_id": worst[3], "rejected_node_id": worst[4],
                    "chosen_value": best[0], "rejected_value": worst[0],
                    "margin": best[0] - worst[0],
                }
            yield _line(row)


def tree_counts(tree_id: str, events: Sequence[Event], options: ExportOptions | None = None
                ) -> Counts:
    """One tree's tally under ``options`` (default: the export's defaults): its pairs, its
    branching points and why the others gave none, its nodes. :func:`compute_stats` adds
    these up over trees; a caller that sees trees finish one at a time (the sampler's
    progress display) keeps the same running total without reading a tree twice.

    Raises:
        ValueError: an option out of range.
    """
    options = options or ExportOptions()
    view = TreeView(tree_id, events, options)
    _, counts = view.pairs()
    counts.trees, counts.nodes = 1, view.graph.number_of_nodes()
    return counts


async def compute_stats(log: EventLog, options: ExportOptions | None = None) -> dict[str, Any]:
    """``{"trees", "nodes", "branching_points", "pairs", "dropped": {"tie", "under_margin",
    "identical", "low_confidence"}, "by_env": {ENV: {the same keys}}}`` over every tree
    (finished or not) that ``options.trees()`` selects; ``pairs + sum(dropped) ==
    branching_points``. Where trees carry ground truth (``produced_by.mistake``), also
    ``pairs_decided``, ``pairs_correct`` and ``pair_precision`` (None with no decided
    pair; :mod:`branchpoint.store.pairs`).

    Raises:
        ValueError: an option out of range.
        StoreUnavailable: the store cannot be read.
    """
    options = options or ExportOptions()
    options.check()
    total = Counts()
    by_env: dict[str, Counts] = {}
    for summary in await _trees(log, options):
        counts = tree_counts(summary.tree_id, await log.read_tree(summary.tree_id), options)
        total.add(counts)
        by_env.setdefault(summary.env, Counts()).add(counts)
    return {**total.as_dict(),
            "by_env": {env: by_env[env].as_dict() for env in sorted(by_env)}}
