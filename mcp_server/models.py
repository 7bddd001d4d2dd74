"""The typed inputs and outputs of the MCP tools.

Pydantic models, because the MCP SDK turns them into the JSON Schemas a client shows its
model (every ``description`` here is read by an agent deciding how to call a tool) and
validates arguments against them before a tool runs. Messages follow OpenAI's chat format,
the one the event log stores: whatever extra fields a message carries are kept.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Action",
    "ExportResult",
    "ForkResult",
    "Message",
    "NodeSummary",
    "ScoreResult",
    "StartResult",
    "StepResult",
    "ToolCall",
    "ToolSchema",
    "TreeList",
    "TreeListing",
    "TreeSummary",
]

Role = Literal["system", "developer", "user", "assistant", "tool"]
Content = str | list[dict[str, Any]] | None


class FunctionCall(BaseModel):
    """What an assistant asked a tool to do."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, description="The tool's name.")
    arguments: str | dict[str, Any] = Field(
        description="The arguments: a JSON object, or the JSON string the model wrote.")


class ToolCall(BaseModel):
    """One tool call of an assistant message (OpenAI format)."""

    model_config = ConfigDict(extra="allow")

    id: str | None = Field(None, description="The call's id; observations answer it with "
                                             "tool_call_id. Minted (call_1, ...) when omitted.")
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """A chat message in OpenAI format. Extra fields are kept as they are."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: Content = Field(None, description="Text, or a list of content parts.")
    tool_calls: list[ToolCall] | None = Field(
        None, description="Assistant messages only: the tools it called.")
    tool_call_id: str | None = Field(
        None, description="Tool messages only: the id of the call this answers.")


class Action(BaseModel):
    """The assistant message of one step: text, tool calls, or both (OpenAI format)."""

    model_config = ConfigDict(extra="allow")

    role: Literal["assistant"] = "assistant"
    content: Content = Field(None, description="What the assistant said, if anything.")
    tool_calls: list[ToolCall] | None = Field(None, description="The tools it called.")


class FunctionSchema(BaseModel):
    """A tool the agent could call, as offered to the model."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments.")


class ToolSchema(BaseModel):
    """An OpenAI tool schema: ``{"type": "function", "function": {...}}``."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"] = "function"
    function: FunctionSchema


Value = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


# --- results -------------------------------------------------------------------------------


class StartResult(BaseModel):
    """A new trajectory: record its first step with ``parent_node_id = root_node_id``."""

    tree_id: str
    root_node_id: str
    env: str
    task_id: str | int
    resource_uri: str = Field(description="Read the whole tree as an MCP resource here.")


class StepResult(BaseModel):
    """A recorded step: pass ``node_id`` as ``parent_node_id`` to record the next one."""

    tree_id: str
    node_id: str
    parent_node_id: str
    depth: int = Field(description="Steps from the root (the first step is depth 1).")
    done: bool | None
    siblings: list[str] = Field(description="Other steps already taken from the same parent "
                                            "(non-empty when this step made a fork).")


class ForkResult(BaseModel):
    """Where a new branch starts, and the conversation as it stood there."""

    tree_id: str
    parent_node_id: str = Field(description="Record the new branch's first step from this "
                                            "node (record_step's parent_node_id).")
    depth: int
    existing_children: list[str] = Field(description="Steps already taken from this node; "
                                                     "the new branch becomes their sibling.")
    conversation: list[dict[str, Any]] = Field(
        description="The messages at this node: the opening messages, then each step's "
                    "action and observation down to and including this node's.")


class ScoreResult(BaseModel):
    """A stored score, and the values it changed."""

    tree_id: str
    node_id: str
    value: float
    source: str
    node_value: float | None = Field(description="The node's value now (its latest score per "
                                                 "source, or the mean of its children's).")
    root_value: float | None = Field(description="The root's value now.")


class NodeSummary(BaseModel):
    """One node in a compact form: texts cut to ``text_limit`` characters."""

    node_id: str
    parent_id: str | None
    depth: int
    action: str | None = Field(description="The step's assistant message as text "
                                           "(tool calls as [call NAME] ARGS); None at the root.")
    observation: str | None = Field(description="What came back, as text; None until run.")
    done: bool | None
    scores: dict[str, float] = Field(description="The latest score per source.")
    value: float | None = Field(description="Its own score, or the mean of its children's.")
    children: list[str]


class BranchPoint(BaseModel):
    """A node with two or more children, and each child's value."""

    node_id: str
    children: dict[str, float | None]


class TreeSummary(BaseModel):
    """A tree at a glance."""

    tree_id: str
    resource_uri: str
    env: str
    task_id: str | int
    description: str | None
    origin: str | None
    closed: str | None = Field(description="Why the tree was closed; None while open.")
    node_count: int
    max_depth: int
    nodes: list[NodeSummary] = Field(description="The nodes in the order recorded: all of "
                                                 "them, or max_nodes (those on the path "
                                                 "first) when nodes_truncated.")
    nodes_truncated: bool
    branching_points: list[BranchPoint]
    leaves: list[str]
    best_leaf: str | None = Field(description="The leaf with the highest value, if any.")
    path: list[str] = Field(description="Node ids from the root to ``node_id`` (default: the "
                                        "node recorded last).")


class TreeListing(BaseModel):
    """One tree as listed."""

    tree_id: str
    resource_uri: str
    env: str
    task_id: str | int
    origin: str | None
    created_at: datetime
    closed: str | None


class TreeList(BaseModel):
    """Trees matching the filters, oldest first."""

    trees: list[TreeListing]
    total: int = Field(description="How many trees matched (more than listed when truncated).")
    truncated: bool


class ExportResult(BaseModel):
    """An export: inline JSON Lines, or the file it was written to."""

    format: str
    rows: int
    bytes: int
    jsonl: str | None = Field(None, description="The rows, one JSON object per line "
                                                "(when no path was given).")
    path: str | None = Field(None, description="The file written (when a path was given).")
