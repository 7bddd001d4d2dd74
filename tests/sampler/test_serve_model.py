"""``branchpoint serve-model`` against real vLLM (the CPU build in its own venv)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from branchpoint.sampler.policy import ChatPolicy, Sampling
from tests.conftest import ServedModel

pytestmark = pytest.mark.slow

CONVERSATION = [
    {"role": "system", "content": "You tidy a small file system."},
    {"role": "user", "content": "Move notes.txt into docs/ and submit."},
    {"role": "assistant", "content": "mv notes.txt docs/"},
    {"role": "user", "content": "moved notes.txt to /docs/notes.txt"},
]


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


def test_serve_model_prints_a_base_url_that_lists_the_folder_name(
        served_model: ServedModel) -> None:
    assert served_model.base_url.startswith("http://127.0.0.1:")
    assert served_model.base_url.endswith("/v1")
    with urllib.request.urlopen(f"{served_model.base_url}/models", timeout=30) as resp:
        models = json.loads(resp.read())["data"]
    assert [(m["id"], m["max_model_len"]) for m in models] == [("tiny-qwen", 2048)]


def test_a_conversation_has_the_same_token_ids_in_transformers_and_in_vllm(
        served_model: ServedModel) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(served_model.folder)
    ours = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True)
    ids = ours["input_ids"] if isinstance(ours, dict) or hasattr(ours, "keys") else ours
    root = served_model.base_url.removesuffix("/v1")
    theirs = _post(f"{root}/tokenize", {"model": served_model.name,
                                        "messages": CONVERSATION,
                                        "add_generation_prompt": True})
    assert theirs["tokens"] == list(ids)
    assert len(ids) > 20


async def test_n_candidates_come_back_with_token_ids_the_project_tokenizer_decodes(
        served_model: ServedModel) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(served_model.folder)
    policy = ChatPolicy(served_model.base_url, served_model.name,
                        Sampling(temperature=1.0, max_tokens=12))
    try:
        cands = await policy.propose(CONVERSATION, None, 4, seed=3)
        again = await policy.propose(CONVERSATION, None, 4, seed=3)
    finally:
        await policy.close()
    assert sum(c.count for c in cands) == 4
    for cand in cands:
        ids = cand.produced_by["token_ids"]
        assert 0 < len(ids) <= 12
        assert len(cand.produced_by["logprobs"]) == len(ids)
        text = tok.decode(ids, skip_special_tokens=True)
        assert text == cand.message["content"]
    # The same seed gives the same candidates (vLLM derives each choice's seed from it).
    assert [c.message for c in again] == [c.message for c in cands]


async def test_many_seeded_requests_with_long_prompts_leave_the_server_alive(
        served_model: ServedModel) -> None:
    # More prompt tokens at once than one engine step takes: with chunked prefill on, a
    # seeded request prefilled in chunks killed the CPU build's engine.
    import asyncio

    policy = ChatPolicy(served_model.base_url, served_model.name,
                        Sampling(temperature=0.7, max_tokens=4))
    long = [{"role": "user", "content": " ".join(f"file{i}.txt" for i in range(300))}]
    try:
        answers = await asyncio.gather(*(
            policy.propose([*long, {"role": "user", "content": f"task {k}"}], None, 4,
                           seed=k) for k in range(24)))
    finally:
        await policy.close()
    assert all(sum(c.count for c in a) == 4 for a in answers)
    with urllib.request.urlopen(f"{served_model.base_url.removesuffix('/v1')}/health",
                                timeout=30) as resp:
        assert resp.status == 200
