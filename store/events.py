"""The event model: the public contract every recorder writes and every reader folds.

An event is a fact about one tree of agent behaviour. Four types exist:

``node_created``
    A node. The root (``parent_id`` null) opens a task with its ``messages`` and ``task``
    (``env``, ``task_id`` and whatever the environment needs), optionally ``tools`` and
    ``origin``. Any other node is one step from its parent: ``action`` is the assistant
    message taken, ``produced_by`` says what drew it.
``action_executed``
    The environment ran a node's action and answered with ``observation`` messages;
    ``done`` is true, false, or null when the recorder cannot know.
``score_assigned``
    A value in [0, 1] for a node from a ``source`` (``checker``, ``judge``, ``human``...).
``tree_closed``
    The tree is finished, with a ``reason``.

Events are frozen msgspec structs, which are also the wire codec. They are stored by their
stable ``type`` name and a ``version``; an older payload is lifted to the current version
by the upcasters in :data:`UPCASTERS` on read, and stored rows are never rewritten.

Limits that hold on every backend (refused as :class:`InvalidEvent`, never stored):

- JSON nesting at most :data:`MAX_DEPTH` (64) levels deep, counting the event object as
  level 1 (a message's content part is at level 6);
- text is Unicode scalar values: a lone surrogate anywhere is refused;
- identifiers and the labels stored in columns of their own (``event_id``, ``tree_id``,
  ``node_id``, ``parent_id``, ``source``, ``reason``, the root's ``task.env``,
  ``task.task_id`` and ``origin``) hold no NUL character. Free text (messages, tools,
  task options, ``detail``, ``meta``) may hold NUL: it is stored escaped, as ``\u0000``,
  and reads back the same from the memory, SQLite and PostgreSQL logs.

This module is imported by the SDK: it must stay free of SQLAlchemy, NetworkX, HTTP
clients and anything else heavy. It does no I/O, reads no clock and mints no ids.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple

import msgspec

from branchpoint.store.errors import InvalidEvent

__all__ = [
    "CURRENT_VERSION",
    "EVENT_TYPES",
    "MAX_DEPTH",
    "PAYLOAD_TYPES",
    "UPCASTERS",
    "ActionExecuted",
    "Event",
    "EventHead",
    "HeadRow",
    "NodeCreated",
    "Payload",
    "ScoreAssigned",
    "TreeClosed",
    "canonical_payload",
    "decode_event",
    "decode_payload",
    "digest",
    "encode_event",
    "normalize",
    "normalize_canonical",
]

CURRENT_VERSION: Final = 1
#: The deepest JSON nesting an event may have, the event object itself being level 1.
MAX_DEPTH: Final = 64

JsonObject = dict[str, Any]
Message = dict[str, Any]


# Events and payloads are not tracked by the cyclic garbage collector (``gc=False``): they
# never refer back to themselves, and a recorder holds many thousands of them at once, which
# the collector would otherwise walk again and again.
class NodeCreated(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True,
                  gc=False):
    """A node of a tree: the root that opens a task, or one step taken from a parent."""

    node_id: str
    parent_id: str | None = None
    messages: list[Message] | None = None
    task: JsonObject | None = None
    tools: list[JsonObject] | None = None
    origin: str | None = None
    action: Message | None = None
    produced_by: JsonObject | None = None
    meta: JsonObject | None = None

    @property
    def is_root(self) -> bool:
        return self.parent_id is None


class ActionExecuted(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True,
                     gc=False):
    """The environment ran ``node_id``'s action and answered with ``observation``."""

    node_id: str
    observation: list[Message]
    done: bool | None
    info: JsonObject | None = None
    latency_ms: float | None = None
    meta: JsonObject | None = None


class ScoreAssigned(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True,
                    gc=False):
    """A value in [0, 1] for ``node_id`` from ``source``; the latest per source counts."""

    node_id: str
    value: float
    source: str
    detail: JsonObject | None = None
    meta: JsonObject | None = None


class TreeClosed(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True,
                 gc=False):
    """The tree is finished; a tree without this event is unfinished and can be resumed."""

    reason: str
    detail: JsonObject | None = None
    meta: JsonObject | None = None


