"""An environment whose conversations outgrow any context: every step is answered with
``words`` numbered words (option, default 3000), so after one step the next request is
longer than a small model's context. Named by import path,
``tests.sampler.long_env:LongEnv``."""

from __future__ import annotations

from typing import Any

from branchpoint.sampler.envs.base import (
    Check,
    Environment,
    Message,
    Reset,
    StepResult,
    SubGoal,
    score_of,
)

IMPORT_PATH = "tests.sampler.long_env:LongEnv"


class LongEnv(Environment):
    name = "long"
    description = "answers every step at great length"

    def __init__(self, task_id: int, **options: Any) -> None:
        super().__init__(task_id, **options)
        self.words = int(options.get("words", 3000))
        self.steps = 0

    def reset(self) -> Reset:
        self.steps = 0
        return Reset([{"role": "system", "content": "Answer with one short word."},
                      {"role": "user", "content": "Say something."}], [])

    def step(self, action: Message) -> StepResult:
        self.steps += 1
        text = " ".join(f"w{i}" for i in range(self.words))
        return StepResult([{"role": "user", "content": text}], False)

    def check(self) -> Check:
        return score_of([SubGoal("spoke", 1.0, self.steps > 0)])
