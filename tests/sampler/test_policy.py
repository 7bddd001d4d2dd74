"""The OpenAI-calling policy, against a real local HTTP server that answers from a script."""

from __future__ import annotations

from typing import Any

import pytest

from branchpoint.sampler.policy import ChatPolicy, Sampling, seed_for, text_opening
from branchpoint.store.errors import ContextOverflow, EndpointError, EndpointUnusable
from tests.sampler.scripted_endpoint import ScriptedEndpoint, error

OPENING = [{"role": "system", "content": "You tidy files."},
           {"role": "user", "content": "move a.txt to b/"}]
TOOLS = [{"type": "function", "function": {
    "name": "mv", "description": "Move a file.",
    "parameters": {"type": "object", "properties": {"src": {"type": "string"},
                                                    "dst": {"type": "string"}},
                   "required": ["src", "dst"]}}}]


def texts(*contents: str) -> Any:
    return lambda body: [{"content": c} for c in contents][: body["n"]]


async def test_identical_candidates_of_one_request_are_merged_with_their_count() -> None:
    with ScriptedEndpoint(texts("mv a.txt b/", "ls", "mv a.txt  b/", "mv a.txt b/")) as ep:
        policy = ChatPolicy(ep.base_url, "tiny", Sampling(temperature=0.9, max_tokens=32))
        cands = await policy.propose(OPENING, None, 4, seed=7)
        await policy.close()
    assert [c.message["content"] for c in cands] == ["mv a.txt b/", "ls", "mv a.txt  b/"]
    assert [c.count for c in cands] == [2, 1, 1]
    first = cands[0].produced_by
    assert first["count"] == 2 and first["merged_choices"] == [0, 3]
    assert first["model"] == "tiny" and first["seed"] == 7
    assert first["sampling"] == {"temperature": 0.9, "top_p": 1.0, "max_tokens": 32, "n": 4}
    assert first["token_ids"] == [ord(c) % 97 for c in "mv a.txt b/"]
    assert first["logprobs"] == [-0.5] * len("mv a.txt b/")
    assert first["usage"]["completion_tokens"] > 0
    (body,) = ep.requests
    assert body["n"] == 4 and body["seed"] == 7 and body["logprobs"] is True
    assert body["return_token_ids"] is True and "tools" not in body


async def test_server_errors_are_retried_with_backoff_until_an_answer() -> None:
    calls = {"n": 0}

    def flaky(body: dict[str, Any]) -> Any:
        calls["n"] += 1
        if calls["n"] <= 2:
            return error(503, "overloaded")
        return [{"content": "ls"}]

    with ScriptedEndpoint(flaky) as ep:
        policy = ChatPolicy(ep.base_url, "tiny", backoff=0.01)
        cands = await policy.propose(OPENING, None, 1)
        await policy.close()
    assert [c.message["content"] for c in cands] == ["ls"]
    assert policy.retried == 2


async def test_errors_that_persist_raise_an_endpoint_error_naming_the_kind() -> None:
    with ScriptedEndpoint(lambda body: error(500, "boom")) as ep:
        policy = ChatPolicy(ep.base_url, "tiny", retries=2, backoff=0.01)
        with pytest.raises(EndpointError) as info:
            await policy.propose(OPENING, None, 1)
        await policy.close()
    assert info.value.kind == "http_500"
    assert len(ep.requests) == 3


async def test_a_request_longer_than_the_context_is_a_context_overflow_not_retried() -> None:
    msg = ("This model's maximum context length is 512 tokens. However, you requested "
           "700 tokens.")
    with ScriptedEndpoint(lambda body: error(400, msg)) as ep:
        policy = ChatPolicy(ep.base_url, "tiny", backoff=0.01)
        with pytest.raises(ContextOverflow, match="maximum context length"):
            await policy.propose(OPENING, None, 2)
        await policy.close()
    assert len(ep.requests) == 1


async def test_check_reports_an_unknown_model_and_lists_the_served_ones() -> None:
    with ScriptedEndpoint(texts("ls"), model="tiny", max_model_len=1024) as ep:
        policy = ChatPolicy(ep.base_url, "tiny")
        info = await policy.check()
        other = ChatPolicy(ep.base_url, "qwen")
        with pytest.raises(EndpointUnusable, match=r"no model named 'qwen'.*tiny"):
            await other.check()
        await policy.close()
        await other.close()
    assert info.max_model_len == 1024


async def test_check_reports_an_unreachable_endpoint() -> None:
    with ScriptedEndpoint(texts("ls")) as ep:
        url = ep.base_url
    policy = ChatPolicy(url, "tiny")
    with pytest.raises(EndpointUnusable, match="cannot reach") as info:
        await policy.check()
    await policy.close()
    assert info.value.kind == "connection"


async def test_a_server_that_refuses_tools_is_detected() -> None:
    refusal = ('"auto" tool choice requires --enable-auto-tool-choice and '
               "--tool-call-parser to be set")

    def strict(body: dict[str, Any]) -> Any:
        return error(400, refusal) if body.get("tools") else [{"content": "ls"}]

    with ScriptedEndpoint(strict) as ep:
        policy = ChatPolicy(ep.base_url, "tiny")
        assert await policy.accepts_tools(OPENING, TOOLS) is False
        await policy.close()
    with ScriptedEndpoint(texts("ls")) as ep:
        policy = ChatPolicy(ep.base_url, "tiny")
        assert await policy.accepts_tools(OPENING, TOOLS) is True
        await policy.close()


async def test_tool_calls_come_back_as_an_openai_assistant_message() -> None:
    call = {"id": "chatcmpl-tool-1", "type": "function",
            "function": {"name": "mv", "arguments": '{"src": "a.txt", "dst": "b/"}'}}
    with ScriptedEndpoint(lambda body: [{"content": None, "tool_calls": [call]}]) as ep:
        policy = ChatPolicy(ep.base_url, "tiny")
        (cand,) = await policy.propose(OPENING, TOOLS, 1)
        await policy.close()
    assert cand.message == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert ep.requests[0]["tools"] == TOOLS


def test_text_mode_describes_the_tools_as_compact_usage_lines() -> None:
    out = text_opening(OPENING, TOOLS)
    assert out[0]["content"].endswith("Commands:\nmv SRC DST: Move a file.")
    assert out[1:] == OPENING[1:] and OPENING[0]["content"] == "You tidy files."
    assert "{" not in out[0]["content"]


def test_request_seeds_derive_from_the_run_seed_and_the_node() -> None:
    assert seed_for(None, "t/root") is None
    assert seed_for(1, "t/root") == seed_for(1, "t/root")
    assert seed_for(1, "t/root") != seed_for(2, "t/root") != seed_for(1, "t/s.1")