Payload = NodeCreated | ActionExecuted | ScoreAssigned | TreeClosed
EventType = Literal["node_created", "action_executed", "score_assigned", "tree_closed"]

PAYLOAD_TYPES: Final[dict[str, type[Payload]]] = {
    "node_created": NodeCreated,
    "action_executed": ActionExecuted,
    "score_assigned": ScoreAssigned,
    "tree_closed": TreeClosed,
}
TYPE_NAMES: Final[dict[type[Payload], str]] = {v: k for k, v in PAYLOAD_TYPES.items()}
EVENT_TYPES: Final = tuple(PAYLOAD_TYPES)


class Event(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One fact in the log. ``seq`` is assigned by the store and is None before append."""

    event_id: str
    tree_id: str
    type: str
    version: int
    recorded_at: datetime
    payload: Payload
    seq: int | None = None

    @classmethod
    def of(cls, payload: Payload, *, tree_id: str, event_id: str,
           recorded_at: datetime) -> Event:
        """An event of the current version whose ``type`` follows from its payload.
        The caller mints the id and reads the clock; this module does neither."""
        return cls(event_id=event_id, tree_id=tree_id, type=TYPE_NAMES[type(payload)],
                   version=CURRENT_VERSION, recorded_at=recorded_at, payload=payload)

    @property
    def node_id(self) -> str | None:
        return getattr(self.payload, "node_id", None)

    def same_content(self, other: Event) -> bool:
        """Whether two events state the same fact (``seq`` ignored, values decoded)."""
        return digest(self) == digest(other)

    def head(self) -> EventHead:
        """The scalars a tree fold needs, without the messages."""
        p = self.payload
        seq = self.seq or 0
        if isinstance(p, NodeCreated):
            return EventHead(seq, self.type, p.node_id, p.parent_id, None, None, None, None)
        if isinstance(p, ActionExecuted):
            return EventHead(seq, self.type, p.node_id, None, p.done, None, None, None)
        if isinstance(p, ScoreAssigned):
            return EventHead(seq, self.type, p.node_id, None, None, p.value, p.source, None)
        return EventHead(seq, self.type, None, None, None, None, None, p.reason)


class EventHead(NamedTuple):
    """An event reduced to the scalars the tree fold reads; stores can serve these directly
    from indexed columns without decoding payloads."""

    seq: int
    type: str
    node_id: str | None
    parent_id: str | None
    done: bool | None
    value: float | None
    source: str | None
    reason: str | None = None  # tree_closed: why the tree was closed


#: The shape of an :class:`EventHead` as a plain tuple, in the same field order. Bulk
#: readers (``EventLog.iter_heads``) hand these out: CPython's cyclic collector stops
#: tracking a plain tuple of scalars after one pass but keeps walking NamedTuple instances
#: for as long as they live, which on a million folded events costs as much as the fold.
HeadRow = tuple[int, str, str | None, str | None, bool | None, float | None, str | None,
                str | None]


# --- versioning --------------------------------------------------------------------------

#: ``(type, version) -> function`` lifting a payload dict from ``version`` to ``version + 1``.
#: Version 1 is the first published format, so the table is empty; a schema change adds an
#: entry here and bumps :data:`CURRENT_VERSION`, and old rows keep decoding.
UPCASTERS: dict[tuple[str, int], Callable[[JsonObject], JsonObject]] = {}


# --- decoding ----------------------------------------------------------------------------


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    event_id: str
    tree_id: str
    type: str
    version: int
    recorded_at: datetime
    payload: msgspec.Raw
    seq: int | None = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_payload_decoders = {name: msgspec.json.Decoder(cls) for name, cls in PAYLOAD_TYPES.items()}
_json_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder(order="sorted")
_AT_PATH = re.compile(r"^(.*) - at `\$\.?(.*)`$")


_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")


def _located(exc: msgspec.ValidationError, prefix: str) -> tuple[str, str | None]:
    """Split msgspec's "reason - at `$.path`" into the reason and a dotted field path,
    naming the field itself when the reason is an unknown or missing one."""
    text = str(exc)
    m = _AT_PATH.match(text)
    reason, path = (m.group(1), m.group(2)) if m else (text, "")
    named = _NAMED_FIELD.search(reason)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    parts = [p for p in (prefix, path) if p]
    return reason, ".".join(parts).replace(".[", "[") or None


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (0 for a scalar); brackets
    inside strings do not count. Linear, without recursion, on any input."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return MAX_DEPTH  # cannot be deeper than this: no need to look closer
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub(b"", data)):
        if m.group() in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def decode_event(data: bytes | str, *, line: int | None = None) -> Event:
    """Decode and validate one event from its JSON form.

    Raises:
        InvalidEvent: malformed JSON, nesting deeper than :data:`MAX_DEPTH`, a missing,
            mistyped or unknown field, an unknown type or version, a NUL in an
            identifier, or a payload that breaks a rule of its type.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if json_depth(raw) > MAX_DEPTH:
        raise InvalidEvent(f"nested deeper than {MAX_DEPTH} levels of arrays and objects",
                           line=line)
    try:
        env = _envelope_decoder.decode(data)
    except msgspec.ValidationError as exc:
        reason, field = _located(exc, "")
        raise InvalidEvent(reason, line=line, event_id=_peek_id(data), field=field) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"malformed JSON ({exc})", line=line) from None
    return _from_envelope(env, line)


