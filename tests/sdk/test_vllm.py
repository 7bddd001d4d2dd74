"""The OpenAI wrapper and the recording proxy against real vLLM (``branchpoint
serve-model`` on the project's small model, the session's one server): ``n`` choices,
streaming, logprobs and token ids, recorded as the model sent them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from branchpoint.sdk import Recorder, wrap_openai
from tests.conftest import ServedModel
from tests.sdk.conftest import ProxyServer, stored, wait_for
from tests.sdk.test_openai_wrapper import OPENING

pytestmark = pytest.mark.slow

IDS = {"extra_body": {"return_token_ids": True}}


def conversation(client: Any, model: str) -> tuple[Any, str]:
    """Two calls: ``n=2`` with logprobs, then the first choice continued, streamed."""
    first = client.chat.completions.create(model=model, messages=OPENING, n=2, max_tokens=8,
                                           logprobs=True, seed=1, temperature=1.0, **IDS)
    messages = [*OPENING, first.choices[0].message, {"role": "user", "content": "Go on."}]
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, seed=2, stream=True,
        stream_options={"include_usage": True}, **IDS)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    return first, text


def check_tree(db: Path, first: Any, text: str) -> None:
    rows = stored(db)
    created = {r["payload"]["node_id"]: r["payload"] for r in rows
               if r["type"] == "node_created"}
    runs = {r["payload"]["node_id"]: r["payload"] for r in rows
            if r["type"] == "action_executed"}
    siblings = [n for n in created.values() if n.get("parent_id") == "root"]
    assert [n["action"]["content"] for n in siblings] == \
        [c.message.content for c in first.choices]
    for n, choice in zip(siblings, first.choices, strict=True):
        pb = n["produced_by"]
        assert pb["token_ids"] == choice.model_dump()["token_ids"]
        assert len(pb["logprobs"]["content"]) == len(pb["token_ids"])
    assert runs[siblings[0]["node_id"]]["observation"] == [{"role": "user",
                                                             "content": "Go on."}]
    (last,) = [n for n in created.values() if n.get("parent_id") == siblings[0]["node_id"]]
    assert last["action"]["content"] == text
    assert last["produced_by"]["usage"]["completion_tokens"] == len(last["produced_by"]
                                                                    ["token_ids"])


def test_the_wrapper_records_real_vllm_calls(served_model: ServedModel, db_path: Path) -> None:
    with openai.OpenAI(base_url=served_model.base_url, api_key="none") as raw:
        client = wrap_openai(raw)
        rec = Recorder(f"sqlite:///{db_path}")
        with rec.trajectory(env="vllm", task_id=1):
            first, text = conversation(client, served_model.name)
        rec.close()
    check_tree(db_path, first, text)


def test_the_proxy_records_real_vllm_calls(served_model: ServedModel, tmp_path: Path) -> None:
    proxy = ProxyServer(tmp_path / "proxied.db", upstream_url=served_model.base_url)
    try:
        with openai.OpenAI(base_url=proxy.base("real"), api_key="none") as client:
            first, text = conversation(client, served_model.name)
        assert httpx.post(f"{proxy.url}/proxy/real/close").is_success  # after the recording
        wait_for(lambda: any(r["type"] == "tree_closed" for r in stored(proxy.db)),
                 what="the close")
        check_tree(proxy.db, first, text)
    finally:
        proxy.stop()
