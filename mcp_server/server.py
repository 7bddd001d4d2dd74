"""The MCP server: branchpoint's tools and tree resources on the official ``mcp`` SDK.

:func:`build_server` registers seven tools and one resource template on an
:class:`mcp.server.MCPServer` over a :class:`~branchpoint.mcp_server.service.McpRecorder`.
This layer is thin: typed arguments in (the SDK validates them against the schemas it
derives from the annotations below), the recorder's result out as structured content, and
every refusal turned into a tool error (``is_error``) whose text says what was wrong, so
the calling model can correct itself. A refused call stores nothing.

Transports: :func:`run_stdio` (``branchpoint mcp``) and
:mod:`branchpoint.mcp_server.http` (Streamable HTTP, mounted at ``/mcp`` by
``branchpoint serve``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.server.mcpserver.resources import ResourceSecurity
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from branchpoint.mcp_server import models as m
from branchpoint.mcp_server.service import (
    McpRecorder,
    RequestRefused,
    describe_invalid,
)
from branchpoint.store.errors import (
    BranchpointError,
    InvalidEvent,
    StoreUnavailable,
    TreeNotFound,
)
from branchpoint.store.exports import ExportOptions
from branchpoint.store.log import TreeFilter
from branchpoint.store.pairs import DEFAULT_MARGIN

__all__ = ["INSTRUCTIONS", "TREE_TEMPLATE", "build_server", "run_stdio"]

TREE_TEMPLATE = "branchpoint://trees/{tree_id}"

INSTRUCTIONS = """\
branchpoint records what you do on a task as a tree of attempts, to turn it into training
data. Call start_trajectory once when you begin a task (it returns tree_id and
root_node_id). After each action you take (a tool call or a reply) and its result, call
record_step with the node you were at as parent_node_id; it returns the new node_id, your
position from then on. To try something else from an earlier point, call fork on that
node (it returns the conversation as it stood there), restore your environment to that
point, and record_step from it: the new step becomes a sibling of the one you took before.
Score nodes with score (0 = failed, 1 = fully done; leaves matter most) as soon as you know
how well they went. get_tree shows a tree compactly; list_trees finds trees; export gives
training data (dpo pairs come from forks whose branches scored differently)."""

TreeId = Annotated[str, Field(min_length=1, description="The tree, as start_trajectory "
                                                        "returned it.")]
Format = Literal["dpo", "steps", "sft", "trajectory-pairs", "stepwise"]
SplitName = Literal["train", "validation", "heldout"]

# The store's tree filters (TreeFilter), the same on list_trees and export.
FilterTree = Annotated[str | None, Field(description="Only this tree.")]
FilterEnv = Annotated[str | None, Field(description="Only trees of this environment.")]
FilterTask = Annotated[str | int | None, Field(description="Only trees of this task id.")]
FilterOrigin = Annotated[str | None, Field(
    description="Only trees recorded by this origin ('mcp', 'sdk', 'sampler', ...).")]
FilterSplit = Annotated[SplitName | None, Field(description="Only trees of this split.")]
FilterFinished = Annotated[bool | None, Field(
    description="true: only closed trees; false: only open ones.")]
FilterSince = Annotated[datetime | None, Field(
    description="Only trees started at or after this time (ISO 8601).")]
FilterUntil = Annotated[datetime | None, Field(
    description="Only trees started before this time (ISO 8601).")]


def _where(**fields: Any) -> TreeFilter:
    """A TreeFilter of the fields given.

    Raises:
        ToolError: a field out of range.
    """
    try:
        return TreeFilter(**fields)
    except ValueError as exc:
        raise ToolError(str(exc)) from exc


@contextmanager
def _tool_errors() -> Iterator[None]:
    """Turn branchpoint's refusals into tool errors that name what was wrong."""
    try:
        yield
    except TreeNotFound as exc:
        raise ToolError(f"{exc}; list_trees shows the stored trees") from exc
    except InvalidEvent as exc:
        raise ToolError(f"nothing was stored: {describe_invalid(exc)}") from exc
    except RequestRefused as exc:
        raise ToolError(str(exc)) from exc
    except StoreUnavailable as exc:
        raise ToolError(f"the store cannot be reached: {exc}") from exc
    except (BranchpointError, ValueError) as exc:
        raise ToolError(str(exc)) from exc
    except OSError as exc:  # writing an export file: permissions, a full disk
        raise ToolError(f"could not write the export: {exc}") from exc