def _peek_id(data: bytes | str) -> str | None:
    try:
        obj = _json_decoder.decode(data)
    except msgspec.DecodeError:
        return None
    ev_id = obj.get("event_id") if isinstance(obj, dict) else None
    return ev_id if isinstance(ev_id, str) else None


def _from_envelope(env: _Envelope, line: int | None) -> Event:
    """The event of a decoded envelope, its payload decoded and every rule checked.

    The common case (a current-version event in UTC that breaks no rule) takes a fast
    path; anything else, or anything the fast path is unsure of, goes through
    :func:`_checked_event`, which names the first rule broken."""
    event_id, tree_id, type_ = env.event_id, env.tree_id, env.type
    at = env.recorded_at
    decoder = _payload_decoders.get(type_)
    if (decoder is not None and env.version == CURRENT_VERSION and at.tzinfo is UTC
            and event_id and tree_id and "\x00" not in event_id and "\x00" not in tree_id):
        try:
            payload = decoder.decode(env.payload)
        except msgspec.ValidationError:
            pass
        else:
            if _FAST_CHECKS[type_](payload):
                return Event(event_id, tree_id, type_, CURRENT_VERSION, at, payload, env.seq)
    return _checked_event(env, line)


def _checked_event(env: _Envelope, line: int | None) -> Event:
    def fail(reason: str, field: str | None) -> InvalidEvent:
        return InvalidEvent(reason, line=line, event_id=env.event_id, field=field)

    if not env.event_id:
        raise fail("must be a non-empty string", "event_id")
    if not env.tree_id:
        raise fail("must be a non-empty string", "tree_id")
    for name in ("event_id", "tree_id"):
        if "\x00" in getattr(env, name):
            raise fail(_NUL, name)
    if env.type not in PAYLOAD_TYPES:
        raise fail(f"unknown event type {env.type!r}; expected one of {list(EVENT_TYPES)}", "type")
    if not 1 <= env.version <= CURRENT_VERSION:
        raise fail(f"unsupported version {env.version}; this store reads 1..{CURRENT_VERSION}",
                   "version")
    if env.recorded_at.tzinfo is None:
        raise fail("must carry a UTC offset, e.g. 2026-01-01T10:00:00Z", "recorded_at")
    try:
        recorded_at = env.recorded_at.astimezone(UTC)
    except OverflowError:
        raise fail("is out of range once converted to UTC", "recorded_at") from None
    try:
        payload = decode_payload(env.type, env.version, env.payload)
    except msgspec.ValidationError as exc:
        reason, field = _located(exc, "payload")
        raise fail(reason, field) from None
    _check_payload(payload, fail)
    return Event(
        event_id=env.event_id,
        tree_id=env.tree_id,
        type=env.type,
        recorded_at=recorded_at,
        payload=payload,
        version=CURRENT_VERSION,
        seq=env.seq,
    )


