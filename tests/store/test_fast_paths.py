"""The fast paths of decoding and of normalizing for a writer take the same decisions as the
full checks: every event either passes both, with the same result and the same stored row,
or is refused by both with the same reason and field.

Hypothesis draws payloads near the edge of every rule (empty and NUL labels, lone
surrogates, wrong roles and types, Python values JSON turns into something else) and
compares the fast path with the full checks it stands in for."""

from __future__ import annotations

import enum
import gc
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from branchpoint.store import events as ev
from branchpoint.store.errors import InvalidEvent
from branchpoint.store.sqlbase import event_row, tree_row

T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


class Role(enum.StrEnum):
    USER = "user"


def nested(depth: int) -> Any:
    """A JSON value ``depth`` arrays deep."""
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


BAD_LABELS = ["", "a\x00b", "caf\ud800"]
TEXT = ["hi", "", [{"type": "text", "text": "x"}], "NUL \x00 in free text"]
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
# values a payload's free fields may hold: JSON ones, and Python ones JSON turns into others
VALUES = ["x", 1, 1.5, None, True, 2**70, {"nested": [1, {}]}, (1, 2), T0, b"bytes",
          Role.USER, float("nan"), {"b": 1, "a": 2}, msgspec.Raw(b'{"a":1}')]
# and values no event may hold
BAD_VALUES = [msgspec.Raw(b"{bad"), object(), {1: "an integer key"}, "caf\ud800", nested(70)]


@st.composite
def good_messages(draw: st.DrawFn, roles: list[str]) -> dict[str, Any]:
    role = draw(st.sampled_from(roles))
    if role == "assistant":
        m: dict[str, Any] = {"role": role, "content": draw(st.sampled_from([*TEXT, None]))}
        if m["content"] is None or draw(st.booleans()):
            m["tool_calls"] = [CALL]
        return m
    m = {"role": role, "content": draw(st.sampled_from(TEXT))}
    if role == "tool":
        m["tool_call_id"] = "c1"
    if draw(st.booleans()):
        m["name"] = draw(st.sampled_from(VALUES))
    return m


objects = st.one_of(st.none(), st.dictionaries(st.sampled_from(["k", "b", "a"]),
                                               st.sampled_from(VALUES), max_size=2))
any_messages = good_messages(["system", "user", "assistant", "tool"])


@st.composite
def good_payloads(draw: st.DrawFn) -> ev.Payload:
    kind = draw(st.sampled_from(["root", "child", "run", "score", "closed"]))
    if kind == "root":
        task: dict[str, Any] = {"env": "fs", "task_id": draw(st.sampled_from([7, -1, "t-1"]))}
        task.update(draw(st.dictionaries(st.sampled_from(["split", "options", "seed"]),
                                         st.sampled_from(["train", "nope", {"level": 2}, 3]),
                                         max_size=2)))
        return ev.NodeCreated(
            node_id="root", messages=draw(st.lists(any_messages, min_size=1, max_size=3)),
            task=task, tools=draw(st.sampled_from([None, [{"type": "function"}]])),
            origin=draw(st.sampled_from([None, "sdk"])), meta=draw(objects))
    if kind == "child":
        return ev.NodeCreated(node_id="w.1", parent_id="root",
                              action=draw(good_messages(["assistant"])),
                              produced_by=draw(objects), meta=draw(objects))
    if kind == "run":
        return ev.ActionExecuted(
            node_id="w.1", observation=draw(st.lists(any_messages, max_size=3)),
            done=draw(st.sampled_from([None, True, False])), info=draw(objects),
            latency_ms=draw(st.sampled_from([None, 12.5, 0.0])), meta=draw(objects))
    if kind == "score":
        return ev.ScoreAssigned(node_id="w.1", value=draw(st.sampled_from([0.0, 0.5, 1.0])),
                                source=draw(st.sampled_from(["checker", "judge"])),
                                detail=draw(objects))
    return ev.TreeClosed(reason=draw(st.sampled_from(["done", "error"])), detail=draw(objects))


def _replace(obj: Any, **changes: Any) -> Any:
    return msgspec.structs.replace(obj, **changes)


def _payload(**changes: Any) -> Any:
    """One of the payload's fields among ``changes`` (those it has) set to one of its bad
    values."""
    def apply(e: ev.Event, draw: st.DrawFn) -> ev.Event:
        names = [k for k in changes if k in e.payload.__struct_fields__]
        if not names:
            return e
        name = draw(st.sampled_from(names))
        value = draw(st.sampled_from(changes[name]))
        return _replace(e, payload=_replace(e.payload, **{name: value}))
    return apply


