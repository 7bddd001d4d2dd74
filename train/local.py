"""A batch policy backed by a local transformers model (``generate``), for quick
experiments without a server. Conversations are rendered with the model's chat template
(generation prompt added), left-padded, and sampled in batches (one batch of thousands of
prompts would take gigabytes); each completion becomes one assistant message with text
content, as a server without a tool-call parser answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from branchpoint.sampler.envs.base import Message
from branchpoint.train.deps import require_train

__all__ = ["LocalPolicy"]


class LocalPolicy:
    """Sample the next action of many conversations at once from a model folder."""

    def __init__(self, model: str | Path, *, temperature: float = 0.7, top_p: float = 1.0,
                 max_new_tokens: int = 96, batch_size: int = 128, seed: int = 0,
                 max_prompt_tokens: int = 1536) -> None:
        require_train()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(model))
        self.tokenizer.padding_side = "left"
        self.model: Any = AutoModelForCausalLM.from_pretrained(str(model))
        self.model.train(False)
        self.temperature, self.top_p = temperature, top_p
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.tokens_generated = 0

    def __call__(self, conversations: list[list[Message]]) -> list[Message]:
        import torch

        out: list[Message] = []
        for start in range(0, len(conversations), self.batch_size):
            chunk = conversations[start:start + self.batch_size]
            texts = [self.tokenizer.apply_chat_template(c, tokenize=False,
                                                        add_generation_prompt=True)
                     for c in chunk]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True,
                                 add_special_tokens=False)
            if enc["input_ids"].shape[1] > self.max_prompt_tokens:
                # Keep the most recent context, as a server with a bounded context would
                # refuse; such episodes are long past a sensible length anyway.
                enc = {k: v[:, -self.max_prompt_tokens:] for k, v in enc.items()}
            with torch.no_grad():
                gen = self.model.generate(
                    **enc, do_sample=self.temperature > 0,
                    temperature=self.temperature if self.temperature > 0 else None,
                    top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            for row in new:
                ids = [int(i) for i in row if int(i) != self.tokenizer.pad_token_id]
                if self.tokenizer.eos_token_id in ids:
                    ids = ids[:ids.index(self.tokenizer.eos_token_id)]
                self.tokens_generated += len(ids)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                out.append({"role": "assistant", "content": text})
        return out