def decode_payload(type_: str, version: int, data: bytes | str) -> Payload:
    """A payload of event type ``type_`` written at ``version``, lifted to the current
    version by :data:`UPCASTERS` (how stores read old rows; rows are never rewritten).

    Raises:
        KeyError: an unknown type, or a version with no upcaster.
        msgspec.ValidationError: the payload does not fit its type.
    """
    if version == CURRENT_VERSION:
        return _payload_decoders[type_].decode(data)
    raw = _json_decoder.decode(data)
    for v in range(version, CURRENT_VERSION):
        raw = UPCASTERS[(type_, v)](raw)
    return msgspec.convert(raw, PAYLOAD_TYPES[type_])


def encode_event(event: Event) -> bytes:
    """The event's JSON form (one line, no newline), payload keys sorted."""
    return _encoder.encode(event)


def canonical_payload(payload: Payload) -> bytes:
    """The payload's canonical JSON: keys sorted, absent optional fields omitted."""
    return _encoder.encode(payload)


def digest(event: Event) -> str:
    """SHA-256 over everything an event states except ``seq``; equal digests mean the
    same fact, so a re-sent event is recognised whatever its key order or time format."""
    h = hashlib.sha256()
    for part in (event.event_id, event.tree_id, event.type, str(event.version),
                 event.recorded_at.astimezone(UTC).isoformat()):
        h.update(part.encode())
        h.update(b"\x00")
    h.update(canonical_payload(event.payload))
    return h.hexdigest()


def normalize(event: Event) -> Event:
    """Validate an event built in Python exactly as if it had arrived as JSON.

    Raises:
        InvalidEvent: as :func:`decode_event`.
    """
    expected = TYPE_NAMES.get(type(event.payload))
    if expected is not None and event.type != expected:
        raise InvalidEvent(f"type {event.type!r} does not match a {expected} payload",
                           event_id=event.event_id, field="type")
    try:
        data = _encoder.encode(event)
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidEvent(f"not encodable as JSON ({exc})", event_id=event.event_id) from None
    except UnicodeEncodeError:
        raise InvalidEvent("holds a lone surrogate, which is not Unicode text (JSON and "
                           "UTF-8 cannot carry it)", event_id=_text_id(event),
                           field=_find(event, _has_surrogate)) from None
    except RecursionError:
        raise InvalidEvent(f"nested deeper than {MAX_DEPTH} levels of arrays and objects",
                           event_id=_text_id(event), field=_find(event, None)) from None
    try:
        return decode_event(data)
    except InvalidEvent as exc:
        if exc.field is None and exc.reason.startswith("nested deeper"):
            raise InvalidEvent(exc.reason, event_id=_text_id(event),
                               field=_find(event, None)) from None
        raise


def normalize_canonical(event: Event) -> tuple[Event, bytes]:
    """:func:`normalize` for a writer, with the payload's canonical JSON
    (:func:`canonical_payload` of the normalized event), which is what it stores.

    An event whose fields already hold the types its JSON form decodes to (the common case:
    what :class:`~branchpoint.store.builder.TreeBuilder` makes) is checked where it is,
    against the same rules, and its payload encoded once; the event returned is then
    ``event`` itself, fit for storing but not for handing to readers (values nested in its
    messages keep their Python types; their JSON is what is stored). Any other event takes
    :func:`normalize`'s round trip through JSON.

    Raises:
        InvalidEvent: as :func:`normalize`.
    """
    payload = event.payload
    plain = _PLAIN_FIELDS.get(type(payload))
    event_id, tree_id, at = event.event_id, event.tree_id, event.recorded_at
    if (plain is not None and TYPE_NAMES[type(payload)] == event.type and plain(payload)
            and type(event_id) is str
            and type(tree_id) is str and _plain_label(event_id) and _plain_label(tree_id)
            and type(event.version) is int and event.version == CURRENT_VERSION
            and type(at) is datetime and at.tzinfo is UTC
            and (event.seq is None or type(event.seq) is int)):
        try:
            data = _encoder.encode(payload)
            (event_id + tree_id).encode()  # a lone surrogate cannot be stored
        except Exception:  # not plain after all: normalize() says why
            pass
        else:
            # the event's nesting is its payload's plus one (the payload is an object)
            if (data.count(b"[") + data.count(b"{") < MAX_DEPTH
                    or json_depth(data) < MAX_DEPTH):
                try:
                    # only a msgspec.Raw value can make an encoding not JSON
                    _skip_decoder.decode(data)
                except msgspec.DecodeError:
                    pass
                else:
                    return event, data
    normal = normalize(event)
    return normal, canonical_payload(normal.payload)