def _dump(model: Any) -> dict[str, Any]:
    """A message model as the plain dict the store keeps: the fields the caller sent
    (defaults it never set are left out, except a tool call's ``type``)."""
    d: dict[str, Any] = model.model_dump(mode="json", exclude_unset=True)
    if "tool_calls" in d and d["tool_calls"] is not None:
        d["tool_calls"] = [{"type": "function", **c} for c in d["tool_calls"]]
    if "role" not in d and "role" in type(model).model_fields:
        d = {"role": model.role, **d}
    return d


def build_server(recorder: McpRecorder, *, name: str = "branchpoint") -> MCPServer:
    """An MCP server whose tools record into and read from ``recorder``'s log."""
    srv: MCPServer = MCPServer(name, instructions=INSTRUCTIONS, log_level="WARNING")
    writes = ToolAnnotations(read_only_hint=False, destructive_hint=False,
                             idempotent_hint=False, open_world_hint=False)
    reads = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    # export reads the store; with path and overwrite it replaces a file in the export folder
    exports = ToolAnnotations(read_only_hint=False, destructive_hint=True,
                              idempotent_hint=True, open_world_hint=False)

    @srv.tool(annotations=writes)
    async def start_trajectory(
        *,
        description: Annotated[str | None, Field(
            description="The task in a sentence or two. Becomes the opening user message "
                        "when no messages are given.")] = None,
        messages: Annotated[list[m.Message] | None, Field(
            description="The messages that opened the task (system, user), when you have "
                        "them.")] = None,
        env: Annotated[str | None, Field(
            description="The environment or application you act in (e.g. 'fs', 'shop', "
                        "'browser'). Default 'mcp'.")] = None,
        task_id: Annotated[str | int | None, Field(
            description="The task's id when known. Default: derived from the opening "
                        "messages, so attempts at the same task share it.")] = None,
        split: Annotated[SplitName | None, Field(
            description="The data split this task belongs to, when known.")] = None,
        tools: Annotated[list[m.ToolSchema] | None, Field(
            description="The tools you can call, as OpenAI tool schemas.")] = None,
        meta: Annotated[dict[str, Any] | None, Field(
            description="Anything else worth keeping (free-form JSON object).")] = None,
    ) -> m.StartResult:
        """Begin recording a task: opens a new tree and returns its tree_id and the
        root_node_id to record the first step from. Give a description or the opening
        messages (or both)."""
        with _tool_errors():
            return await recorder.start_trajectory(
                description=description,
                messages=None if messages is None else [_dump(x) for x in messages],
                env=env, task_id=task_id, split=split,
                tools=None if tools is None else [_dump(t) for t in tools], meta=meta)

    @srv.tool(annotations=writes)
    async def record_step(
        *,
        tree_id: TreeId,
        parent_node_id: Annotated[str, Field(
            min_length=1, description="The node you took this step from: root_node_id for "
                                      "the first step, then the node_id of the step before "
                                      "(or the node you forked from).")],
        action: Annotated[m.Action, Field(
            description="What you did: your assistant message (content and/or tool_calls, "
                        "OpenAI format; arguments as a JSON object or string).")],
        observation: Annotated[list[m.Message] | str, Field(
            description="What came back: tool messages (role 'tool' with tool_call_id) or "
                        "user messages; or plain text, recorded as the answer to your one "
                        "tool call, or as a user message when you called no tool.")],
        done: Annotated[bool | None, Field(
            description="true if this step ended the task (nothing can follow it), false if "
                        "not, null if you cannot tell.")] = False,
        model: Annotated[str | None, Field(
            description="The model that chose this action, if you know it.")] = None,
        latency_ms: Annotated[float | None, Field(
            ge=0, description="How long the action took to run, in ms.")] = None,
        meta: Annotated[dict[str, Any] | None, Field(
            description="Anything else worth keeping (free-form JSON object).")] = None,
    ) -> m.StepResult:
        """Record one step: the action you took from parent_node_id and what came back.
        Returns the new node_id; record your next step from it. Recording a step from a
        node that already has one makes a fork (see siblings)."""
        with _tool_errors():
            return await recorder.record_step(
                tree_id=tree_id, parent_node_id=parent_node_id, action=_dump(action),
                observation=observation if isinstance(observation, str)
                else [_dump(o) for o in observation],
                done=done, produced_by=None if model is None else {"model": model},
                latency_ms=latency_ms, meta=meta)

    @srv.tool(annotations=reads)
    async def fork(
        *,
        tree_id: TreeId,
        node_id: Annotated[str, Field(
            min_length=1, description="The recorded node to branch from: the root or any "
                                      "step that did not end the task.")],
    ) -> m.ForkResult:
        """Go back to a recorded node to try something else from there. Returns the
        conversation as it stood at that node; bring your environment back to that state,
        then call record_step with parent_node_id set to this node. Nothing is stored until
        that first step is recorded."""
        with _tool_errors():
            return await recorder.fork(tree_id=tree_id, node_id=node_id)

    @srv.tool(annotations=writes)
    async def score(
        *,
        tree_id: TreeId,
        node_id: Annotated[str, Field(min_length=1, description="The node to score.")],
        value: Annotated[float, Field(
            ge=0.0, le=1.0, allow_inf_nan=False,
            description="How well this went, from 0 (failed) to 1 (fully done); partial "
                        "credit in between.")],
        source: Annotated[str, Field(
            min_length=1, description="Who judged: 'agent' (you, the default), 'checker' (a "
                                      "test or verifier), 'human', 'judge'...")] = "agent",
        rationale: Annotated[str | None, Field(
            description="Why this value, in a sentence or two.")] = None,
        detail: Annotated[dict[str, Any] | None, Field(
            description="Structured detail, e.g. {'subgoals': [...]}.")] = None,
    ) -> m.ScoreResult:
        """Score a node (usually the last step of an attempt). The latest score from a
        source counts; a node's value is its score, or the mean of its children's values.
        Returns the node's and the root's value after this score."""
        with _tool_errors():
            return await recorder.score(tree_id=tree_id, node_id=node_id, value=value,
                                        source=source, rationale=rationale, detail=detail)

    @srv.tool(annotations=reads)
    async def get_tree(
        *,
        tree_id: TreeId,
        node_id: Annotated[str | None, Field(
            description="A node whose path from the root to return (default: the node "
                        "recorded last).")] = None,
        text_limit: Annotated[int, Field(
            ge=20, le=20_000, description="Cut each action and observation to this many "
                                          "characters.")] = 200,
        max_nodes: Annotated[int, Field(
            ge=1, le=5000, description="List at most this many nodes (those on the path "
                                       "first); the rest are counted, not shown.")] = 200,
    ) -> m.TreeSummary:
        """Look at one tree compactly: every node with its action and observation as short
        text, scores and values, the branching points, the leaves, the best leaf and a
        path. The full tree is the resource at resource_uri."""
        with _tool_errors():
            return await recorder.get_tree(tree_id=tree_id, node_id=node_id,
                                           text_limit=text_limit, max_nodes=max_nodes)

    @srv.tool(annotations=reads)
    async def list_trees(
        *,
        env: FilterEnv = None,
        task_id: FilterTask = None,
        origin: FilterOrigin = None,
        split: FilterSplit = None,
        finished: FilterFinished = None,
        since: FilterSince = None,
        until: FilterUntil = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many.")] = 50,
    ) -> m.TreeList:
        """List stored trees, oldest first, with their env, task, origin and whether they
        are closed. Filters combine (all must hold)."""
        where = _where(env=env, task_id=task_id, origin=origin, split=split,
                       finished=finished, since=since, until=until)
        with _tool_errors():
            return await recorder.list_trees(where, limit=limit)

    @srv.tool(annotations=exports, description=(
        "Export training data as JSON Lines (one example per line, the same bytes as "
        "`branchpoint export`) from the trees the filters select (default: all). Returned "
        f"inline up to {recorder.inline_limit:,} bytes; a "
        "larger export must be written to a file with path, under the server's export "
        "folder only (--export-dir)."))
    async def export(
        *,
        format: Annotated[Format, Field(
            description="dpo: (prompt, chosen step, rejected step) pairs from forks; "
                        "steps: every executed step; sft: successful conversations; "
                        "trajectory-pairs: whole attempts at one task, best against worst; "
                        "stepwise: TRL stepwise supervision.")] = "dpo",
        tree_id: FilterTree = None,
        env: FilterEnv = None,
        task_id: FilterTask = None,
        origin: FilterOrigin = None,
        split: FilterSplit = None,
        finished: FilterFinished = None,
        since: FilterSince = None,
        until: FilterUntil = None,
        margin: Annotated[float, Field(
            ge=0.0, description="A pair needs the chosen value above the rejected by at "
                                "least this.")] = DEFAULT_MARGIN,
        min_score: Annotated[float, Field(
            ge=0.0, le=1.0, description="sft: keep paths whose leaf value reaches "
                                        "this.")] = 1.0,
        with_metadata: Annotated[bool, Field(
            description="dpo, trajectory-pairs: add tree, nodes and values.")] = False,
        path: Annotated[str | None, Field(
            description="Write to this file, relative to the export folder the server was "
                        "started with (--export-dir), instead of returning the rows.")] = None,
        overwrite: Annotated[bool, Field(
            description="Replace the file at path if it exists.")] = False,
    ) -> Annotated[CallToolResult, m.ExportResult]:
        where = _where(tree_id=tree_id, env=env, task_id=task_id, origin=origin,
                       split=split, finished=finished, since=since, until=until)
        options = ExportOptions(where=where, margin=margin, min_score=min_score,
                                with_metadata=with_metadata)
        with _tool_errors():
            result = await recorder.export(format, options, path=path, overwrite=overwrite)
        # The text a model reads is the rows themselves (not the rows escaped inside a
        # JSON document); the structured result carries them too, with the counts.
        text = (result.jsonl if result.path is None else
                f"wrote {result.rows} {format} rows ({result.bytes} bytes) to {result.path}")
        return CallToolResult(content=[TextContent(type="text", text=text or "(no rows)")],
                              structured_content=result.model_dump(mode="json"))

    @srv.resource(TREE_TEMPLATE, name="tree", mime_type="application/json",
                  description="One tree in full: task, opening messages, tools, and every "
                              "node with its action, observation, scores and value. The "
                              "tree id is percent-encoded (ids may contain '/').",
                  security=ResourceSecurity(exempt_params=frozenset({"tree_id"})))
    async def tree_resource(tree_id: str) -> str:
        try:
            doc = await recorder.tree_document(tree_id)
        except TreeNotFound as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        except BranchpointError as exc:
            raise ResourceError(str(exc)) from exc
        return json.dumps(doc, ensure_ascii=False)

    return srv


async def run_stdio(recorder: McpRecorder) -> None:
    """Serve ``recorder`` over this process's stdin and stdout until stdin closes.

    While it runs, the SDK points fd 1 at stderr for everything but its own writer, so
    nothing but protocol messages reaches stdout.
    """
    await build_server(recorder).run_stdio_async()
