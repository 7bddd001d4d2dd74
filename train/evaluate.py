"""Success rate on held-out tasks, before and after, with a paired bootstrap interval.

The success rate of a model on an environment is the mean, over tasks, of the share of S
sampled episodes per task that end with the check's ``success``. Episodes are played in
lockstep: at each round every unfinished episode asks the policy for its next action, so a
policy can batch (a local model generates for all of them at once; an OpenAI-compatible
server gets them concurrently). Per-task results (task, episodes, successes, scores) are
written as JSONL so every interval can be recomputed.

:func:`paired_bootstrap` is pure: resample tasks with replacement (the same tasks before
and after), take the mean difference after minus before, and report the 2.5% and 97.5%
quantiles over a fixed number of resamples from a fixed seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from branchpoint.sampler.envs.base import Message, tasks_in_split
from branchpoint.sampler.envs.registry import make_env
from branchpoint.store.splits import Split
from branchpoint.train.episodes import text_opening

__all__ = ["BatchPolicy", "EvalResult", "TaskResult", "evaluate", "paired_bootstrap",
           "read_results", "write_results"]

# A batch policy: conversations in, one assistant message each out (same order).
BatchPolicy = Callable[[list[list[Message]]], list[Message]]


@dataclass(frozen=True)
class TaskResult:
    env: str
    task_id: int
    episodes: int
    successes: int
    scores: list[float]
    steps: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0


@dataclass(frozen=True)
class EvalResult:
    env: str
    split: str
    tasks: list[TaskResult]

    @property
    def success(self) -> float:
        """The mean over tasks of each task's share of successful episodes."""
        if not self.tasks:
            return 0.0
        return sum(t.success_rate for t in self.tasks) / len(self.tasks)

    @property
    def mean_score(self) -> float:
        scores = [sum(t.scores) / len(t.scores) for t in self.tasks if t.scores]
        return sum(scores) / len(scores) if scores else 0.0


def evaluate(policy: BatchPolicy, env: str, *, split: Split = "heldout", tasks: int = 50,
             samples: int = 4, options: dict[str, Any] | None = None,
             task_ids: Sequence[int] | None = None,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Play ``samples`` episodes of each of the first ``tasks`` tasks of ``split`` (or of
    ``task_ids``) with ``policy``; count successes per task.

    Raises:
        UnknownEnvironment: ``env`` is not registered.
        ValueError: an environment option the environment refuses.
    """
    ids = list(task_ids) if task_ids is not None else tasks_in_split(split, tasks)
    envs = []
    for task_id in ids:
        for _ in range(samples):
            envs.append(make_env(env, task_id, **(options or {})))
    try:
        convs = []
        for e in envs:
            reset = e.reset()
            convs.append(text_opening(reset.messages, reset.tools))
        live = list(range(len(envs)))
        finished = 0
        while live:
            actions = policy([convs[i] for i in live])
            still: list[int] = []
            for i, action in zip(live, actions, strict=True):
                result = envs[i].step(action)
                convs[i].append(action)
                convs[i].extend(result.observation)
                if result.done:
                    finished += 1
                else:
                    still.append(i)
            live = still
            if progress is not None:
                progress(finished, len(envs))
        out: list[TaskResult] = []
        for k, task_id in enumerate(ids):
            group = envs[k * samples:(k + 1) * samples]
            checks = [e.check() for e in group]
            out.append(TaskResult(env, task_id, samples, sum(c.success for c in checks),
                                  [c.score for c in checks],
                                  [getattr(e, "steps", 0) for e in group]))
        return EvalResult(env, split, out)
    finally:
        for e in envs:
            e.close()


def paired_bootstrap(before: Sequence[float], after: Sequence[float], *,
                     resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """The mean of ``after - before`` over paired items, and its 95% interval by a paired
    bootstrap (``resamples`` resamples of the items, with replacement, from ``seed``).

    Raises:
        ValueError: the two lists differ in length or are empty.
    """
    if len(before) != len(after) or not before:
        raise ValueError("a paired bootstrap needs two non-empty lists of the same length")
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n
                   for _ in range(resamples))
    low = means[int(0.025 * resamples)]
    high = means[min(resamples - 1, int(0.975 * resamples))]
    return sum(diffs) / n, low, high


def write_results(result: EvalResult, path: str | Path, meta: dict[str, Any]) -> None:
    """Per-task JSONL at ``path`` and a summary JSON beside it (``.summary.json``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as fh:
        for t in result.tasks:
            fh.write(json.dumps({"task": {"env": t.env, "task_id": t.task_id},
                                 **asdict(t)}) + "\n")
    summary = {**meta, "env": result.env, "split": result.split,
               "n_tasks": len(result.tasks), "success": result.success,
               "mean_score": result.mean_score, "results": target.name}
    target.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def read_results(path: str | Path) -> EvalResult:
    """Per-task results as :func:`write_results` wrote them.

    Raises:
        ValueError: a line that is not a per-task result.
    """
    tasks: list[TaskResult] = []
    env, split = "", ""
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                tasks.append(TaskResult(row["env"], row["task_id"], row["episodes"],
                                        row["successes"], row["scores"], row.get("steps", [])))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a per-task result ({exc})") from None
            env = row["env"]
    summary = Path(path).with_suffix(".summary.json")
    if summary.exists():
        split = json.loads(summary.read_text()).get("split", "")
    return EvalResult(env, split, tasks)