class _Skip(msgspec.Struct):
    """An object whose fields are all skipped: decoding checks the syntax, builds nothing."""


_skip_decoder = msgspec.json.Decoder(_Skip)


_NUL = "must not contain a NUL character (identifiers and labels are plain text)"


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _text_id(event: Event) -> str | None:
    """The event's id when it is printable as it is (not when it holds a surrogate)."""
    ev_id = event.event_id
    return ev_id if isinstance(ev_id, str) and not _has_surrogate(ev_id) else None


def _find(event: Event, bad_text: Callable[[str], bool] | None) -> str | None:
    """The path of the first string (value or key) of ``event`` that ``bad_text`` flags,
    or, with ``bad_text`` None, of the first value nested deeper than :data:`MAX_DEPTH`.
    Iterative, so that it works on structures too deep for recursion."""
    stack: list[tuple[str, Any, int]] = [("", event, 1)]
    while stack:
        path, obj, depth = stack.pop()
        if isinstance(obj, str):
            if bad_text is not None and bad_text(obj):
                return path or None
            continue
        if isinstance(obj, msgspec.Struct):
            items: list[tuple[Any, Any]] = [(f, getattr(obj, f)) for f in obj.__struct_fields__]
        elif isinstance(obj, dict):
            items = list(obj.items())
        elif isinstance(obj, list | tuple):
            items = list(enumerate(obj))
        else:
            continue
        if bad_text is None and depth > MAX_DEPTH:
            # the field that holds the deep value, not the index of each level below it
            return re.sub(r"(\[\d+\])+$", "", path) or None
        for key, value in reversed(items):
            if isinstance(key, int):
                child = f"{path}[{key}]"
            else:
                if bad_text is not None and isinstance(key, str) and bad_text(key):
                    return path or None
                child = f"{path}.{key}" if path else str(key)
            stack.append((child, value, depth + 1))
    return None


# --- payload rules beyond types ------------------------------------------------------------

_ROOT_ONLY = ("messages", "task", "tools", "origin")
_MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


#: Payload strings stored in columns of their own (PostgreSQL text cannot hold NUL).
_LABELS: Final = ("node_id", "parent_id", "source", "reason", "origin")


def _check_labels(p: Payload, fail: Callable[[str, str | None], InvalidEvent]) -> None:
    for name in _LABELS:
        value = getattr(p, name, None)
        if isinstance(value, str) and "\x00" in value:
            raise fail(_NUL, f"payload.{name}")
    if isinstance(p, NodeCreated) and p.task is not None:
        for name in ("env", "task_id"):
            value = p.task.get(name)
            if isinstance(value, str) and "\x00" in value:
                raise fail(_NUL, f"payload.task.{name}")


