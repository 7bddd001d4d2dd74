"""The event contract: decoding, the per-payload rules, canonical form and versioning."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from branchpoint.store import events as ev
from branchpoint.store.errors import InvalidEvent

ROOT = {
    "node_id": "r",
    "parent_id": None,
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "go"}],
    "task": {"env": "fs", "task_id": 7, "seed": 1},
}


def line(payload: dict[str, Any], *, type_: str = "node_created", **over: Any) -> str:
    obj = {"event_id": "e1", "tree_id": "t1", "type": type_, "version": 1,
           "recorded_at": "2026-01-01T10:00:00Z", "payload": payload}
    obj.update(over)
    return json.dumps(obj)


def refused(data: str) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        ev.decode_event(data, line=3)
    return info.value


def test_a_root_decodes_with_its_messages_and_task():
    e = ev.decode_event(line(ROOT))
    assert isinstance(e.payload, ev.NodeCreated)
    assert e.payload.is_root
    assert e.payload.task == {"env": "fs", "task_id": 7, "seed": 1}
    assert e.recorded_at == datetime(2026, 1, 1, 10, tzinfo=UTC)


def test_messages_keep_every_field_they_came_with():
    msgs = [{"role": "user", "content": "x", "name": "alice", "x_vendor": {"a": 1}}]
    e = ev.decode_event(line({**ROOT, "messages": msgs}))
    assert e.payload.messages == msgs


def test_malformed_json_is_refused_with_its_line():
    err = refused('{"event_id": "e1", ')
    assert err.line == 3
    assert "malformed JSON" in str(err)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o.pop("tree_id"), None),
        (lambda o: o.__setitem__("type", "node_deleted"), "type"),
        (lambda o: o.__setitem__("version", 99), "version"),
        (lambda o: o.__setitem__("recorded_at", "2026-01-01T10:00:00"), "recorded_at"),
        (lambda o: o.__setitem__("extra", 1), None),
        (lambda o: o["payload"].__setitem__("colour", "red"), "payload"),
        (lambda o: o["payload"].__setitem__("node_id", 5), "payload.node_id"),
        (lambda o: o["payload"].__setitem__("messages", []), "payload.messages"),
        (lambda o: o["payload"]["task"].pop("env"), "payload.task.env"),
        (lambda o: o["payload"]["task"].__setitem__("task_id", 1.5), "payload.task.task_id"),
        (lambda o: o["payload"]["task"].__setitem__("task_id", True), "payload.task.task_id"),
        (lambda o: o["payload"]["messages"][1].__setitem__("role", "robot"),
         "payload.messages[1].role"),
    ],
)
def test_a_bad_field_is_refused_naming_the_event_and_field(mutate, field):
    obj = json.loads(line(ROOT))
    mutate(obj)
    err = refused(json.dumps(obj))
    assert err.line == 3
    assert err.event_id == "e1"
    if field is not None:
        assert err.field is not None and err.field.startswith(field)
    assert "e1" in str(err)


def test_a_child_needs_an_assistant_action():
    err = refused(line({"node_id": "a", "parent_id": "r"}))
    assert err.field == "payload.action"
    err = refused(line({"node_id": "a", "parent_id": "r",
                        "action": {"role": "user", "content": "hi"}}))
    assert err.field == "payload.action.role"


def test_a_child_may_not_carry_root_fields():
    err = refused(line({"node_id": "a", "parent_id": "r", "task": {"env": "x", "task_id": 1},
                        "action": {"role": "assistant", "content": "ls"}}))
    assert err.field == "payload.task"


def test_tool_call_arguments_must_be_a_string_but_may_be_malformed_json():
    call = {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": {"a": 1}}}
    err = refused(line({"node_id": "a", "parent_id": "r",
                        "action": {"role": "assistant", "content": None, "tool_calls": [call]}}))
    assert err.field == "payload.action.tool_calls[0].function.arguments"
    # A model's broken JSON is what a rejected step often looks like: it must be recordable.
    call["function"]["arguments"] = '{"path": '
    e = ev.decode_event(line({"node_id": "a", "parent_id": "r",
                              "action": {"role": "assistant", "tool_calls": [call]}}))
    assert e.payload.action["tool_calls"][0]["function"]["arguments"] == '{"path": '


def test_a_tool_observation_needs_its_tool_call_id():
    err = refused(line({"node_id": "a", "observation": [{"role": "tool", "content": "x"}],
                        "done": False}, type_="action_executed"))
    assert err.field == "payload.observation[0].tool_call_id"


def test_done_is_required_but_may_be_null():
    refused(line({"node_id": "a", "observation": []}, type_="action_executed"))
    e = ev.decode_event(line({"node_id": "a", "observation": [], "done": None},
                             type_="action_executed"))
    assert e.payload.done is None


@pytest.mark.parametrize("value", [-0.1, 1.0001, 7])
def test_a_score_outside_the_unit_interval_is_refused(value):
    err = refused(line({"node_id": "a", "value": value, "source": "checker"},
                       type_="score_assigned"))
    assert err.field == "payload.value"


def test_a_nan_score_is_refused():
    data = line({"node_id": "a", "value": 0.5, "source": "checker"}, type_="score_assigned")
    err = refused(data.replace("0.5", "NaN"))
    assert err.event_id == "e1" or "JSON" in str(err)


def test_every_payload_may_carry_meta():
    for type_, payload in [
        ("node_created", {**ROOT, "meta": {"k": [1]}}),
        ("action_executed", {"node_id": "a", "observation": [], "done": True, "meta": {}}),
        ("score_assigned", {"node_id": "a", "value": 1, "source": "human", "meta": {"x": 1}}),
        ("tree_closed", {"reason": "done", "meta": {"y": 2}}),
    ]:
        assert ev.decode_event(line(payload, type_=type_)).payload.meta is not None


def test_equal_facts_have_equal_digests_whatever_the_time_format_or_key_order():
    a = ev.decode_event(line(ROOT, recorded_at="2026-01-01T10:00:00.000Z"))
    b = ev.decode_event(json.dumps(dict(reversed(json.loads(
        line(ROOT, recorded_at="2026-01-01T12:00:00+02:00")).items()))))
    assert a.same_content(b)
    c = ev.decode_event(line({**ROOT, "origin": "sdk"}))
    assert not a.same_content(c)


def test_encoding_round_trips():
    e = ev.decode_event(line(ROOT))
    assert ev.decode_event(ev.encode_event(e)) == e


def test_events_built_in_python_are_checked_like_json():
    bad = ev.Event.of(ev.ScoreAssigned("a", 2.0, "checker"), tree_id="t", event_id="x",
                      recorded_at=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(InvalidEvent, match=r"payload\.value"):
        ev.normalize(bad)


def test_a_frozen_v1_row_still_decodes():
    # Written by version 1 of the format; must decode unchanged for as long as v1 exists.
    frozen = (
        '{"event_id":"01J0","tree_id":"t","type":"action_executed","version":1,'
        '"recorded_at":"2026-03-01T08:30:00.250Z","payload":{"node_id":"n1",'
        '"observation":[{"role":"tool","tool_call_id":"c1","content":"ok"}],'
        '"done":false,"latency_ms":12.5}}'
    )
    e = ev.decode_event(frozen)
    assert e.payload == ev.ActionExecuted(
        "n1", [{"role": "tool", "tool_call_id": "c1", "content": "ok"}], False, latency_ms=12.5)


def test_an_upcaster_lifts_an_old_payload_on_read(monkeypatch):
    # Simulate the day version 2 renames `reason` to `why`: v1 rows keep decoding.
    class TreeClosedV2(ev.TreeClosed, frozen=True):
        pass

    monkeypatch.setattr(ev, "CURRENT_VERSION", 2)
    monkeypatch.setitem(ev.UPCASTERS, ("tree_closed", 1),
                        lambda p: {**p, "reason": p["reason"].upper()})
    e = ev.decode_event(line({"reason": "done"}, type_="tree_closed"))
    assert e.payload.reason == "DONE"
    assert e.version == 2


def test_importing_the_event_schema_stays_light():
    code = ("import sys; import branchpoint.store.events, branchpoint.store.validation; "
            "heavy = {'sqlalchemy', 'networkx', 'httpx', 'litestar', 'mcp', 'openai', 'torch'}; "
            "print(sorted(heavy & set(m.split('.')[0] for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
