"""``branchpoint model build``: a small chat model that needs no download.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on the scripted experts'
demonstrations (the environments' own language: their prompts, commands and
observations). The chat template is ChatML; the assistant part of each turn, end-of-turn
token included, sits in a ``{% generation %}`` block so TRL's ``assistant_only_loss``
finds it, and earlier turns are never rewritten, so a prompt rendered with
``add_generation_prompt=True`` is a token prefix of the prompt plus any answer (what TRL's
DPO trainer expects). The model is a ``Qwen2ForCausalLM`` with random weights, saved with
``save_pretrained`` beside the tokenizer.

Two transformers must read the folder the same way: the project's (5.2x) for training, and
the older one (< 5.20) that vLLM's CPU build pins, which loads tokenizers through
``AutoTokenizer``. transformers 5 writes ``tokenizer_class: TokenizersBackend``; older
versions do not know that class, so the saved config names ``PreTrainedTokenizerFast``,
which both map to the ``tokenizer.json`` as saved. The decoder's clean-up of spaces is
off (it would turn ``cd ..`` into ``cd..``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from branchpoint.train.deps import require_train

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "ModelSpec", "build_model", "build_tokenizer",
           "load_tokenizer"]

# Qwen2's pre-tokenization: letters, single digits, punctuation runs, spaces and newlines.
PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                     r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# A refinement of it (every piece lies inside one of Qwen2's, and no merge can join two
# pieces, so Qwen2's own pre-tokenizer gives the same tokens): a word keeps its leading
# space but never a punctuation mark, and punctuation marks stand alone. A name then reads
# the same in `/src/todo.txt` at the start of a line and in `mv /src/todo.txt`, which is
# what a small model copying from its context needs. (Isolating spaces too, so that `todo`
# after a space is the same token as after `/`, made the demo's model copy nothing at all
# in 6 epochs of step windows: see the README's proof section.)
NAMES_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
PRETOKENIZERS = {"qwen2": PRETOKENIZE_REGEX, "names": NAMES_REGEX}
BOS, EOS, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)

# Tool calls (when a conversation carries them) are written as Qwen-style <tool_call> JSON
# so a model trained on them could be served with vLLM's `hermes` parser; the built-in
# environments' demonstrations use plain text commands.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- generation -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- endif -%}"
    "{%- if message.get('tool_calls') -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{{ '<tool_call>' }}{{ {'name': call['function']['name'], "
    "'arguments': call['function']['arguments']} | tojson }}{{ '</tool_call>' }}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>' }}"
    "{%- endgeneration -%}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for part in message['content'] -%}{{ part.get('text', '') }}{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class ModelSpec:
    """What ``model build`` makes: the tokenizer's vocabulary, the network's shape, and the
    demonstrations the tokenizer learns from."""

    envs: tuple[str, ...] = ("fs", "shop")
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per environment
    demo_tasks: int = 300  # per environment, train split, for the tokenizer
    vocab_size: int = 2048
    pretokenizer: str = "qwen2"  # or "names": see NAMES_REGEX
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 384
    max_positions: int = 2048
    seed: int = 0


def build_tokenizer(texts: Iterable[str], vocab_size: int, pretokenizer: str = "qwen2") -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``, with the ChatML
    special tokens and chat template.

    Raises:
        ValueError: a ``pretokenizer`` other than those of :data:`PRETOKENIZERS`.
    """
    if pretokenizer not in PRETOKENIZERS:
        raise ValueError(f"pretokenizer must be one of {', '.join(PRETOKENIZERS)}, "
                         f"got {pretokenizer!r}")
    require_train()
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # The very normalizer and pre-tokenizer of Qwen2's tokenizer (or a refinement of it):
    # AutoTokenizer maps a folder whose config says qwen2 to Qwen2Tokenizer, which rebuilds
    # the tokenizer from the vocabulary and merges with Qwen2's, so a splitting that is not
    # Qwen2's or finer would tokenize differently there.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZERS[pretokenizer]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token=None, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[BOS], clean_up_tokenization_spaces=False,
        model_max_length=ModelSpec.max_positions)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load_tokenizer(folder: str | Path) -> Any:
    """The tokenizer of a model folder, loaded as vLLM loads it (``AutoTokenizer``)."""
    require_train()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _fix_tokenizer_config(out: Path) -> None:
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["clean_up_tokenization_spaces"] = False
    config["chat_template"] = CHAT_TEMPLATE  # older readers look here first
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def build_model(out: str | Path, spec: ModelSpec | None = None,
                texts: Sequence[str] | None = None) -> Path:
    """Train the tokenizer (on ``texts``, or the experts' demonstrations of ``spec.envs``),
    build a randomly initialised Qwen2 model around it, and save both to ``out``.

    Raises:
        MissingDependency: the ``train`` extra is not installed.
        UnknownEnvironment: an environment in ``spec.envs`` is not registered.
    """
    require_train()
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from branchpoint.train.episodes import demonstrations, texts_of

    spec = spec or ModelSpec()
    if texts is None:
        episodes = []
        for env in spec.envs:
            # Demonstrations with mistakes, so wrong moves and error texts are in the corpus.
            episodes += list(demonstrations(env, spec.demo_tasks, mistakes=0.3,
                                            options=spec.options.get(env)))
        texts = list(texts_of(episodes))
    tokenizer = build_tokenizer(texts, spec.vocab_size, spec.pretokenizer)
    torch.manual_seed(spec.seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, use_cache=True)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    _fix_tokenizer_config(target)
    (target / "branchpoint_model.json").write_text(
        json.dumps({"built_by": "branchpoint model build", **asdict(spec),
                    "parameters": sum(p.numel() for p in model.parameters())}, indent=2)
        + "\n")
    return target