def _envelope(**changes: Any) -> Any:
    """One field of the envelope set to one of its bad values."""
    def apply(e: ev.Event, draw: st.DrawFn) -> ev.Event:
        name = draw(st.sampled_from(sorted(changes)))
        return _replace(e, **{name: draw(st.sampled_from(changes[name]))})
    return apply


def _a_message(e: ev.Event, draw: st.DrawFn) -> ev.Event:
    """One message of the payload (or its action) made bad, or its list made a tuple."""
    p: Any = e.payload
    field = next((f for f in ("messages", "observation", "action")
                  if getattr(p, f, None) is not None), None)
    if field is None:
        return e
    if field != "action" and draw(st.booleans()):
        return _replace(e, payload=_replace(p, **{field: tuple(getattr(p, field))}))
    messages = [p.action] if field == "action" else list(getattr(p, field))
    if not messages:
        return e
    i = draw(st.integers(0, len(messages) - 1))
    m = dict(messages[i])
    key = draw(st.sampled_from(["role", "content", "tool_calls", "tool_call_id"]))
    value = draw(st.sampled_from({
        "role": ["robot", None, 5, ["user"], Role.USER, "user", "assistant", "tool"],
        "content": [None, 5, ("a", "tuple"), "ok"],
        "tool_calls": ["x", [5], [{"function": {"name": 1, "arguments": "{}"}}],
                       [{"function": {"name": "f", "arguments": {"path": "a.py"}}}],
                       [{"function": {"name": "f"}}], (CALL,), None, []],
        "tool_call_id": [None, 3, "c2"]}[key]))
    if draw(st.booleans()):
        m.pop(key, None)
    else:
        m[key] = value
    messages[i] = m
    new = m if field == "action" else messages
    return _replace(e, payload=_replace(p, **{field: new}))


def _task(e: ev.Event, draw: st.DrawFn) -> ev.Event:
    p: Any = e.payload
    if not isinstance(p, ev.NodeCreated) or p.task is None:
        return e
    key = draw(st.sampled_from(["env", "task_id", "split"]))
    task = dict(p.task)
    if draw(st.booleans()):
        task.pop(key, None)
    else:
        task[key] = draw(st.sampled_from(
            [*BAD_LABELS, 5, True, 1.5, None, Role.USER, "train", ["train"]]))
    return _replace(e, payload=_replace(p, task=task))


BREAKERS = [
    _envelope(event_id=BAD_LABELS, tree_id=BAD_LABELS),
    _envelope(type=["tree_closed", "node_deleted"], version=[2, True], seq=[True, 3]),
    _envelope(recorded_at=[T0.astimezone(timezone(timedelta(hours=5))), datetime(2026, 1, 1),
                           datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))]),
    _payload(node_id=BAD_LABELS, parent_id=BAD_LABELS, source=BAD_LABELS, reason=BAD_LABELS,
             origin=BAD_LABELS),
    _payload(latency_ms=[5, -1.0, float("nan"), float("inf")], value=[1, 2.0, float("nan"), True],
             done=[1]),
    _payload(meta=[{"k": v} for v in BAD_VALUES], detail=[{"k": v} for v in BAD_VALUES]),
    _payload(messages=[None, [], ()], tools=[[{"name": "no type"}], ({"type": "function"},)],
             action=[{"role": "assistant", "content": "x"}], origin=["sdk"],
             task=[{"env": "fs", "task_id": 1}], observation=[()]),
    _a_message,
    _task,
]


@st.composite
def events(draw: st.DrawFn) -> ev.Event:
    """A valid event, or one with a few things wrong (a third each: none, one, two)."""
    payload = draw(good_payloads())
    event = ev.Event.of(payload, tree_id="t", event_id="t/1",
                        recorded_at=draw(st.sampled_from([T0, T0.replace(microsecond=0)])))
    for breaker in draw(st.lists(st.sampled_from(BREAKERS), max_size=2)):
        event = breaker(event, draw)
    return event


