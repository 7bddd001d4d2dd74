"""An optional LLM judge: partial credit in [0, 1] with a rationale, for a leaf's transcript.

The judge is any model behind an OpenAI-compatible endpoint. It gets the rubric (a text the
user can replace with ``--rubric FILE``) as its system message and the transcript as the
user message, and must answer with one JSON object ``{"score": 0..1, "rationale": "..."}``
(the first ``{...}`` in the reply is read). A reply that does not parse, or whose score is
not a number in [0, 1], is asked again once; if the second reply fails too, the leaf gets
no judge score and the failure is counted, never raised. Identical inputs are not sent
twice: answers are cached by rubric, model and transcript. The sampler records a judge
score with source ``judge`` (the detail holds the rationale, the model and the rubric's
hash); an environment without a checker is scored by the judge alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from branchpoint.sampler.policy import ChatPolicy, Sampling

__all__ = ["DEFAULT_RUBRIC", "Judge", "Verdict", "parse_verdict", "render_transcript"]

DEFAULT_RUBRIC = """You grade an AI agent's attempt at a task, from its transcript.
Give partial credit: 1 means the task was fully and correctly done, 0 means nothing
useful was done; credit each part of the task that was done correctly, and take credit
away for harmful or wrong changes. Answer with one JSON object and nothing else:
{"score": <number from 0 to 1>, "rationale": "<one or two sentences>"}"""

_OBJECT = re.compile(r"\{.*?\}", re.S)


@dataclass(frozen=True)
class Verdict:
    score: float
    rationale: str


def parse_verdict(text: str | None) -> Verdict | None:
    """The verdict in a judge's reply, or None when there is none that fits."""
    if not text:
        return None
    for match in _OBJECT.finditer(text):
        try:
            obj = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        score = obj.get("score") if isinstance(obj, dict) else None
        if isinstance(score, (int, float)) and not isinstance(score, bool) \
                and 0.0 <= float(score) <= 1.0:
            return Verdict(float(score), str(obj.get("rationale") or ""))
    return None


def render_transcript(messages: Sequence[dict[str, Any]]) -> str:
    """The conversation as plain text, one block per message (tool calls as JSON)."""
    blocks = []
    for m in messages:
        text = m.get("content")
        if not isinstance(text, str):
            text = json.dumps(text) if text else ""
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {}
            text += f"\n[call {fn.get('name')} {fn.get('arguments')}]"
        blocks.append(f"[{m.get('role')}]\n{text.strip()}")
    return "\n\n".join(blocks)


class Judge:
    """Scores transcripts with ``model`` at ``base_url`` under ``rubric``."""

    def __init__(self, base_url: str, model: str, rubric: str = DEFAULT_RUBRIC, *,
                 policy: ChatPolicy | None = None) -> None:
        self.model = model
        self.rubric = rubric
        self.rubric_hash = hashlib.sha256(rubric.encode()).hexdigest()[:12]
        self.policy = policy or ChatPolicy(base_url, model, Sampling(
            temperature=0.0, max_tokens=256, logprobs=False))
        self.cache: dict[str, Verdict | None] = {}
        self.sent = 0
        self.unparsed = 0

    async def close(self) -> None:
        await self.policy.close()

    def key(self, transcript: str) -> str:
        return hashlib.sha256(f"{self.rubric}\0{self.model}\0{transcript}".encode()
                              ).hexdigest()

    async def verdict(self, messages: Sequence[dict[str, Any]]) -> Verdict | None:
        """The judge's verdict on a transcript, or None when it gave none that parses
        (after one retry).

        Raises:
            EndpointError: the judge's endpoint kept failing.
        """
        transcript = render_transcript(messages)
        key = self.key(transcript)
        if key in self.cache:
            return self.cache[key]
        prompt = [{"role": "system", "content": self.rubric},
                  {"role": "user", "content": f"Transcript:\n\n{transcript}\n\nYour verdict "
                                              "as one JSON object:"}]
        result = None
        for _ in range(2):
            self.sent += 1
            (cand, *_) = await self.policy.propose(prompt, None, 1)
            result = parse_verdict(cand.message.get("content"))
            if result is not None:
                break
        if result is None:
            self.unparsed += 1
        self.cache[key] = result
        return result
