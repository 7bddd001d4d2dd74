"""The interface helpers: argument validation, action parsing, observations, the step budget."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from branchpoint.sampler.envs.base import (
    Outcome,
    SubGoal,
    ToolEnvironment,
    argument_error,
    assistant_message,
    function_tool,
    parse_action,
    parse_text_action,
    reply,
    score_of,
    split_of,
    tasks_in_split,
    tool_call_to_text,
)

TOOLS = [
    function_tool("ls", "list", {"path": {"type": "string"}}, required=[]),
    function_tool("mv", "move", {"src": {"type": "string"}, "dst": {"type": "string"}}),
    function_tool("take", "take n", {"n": {"type": "integer"}, "why": {"type": "string"}},
                  required=["n"]),
    function_tool("pick", "pick", {"color": {"type": "string", "enum": ["red", "blue"]}}),
    function_tool("submit", "end"),
]


def call(name: str, arguments: Any, call_id: str = "c1") -> dict[str, Any]:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": name, "arguments": raw}}]}


@pytest.mark.parametrize(("name", "args", "error"), [
    ("mv", {"src": "a"}, "mv: missing required argument 'dst'"),
    ("mv", {"src": "a", "dst": "b", "force": True},
     "mv: unknown argument 'force' (arguments: src, dst)"),
    ("mv", {"src": 1, "dst": "b"}, "mv: argument 'src' must be a string, got integer"),
    ("take", {"n": True}, "take: argument 'n' must be an integer, got boolean"),
    ("take", {"n": 1.5}, "take: argument 'n' must be an integer, got number"),
    ("pick", {"color": "green"}, "pick: argument 'color' must be one of \"red\", \"blue\", "
                                 "got \"green\""),
    ("mv", ["a", "b"], "mv: arguments must be a JSON object, got array"),
    ("take", {"n": 3}, None),
    ("ls", {}, None),
])
def test_argument_error_names_exactly_what_does_not_fit_the_schema(name, args, error):
    tool = next(t for t in TOOLS if t["function"]["name"] == name)
    assert argument_error(tool, args) == error


def test_a_tool_call_with_bad_json_is_an_error_naming_the_tool():
    (c,) = parse_action(call("mv", "{src: a}"), TOOLS)
    assert c.call_id == "c1"
    assert c.error is not None
    assert c.error.startswith("mv: arguments are not valid JSON")


def test_an_unknown_tool_lists_the_tools():
    (c,) = parse_action(call("rm", {}), TOOLS)
    assert c.error == "unknown tool 'rm'; tools: ls, mv, take, pick, submit"


def test_text_actions_fill_parameters_in_order_and_the_last_string_takes_the_rest():
    assert parse_text_action("mv a.txt b c", TOOLS) == ("mv", {"src": "a.txt", "dst": "b c"})
    assert parse_text_action('mv "a b" c', TOOLS) == ("mv", {"src": "a b", "dst": "c"})
    assert parse_text_action("take 3 because", TOOLS) == ("take", {"n": 3, "why": "because"})
    assert parse_text_action("ls", TOOLS) == ("ls", {})


@pytest.mark.parametrize(("text", "error"), [
    ("", "empty action: write one command, e.g. ls [PATH]"),
    ("rm x", "unknown tool 'rm'; tools: ls, mv, take, pick, submit"),
    ("mv a", "mv: missing required argument 'dst' (usage: mv SRC DST)"),
    ("take x", "take: argument 'n' must be an integer, got string (usage: take N [WHY])"),
    ("submit now", "submit takes no arguments (usage: submit)"),
    ('mv "a b', "cannot parse arguments of mv: unclosed quote"),
])
def test_malformed_text_is_one_call_with_the_exact_error(text, error):
    (c,) = parse_action({"role": "assistant", "content": text}, TOOLS)
    assert c.call_id is None
    assert c.error == error


def test_messages_that_are_not_actions_are_errors_not_exceptions():
    for bad in [None, 3, {"role": "user", "content": "ls"}, {"role": "assistant"},
                {"role": "assistant", "tool_calls": "x"},
                {"role": "assistant", "tool_calls": [{"function": 3}]}]:
        calls = parse_action(bad, TOOLS)
        assert calls
        assert all(c.error for c in calls)


def test_replies_are_tool_messages_for_tool_calls_and_user_messages_for_text():
    (tc,) = parse_action(call("ls", {}), TOOLS)
    (tx,) = parse_action({"role": "assistant", "content": "ls"}, TOOLS)
    assert reply(tc, "x") == {"role": "tool", "tool_call_id": "c1", "content": "x"}
    assert reply(tx, "x") == {"role": "user", "content": "x"}


def test_a_tool_call_without_an_id_is_answered_by_its_position():
    msg = {"role": "assistant", "tool_calls": [
        {"function": {"name": "ls", "arguments": ""}},
        {"function": {"name": "ls", "arguments": "{}"}}]}
    assert [c.call_id for c in parse_action(msg, TOOLS)] == ["call_0", "call_1"]


words = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=12)


@given(words, words)
def test_text_syntax_round_trips_any_strings(src, dst):
    line = tool_call_to_text("mv", {"src": src, "dst": dst})
    assert parse_text_action(line, TOOLS) == ("mv", {"src": src, "dst": dst})
    msg = assistant_message("mv", {"src": src, "dst": dst}, text=True, tools=TOOLS)
    (c,) = parse_action(msg, TOOLS)
    assert (c.name, c.arguments, c.error) == ("mv", {"src": src, "dst": dst}, None)


@given(st.integers(), words)
def test_text_syntax_round_trips_integers(n, why):
    line = tool_call_to_text("take", {"n": n, "why": why})
    assert parse_text_action(line, TOOLS) == ("take", {"n": n, "why": why})


class Counter(ToolEnvironment):
    """A minimal tool environment: ``take N`` adds N, ``submit`` ends."""

    name = "counter"
    description = "adds numbers"
    max_steps = 3
    tools = TOOLS

    def _start(self):
        self.total = 0
        return [{"role": "user", "content": "add"}]

    def _call(self, name, arguments):
        if name == "take":
            self.total += arguments["n"]
            return Outcome(str(self.total))
        return Outcome("bye", done=name == "submit")

    def _save(self):
        return self.total

    def _load(self, state):
        self.total = state

    def check(self):
        return score_of([SubGoal("positive", 1.0, self.total > 0)] * 3)


def test_a_malformed_action_costs_a_step_and_the_budget_ends_the_episode():
    env = Counter(0)
    env.reset()
    assert env.step(call("take", {"n": "x"})).done is False
    assert env.step({"role": "assistant", "content": "nonsense"}).done is False
    last = env.step(call("take", {"n": 2}))
    assert last.done is True
    assert last.observation[-1] == {
        "role": "user", "content": "step limit reached (3 steps): the episode is over"}
    after = env.step(call("take", {"n": 2}, "c9"))
    assert after.done is True
    assert after.observation == [{"role": "tool", "tool_call_id": "c9",
                                  "content": "error: the episode is over"}]
    assert env.total == 2


def test_max_steps_is_an_option_and_must_be_positive():
    assert Counter(0, max_steps=7).max_steps == 7
    with pytest.raises(ValueError, match="max_steps"):
        Counter(0, max_steps=0)


def test_calls_after_submit_in_the_same_message_are_refused():
    env = Counter(0)
    env.reset()
    msg = {"role": "assistant", "tool_calls": [
        {"id": "a", "function": {"name": "submit", "arguments": "{}"}},
        {"id": "b", "function": {"name": "take", "arguments": '{"n": 1}'}}]}
    res = env.step(msg)
    assert res.done
    assert res.observation[1]["content"] == "error: the episode is over"
    assert env.total == 0


def test_splits_are_stable_and_cover_every_id():
    assert [split_of(i) for i in range(5)] == [split_of(i) for i in range(5)]
    ids = tasks_in_split("heldout", 5)
    assert all(split_of(i) == "heldout" for i in ids)
    with pytest.raises(ValueError):
        split_of(-1)
