"""Drawing actions from an environment's whole tool space, malformed ones included.

An action is drawn as a plain spec (a kind and a few integers) and made concrete against
the conversation so far: string arguments are picked from a small fixed vocabulary plus
every word the conversation has shown (paths from ``find``, ids from a lookup), so drawn
actions reach deep states instead of bouncing off "no such file". The same spec applied to
the same conversation always gives the same message.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import strategies as st

from branchpoint.sampler.envs.base import Environment, Message, tool_call_to_text
from branchpoint.sampler.envs.registry import list_envs, make_env

KINDS = ("call", "call", "call", "text", "text", "expert", "expert", "bad_json",
         "unknown_tool", "wrong_type", "extra_arg", "missing", "garbage", "multi", "not_a_dict")
VOCAB = ["/", "..", ".", "../..", "/..", "x", "a b", "", "tag", "1", "0", "-1", "100", "2"]

specs = st.tuples(st.sampled_from(KINDS), st.lists(st.integers(0, 10_000), min_size=6,
                                                   max_size=6),
                  st.text(max_size=12))


def pool(messages: list[Message]) -> list[str]:
    """The fixed vocabulary, then every word the conversation has shown, in order."""
    words = dict.fromkeys(VOCAB)
    for m in messages:
        if m.get("role") in ("user", "tool") and isinstance(m.get("content"), str):
            for raw in re.split(r"\s+", m["content"]):
                w = raw.strip("\"'.,:;()[]")
                if w and len(w) < 40:
                    words[w] = None
    return list(words)


def _value(schema: dict[str, Any], words: list[str], k: int) -> Any:
    if "enum" in schema:
        return schema["enum"][k % len(schema["enum"])]
    kind = schema.get("type", "string")
    if kind in ("integer", "number"):
        ints = [int(w) for w in words if re.fullmatch(r"-?\d{1,9}", w)]
        return ints[k % len(ints)] if ints else k % 7
    if kind == "boolean":
        return bool(k % 2)
    return words[k % len(words)]


def _args(tool: dict[str, Any], words: list[str], ks: list[int]) -> dict[str, Any]:
    props = tool["function"].get("parameters", {}).get("properties", {})
    required = set(tool["function"].get("parameters", {}).get("required", []))
    args = {}
    for i, (p, schema) in enumerate(props.items()):
        if p in required or ks[i % len(ks)] % 3:
            args[p] = _value(schema, words, ks[(i + 1) % len(ks)])
    return args


def _call(name: str, arguments: Any, call_id: str = "t0") -> dict[str, Any]:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}}


def realize(spec: tuple[str, list[int], str], env: Environment, tools: list[dict[str, Any]],
            messages: list[Message]) -> Message:
    """The concrete assistant message for ``spec`` at this point of the conversation."""
    kind, ks, junk = spec
    words = pool(messages)
    tool = tools[ks[0] % len(tools)]
    name = tool["function"]["name"]
    if kind == "expert":
        return env.expert(mistakes=(ks[1] % 4) / 4, seed=ks[2]).act(messages)
    if kind == "text":
        return {"role": "assistant", "content": tool_call_to_text(name, _args(tool, words, ks))}
    if kind == "garbage":
        return {"role": "assistant", "content": junk}
    if kind == "not_a_dict":
        return {"role": "assistant", "content": None}
    if kind == "bad_json":
        calls = [_call(name, "{" + junk)]
    elif kind == "unknown_tool":
        calls = [_call("rm_rf", {})]
    elif kind == "wrong_type":
        calls = [_call(name, {p: [1] for p in _args(tool, words, ks)} or [1, 2])]
    elif kind == "extra_arg":
        calls = [_call(name, {**_args(tool, words, ks), "zzz": 1})]
    elif kind == "missing":
        calls = [_call(name, {})]
    elif kind == "multi":
        other = tools[ks[1] % len(tools)]
        calls = [_call(name, _args(tool, words, ks), "t0"),
                 _call(other["function"]["name"], _args(other, words, ks[1:]), "t1")]
    else:
        calls = [_call(name, _args(tool, words, ks))]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def env_variants() -> list[tuple[str, dict[str, Any]]]:
    """Every registered environment, with each backend it accepts."""
    out = []
    for name in list_envs():
        for options in ({}, {"backend": "disk"}):
            try:
                make_env(name, 0, **options).close()
            except (ValueError, TypeError):
                continue
            out.append((name, options))
    return out


def state_of(env: Environment) -> Any:
    """What can be compared of an environment's state from outside: its check, its step
    count, and its full state where it exposes one (``state()`` or ``db_hash()``)."""
    full = None
    if hasattr(env, "state"):
        full = env.state()
    elif hasattr(env, "db_hash"):
        full = env.db_hash()
    return (env.check(), getattr(env, "steps", None), getattr(env, "done", None), full)