def _check_payload(p: Payload, fail: Callable[[str, str | None], InvalidEvent]) -> None:
    _check_labels(p, fail)
    if isinstance(p, NodeCreated):
        if not p.node_id:
            raise fail("must be a non-empty string", "payload.node_id")
        if p.parent_id is None:
            if not p.messages:
                raise fail("the root must open the task with at least one message",
                           "payload.messages")
            for i, m in enumerate(p.messages):
                _check_message(m, f"payload.messages[{i}]", fail)
            if p.task is None:
                raise fail("the root must carry a task with env and task_id", "payload.task")
            env = p.task.get("env")
            if not isinstance(env, str) or not env:
                raise fail("must be a non-empty string", "payload.task.env")
            task_id = p.task.get("task_id")
            if isinstance(task_id, bool) or not isinstance(task_id, str | int):
                raise fail("must be a string or an integer", "payload.task.task_id")
            if p.action is not None:
                raise fail("the root has no action; it opens the task", "payload.action")
            if p.tools is not None:
                for i, t in enumerate(p.tools):
                    if not isinstance(t.get("type"), str):
                        raise fail("a tool schema needs a type (\"function\")",
                                   f"payload.tools[{i}]")
        else:
            if not p.parent_id:
                raise fail("must be a non-empty string or null", "payload.parent_id")
            for name in _ROOT_ONLY:
                if getattr(p, name) is not None:
                    raise fail("only the root carries this", f"payload.{name}")
            if p.action is None:
                raise fail("a non-root node carries the assistant message taken from its "
                           "parent", "payload.action")
            _check_action(p.action, "payload.action", fail)
    elif isinstance(p, ActionExecuted):
        if not p.node_id:
            raise fail("must be a non-empty string", "payload.node_id")
        for i, m in enumerate(p.observation):
            _check_message(m, f"payload.observation[{i}]", fail)
            if m["role"] == "tool" and not isinstance(m.get("tool_call_id"), str):
                raise fail("a tool message needs a tool_call_id",
                           f"payload.observation[{i}].tool_call_id")
        if p.latency_ms is not None and not (math.isfinite(p.latency_ms) and p.latency_ms >= 0):
            raise fail("must be a finite number >= 0", "payload.latency_ms")
    elif isinstance(p, ScoreAssigned):
        if not p.node_id:
            raise fail("must be a non-empty string", "payload.node_id")
        if not (math.isfinite(p.value) and 0.0 <= p.value <= 1.0):
            raise fail(f"must be a finite number in [0, 1], got {p.value!r}", "payload.value")
        if not p.source:
            raise fail("must be a non-empty string", "payload.source")
    elif not p.reason:
        raise fail("must be a non-empty string", "payload.reason")


def _check_message(m: Message, field: str,
                   fail: Callable[[str, str | None], InvalidEvent]) -> None:
    role = m.get("role")
    if not isinstance(role, str) or role not in _MESSAGE_ROLES:  # (a list is unhashable)
        raise fail(f"role must be one of {sorted(_MESSAGE_ROLES)}, got {role!r}", f"{field}.role")
    if role == "assistant":
        _check_action(m, field, fail)
    elif not isinstance(m.get("content"), str | list):
        raise fail("must be a string or a list of content parts", f"{field}.content")


def _check_action(m: Message, field: str,
                  fail: Callable[[str, str | None], InvalidEvent]) -> None:
    if m.get("role") != "assistant":
        raise fail(f"an action is an assistant message, got role {m.get('role')!r}",
                   f"{field}.role")
    content = m.get("content")
    if content is not None and not isinstance(content, str | list):
        raise fail("must be a string, a list of content parts or null", f"{field}.content")
    calls = m.get("tool_calls")
    if calls is None:
        if content is None:
            raise fail("an assistant message needs content or tool_calls", field)
        return
    if not isinstance(calls, list):
        raise fail("must be a list", f"{field}.tool_calls")
    for i, call in enumerate(calls):
        where = f"{field}.tool_calls[{i}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise fail("needs function.name", f"{where}.function.name")
        # Arguments stay as the model wrote them: a malformed call is a fact worth keeping
        # (it is what a rejected step often looks like), so only the type is checked.
        if not isinstance(fn.get("arguments"), str):
            raise fail("must be a JSON string, as OpenAI sends it", f"{where}.function.arguments")


# --- the same rules as one predicate per type: the fast path of decoding ------------------
# Each returns True only where the checks above pass; False sends the event through them,
# so that a refusal always carries the same reason and field.


def _plain_action(m: Message) -> bool:
    if m.get("role") != "assistant":
        return False
    content = m.get("content")
    calls = m.get("tool_calls")
    if calls is None:
        return isinstance(content, str | list)
    if content is not None and not isinstance(content, str | list):
        return False
    if not isinstance(calls, list):
        return False
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)
                and isinstance(fn.get("arguments"), str)):
            return False
    return True