def outcome(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except InvalidEvent as exc:
        return ("refused", exc.reason, exc.field, exc.event_id)


def slow_normalize(event: ev.Event) -> tuple[ev.Event, bytes]:
    normal = ev.normalize(event)
    return normal, ev.canonical_payload(normal.payload)


def holds_raw(value: Any) -> bool:
    if isinstance(value, msgspec.Raw):
        return True
    if isinstance(value, dict):
        return any(holds_raw(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(holds_raw(v) for v in value)
    if isinstance(value, msgspec.Struct):
        return any(holds_raw(getattr(value, f)) for f in value.__struct_fields__)
    return False


@settings(max_examples=400, deadline=None)
@given(events())
def test_normalizing_for_a_writer_decides_and_stores_as_the_json_round_trip(
        event: ev.Event) -> None:
    fast = outcome(ev.normalize_canonical, event)
    slow = outcome(slow_normalize, event)
    if holds_raw(event.payload) and fast[0] != "refused" and slow[0] != "refused":
        # pre-encoded JSON is stored as it was given (it need not be in canonical form)
        assert json.loads(fast[1]) == json.loads(slow[1])
        return
    if slow[0] == "refused" or fast[0] == "refused":
        assert fast == slow
        return
    (fast_ev, fast_payload), (slow_ev, slow_payload) = fast, slow
    assert fast_payload == slow_payload
    assert event_row(fast_ev, fast_payload) == event_row(slow_ev)
    assert tree_row(fast_ev) == tree_row(slow_ev)


def decode_in_full(data: bytes) -> ev.Event:
    """decode_event without its fast path."""
    return ev._checked_event(ev._envelope_decoder.decode(data), None)


@settings(max_examples=400, deadline=None)
@given(events())
def test_decoding_decides_as_the_full_checks(event: ev.Event) -> None:
    try:
        data = msgspec.json.encode(event)
    except (TypeError, ValueError, msgspec.EncodeError):
        return  # no JSON to decode
    try:
        envelope_ok = ev.json_depth(data) <= ev.MAX_DEPTH and bool(
            ev._envelope_decoder.decode(data))
    except msgspec.MsgspecError:
        envelope_ok = False
    if not envelope_ok:
        return  # refused before either path runs
    assert outcome(ev.decode_event, data) == outcome(decode_in_full, data)


def test_an_int_where_a_float_is_stored_takes_the_round_trip():
    score = ev.Event.of(ev.ScoreAssigned("a", 1, "checker"), tree_id="t", event_id="t/s",
                        recorded_at=T0)
    normal, payload = ev.normalize_canonical(score)
    assert isinstance(normal.payload, ev.ScoreAssigned) and normal.payload.value == 1.0
    assert payload == b'{"node_id":"a","source":"checker","value":1.0}'


def test_malformed_pre_encoded_json_is_refused():
    bad = ev.Event.of(ev.TreeClosed("done", detail={"raw": msgspec.Raw(b"{bad")}),
                      tree_id="t", event_id="t/c", recorded_at=T0)
    with pytest.raises(InvalidEvent, match="malformed JSON"):
        ev.normalize_canonical(bad)


def test_events_are_left_to_reference_counting():
    closed = ev.Event.of(ev.TreeClosed("done"), tree_id="t", event_id="t/c", recorded_at=T0)
    assert not gc.is_tracked(closed) and not gc.is_tracked(closed.payload)
    assert not gc.is_tracked(ev.decode_event(ev.encode_event(closed)))
    assert math.isfinite(closed.recorded_at.timestamp())


# --- every single defect of a few valid events, one by one ---------------------------------

DELETE = object()  # a key taken out

TEMPLATES = {
    "root": ev.NodeCreated(
        node_id="root", origin="sdk", tools=[{"type": "function", "function": {"name": "f"}}],
        task={"env": "fs", "task_id": 7, "split": "train", "options": {"level": 2}},
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "go"}]},
                  {"role": "assistant", "content": None, "tool_calls": [CALL]},
                  {"role": "tool", "tool_call_id": "c1", "content": "ok"}]),
    "child": ev.NodeCreated(node_id="w.1", parent_id="root", produced_by={"model": "m"},
                            action={"role": "assistant", "content": "x", "tool_calls": [CALL]}),
    "run": ev.ActionExecuted(node_id="w.1", done=False, latency_ms=12.5, info={"k": 1},
                             observation=[{"role": "tool", "tool_call_id": "c1", "content": "a"},
                                          {"role": "user", "content": "b"}]),
    "score": ev.ScoreAssigned(node_id="w.1", value=0.5, source="judge", detail={"why": "x"}),
    "closed": ev.TreeClosed(reason="done", meta={"k": [1]}),
}
LABEL_DEFECTS = [*BAD_LABELS, DELETE, None, 5, Role.USER]
DEFECTS: list[tuple[tuple[Any, ...], list[Any]]] = [
    (("event_id",), LABEL_DEFECTS), (("tree_id",), LABEL_DEFECTS),
    (("type",), ["tree_closed", "node_deleted"]), (("version",), [2, True, 1.0]),
    (("seq",), [True, 3, "3"]),
    (("recorded_at",), [T0.astimezone(timezone(timedelta(hours=5))), datetime(2026, 1, 1),
                        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))]),
    *[(("payload", name), LABEL_DEFECTS)
      for name in ("node_id", "parent_id", "source", "reason", "origin")],
    (("payload", "parent_id"), ["root"]), (("payload", "messages"), [None, [], (), [5]]),
    (("payload", "tools"), [[{"name": "f"}], ({"type": "function"},), [5], "x"]),
    (("payload", "tools", 0, "type"), [5, DELETE, Role.USER]),
    (("payload", "task"), [None, {}, [1]]),
    *[(("payload", "task", key), [*LABEL_DEFECTS, True, 1.5, -1, ["train"], "nope"])
      for key in ("env", "task_id", "split")],
    (("payload", "action"), [None, {"role": "user", "content": "x"}, "x"]),
    (("payload", "observation"), [(), [5], None]),
    (("payload", "done"), [1, "yes", None]),
    (("payload", "latency_ms"), [5, -1.0, float("nan"), float("inf"), True, "5"]),
    (("payload", "value"), [1, 2.0, -0.5, float("nan"), True, "0.5"]),
    *[(("payload", name), [{"k": v} for v in BAD_VALUES] + [{"k": v} for v in VALUES] + [5])
      for name in ("meta", "info", "detail", "produced_by")],
]
for where in (("payload", "messages", 0), ("payload", "messages", 2), ("payload", "messages", 3),
              ("payload", "observation", 0), ("payload", "observation", 1),
              ("payload", "action")):
    DEFECTS += [
        ((*where, "role"), ["robot", None, 5, ["user"], Role.USER, "assistant", "tool", "user",
                            DELETE]),
        ((*where, "content"), [None, 5, ("a",), "", [], DELETE, {"text": "x"}]),
        ((*where, "tool_calls"), ["x", [5], None, [], (CALL,), DELETE, [CALL, CALL]]),
        ((*where, "tool_calls", 0, "function"), [None, "f", DELETE, {"name": "f"},
                                                 {"arguments": "{}"}]),
        ((*where, "tool_calls", 0, "function", "name"), [1, None, DELETE, ""]),
        ((*where, "tool_calls", 0, "function", "arguments"), [{"a": 1}, None, 5, DELETE]),
        ((*where, "tool_call_id"), [None, 3, DELETE, ""]),
    ]


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``obj`` with the value at ``path`` replaced (or deleted); KeyError where the path
    does not exist."""
    key, rest = path[0], path[1:]
    if isinstance(obj, msgspec.Struct):
        if key not in obj.__struct_fields__:
            raise KeyError(key)
        new = _set(getattr(obj, key), rest, value) if rest else value
        return msgspec.structs.replace(obj, **{key: None if new is DELETE else new})
    if isinstance(obj, dict):
        out = dict(obj)
        if rest:
            out[key] = _set(obj[key], rest, value)
        elif value is DELETE:
            out.pop(key, None)
        else:
            out[key] = value
        return out
    if isinstance(obj, list) and isinstance(key, int) and key < len(obj):
        out_list = list(obj)
        out_list[key] = _set(obj[key], rest, value) if rest else value
        return out_list
    raise KeyError(key)


def single_defects() -> list[Any]:
    cases = []
    for name, payload in TEMPLATES.items():
        event = ev.Event.of(payload, tree_id="t", event_id="t/1", recorded_at=T0)
        cases.append(pytest.param(event, id=f"{name}-as-is"))
        for path, values in DEFECTS:
            for i, value in enumerate(values):
                try:
                    broken = _set(event, path, value)
                except KeyError:
                    continue
                cases.append(pytest.param(broken, id=f"{name}-{'.'.join(map(str, path))}-{i}"))
    return cases


@pytest.mark.parametrize("event", single_defects())
def test_each_single_defect_is_judged_alike_by_the_fast_paths(event: ev.Event) -> None:
    fast, slow = outcome(ev.normalize_canonical, event), outcome(slow_normalize, event)
    if fast[0] == "refused" or slow[0] == "refused":
        assert fast == slow
    else:
        assert fast[1] == slow[1]
        assert event_row(fast[0], fast[1]) == event_row(slow[0])
        assert tree_row(fast[0]) == tree_row(slow[0])
    try:
        data = msgspec.json.encode(event)
        ev._envelope_decoder.decode(data)
    except (TypeError, ValueError, msgspec.MsgspecError):
        return  # refused before either decoding path runs
    if ev.json_depth(data) > ev.MAX_DEPTH:
        return
    assert outcome(ev.decode_event, data) == outcome(decode_in_full, data)