def _plain_message(m: Message) -> bool:
    role = m.get("role")
    if role == "assistant":
        return _plain_action(m)
    return isinstance(role, str) and role in _MESSAGE_ROLES and isinstance(
        m.get("content"), str | list) and (role != "tool" or isinstance(m.get("tool_call_id"),
                                                                           str))


def _plain_label(value: str | None) -> bool:
    return value is not None and value != "" and "\x00" not in value


def _plain_node(p: NodeCreated) -> bool:
    if not _plain_label(p.node_id):
        return False
    if p.parent_id is not None:
        return (_plain_label(p.parent_id) and p.messages is None and p.task is None
                and p.tools is None and p.origin is None and p.action is not None
                and _plain_action(p.action))
    task, origin = p.task, p.origin
    if not p.messages or task is None or p.action is not None or (
            origin is not None and "\x00" in origin):
        return False
    env, task_id = task.get("env"), task.get("task_id")
    if not (isinstance(env, str) and _plain_label(env)):
        return False
    if isinstance(task_id, str):
        if "\x00" in task_id:
            return False
    elif not isinstance(task_id, int) or isinstance(task_id, bool):
        return False
    if p.tools is not None and not all(isinstance(t.get("type"), str) for t in p.tools):
        return False
    # a root's tool messages need no tool_call_id (the checks above ask it of observations)
    return all(_plain_message(m) if m.get("role") != "tool" else isinstance(
        m.get("content"), str | list) for m in p.messages)


def _plain_executed(p: ActionExecuted) -> bool:
    latency = p.latency_ms
    return (_plain_label(p.node_id) and all(_plain_message(m) for m in p.observation)
            and (latency is None or (math.isfinite(latency) and latency >= 0)))


def _plain_score(p: ScoreAssigned) -> bool:
    return (_plain_label(p.node_id) and _plain_label(p.source) and math.isfinite(p.value)
            and 0.0 <= p.value <= 1.0)


def _plain_closed(p: TreeClosed) -> bool:
    return _plain_label(p.reason)


_FAST_CHECKS: Final[dict[str, Callable[[Any], bool]]] = {
    "node_created": _plain_node,
    "action_executed": _plain_executed,
    "score_assigned": _plain_score,
    "tree_closed": _plain_closed,
}


# --- the types an event's JSON form decodes to, and the rules, checked in place -----------


def _dicts(values: Any) -> bool:
    return type(values) is list and all(type(v) is dict for v in values)


def _opt(value: Any, kind: type) -> bool:
    return value is None or type(value) is kind


def _plain_node_fields(p: NodeCreated) -> bool:
    return (type(p.node_id) is str and _opt(p.parent_id, str)
            and (p.messages is None or _dicts(p.messages)) and _opt(p.task, dict)
            and (p.tools is None or _dicts(p.tools)) and _opt(p.origin, str)
            and _opt(p.action, dict) and _opt(p.produced_by, dict) and _opt(p.meta, dict)
            and (p.task is None or (type(p.task.get("env")) is str
                                    and type(p.task.get("task_id")) in (str, int)
                                    and _opt(p.task.get("split"), str)))
            and _plain_node(p))


def _plain_executed_fields(p: ActionExecuted) -> bool:
    return (type(p.node_id) is str and _dicts(p.observation) and _opt(p.done, bool)
            and _opt(p.info, dict) and _opt(p.latency_ms, float) and _opt(p.meta, dict)
            and _plain_executed(p))


def _plain_score_fields(p: ScoreAssigned) -> bool:
    return (type(p.node_id) is str and type(p.value) is float and type(p.source) is str
            and _opt(p.detail, dict) and _opt(p.meta, dict) and _plain_score(p))


def _plain_closed_fields(p: TreeClosed) -> bool:
    return (type(p.reason) is str and _opt(p.detail, dict) and _opt(p.meta, dict)
            and _plain_closed(p))


#: Per payload type: its fields hold the types JSON decodes to, and it breaks no rule.
_PLAIN_FIELDS: Final[dict[type, Callable[[Any], bool]]] = {
    NodeCreated: _plain_node_fields,
    ActionExecuted: _plain_executed_fields,
    ScoreAssigned: _plain_score_fields,
    TreeClosed: _plain_closed_fields,
}
