"""``branchpoint demo --compare``: the comparisons that make the case, at one sampling budget.

The main demo (:func:`branchpoint.train.pipeline.run_pipeline`) is run first, so its stages
(build, SFT, sample, eval_before, DPO, eval_after) are reused as they are; then, from the
same SFT model and with the same :class:`DpoSettings`, two more DPO arms are trained and
evaluated on the same held-out tasks, each in stages of its own (cached the same way):

``binary``
    the very trees of the step-level arm, re-exported with ``export dpo --binary`` (a leaf
    counts 1.0 when its checker score is 1.0, else 0.0: what a 0/1 checker would give).
``trajectory``
    independent episodes of the same training tasks, paired best against worst per task
    (``export trajectory-pairs``, as in the seed training pipeline), at the step-level
    sample's completion-token budget.

Budget matching (:func:`next_round`): the step-level budget B is the completion tokens its
trees used (the store's ``produced_by.usage`` per request for the vLLM engine; the local
model's generated tokens for the local one). Episodes are played in rounds of one
episode per task (``sample --strategy episodes --branching 1``, a run of its own per
round; the local engine plays the same with :func:`branchpoint.train.grow.grow_episodes`):
the first round plays every training task; each later round plays the first M tasks, M =
the remaining budget over the mean tokens of an episode so far, rounded (at most every
task), until M is 0. Every episode is played to its end (no budget cuts one short), and
the total lands within about one episode of B. One call with ``--branching K`` would not
do: it draws K first steps in one request and continues each *distinct* one once, so a
model that always opens the same way gives one episode, not K. ``export
trajectory-pairs`` pairs the episodes of a task across the rounds' trees.

Trajectory pairs are TRL's conversational preference rows as exported (``prompt``: the
opening messages; ``chosen``/``rejected``: the rest of each episode, observations
included, ending on the last assistant turn), which TRL's DPO trainer takes as they are:
it renders prompt + completion with the chat template and trains on the tokens after the
prompt, so the observations inside an episode count in its log-probability too.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from branchpoint.sampler.envs.base import tasks_in_split
from branchpoint.store.events import Event
from branchpoint.train.evaluate import EvalResult, paired_bootstrap, read_results
from branchpoint.train.pipeline import (
    DemoSettings,
    Progress,
    Stage,
    _cli,
    _closed_with_error,
    _eval,
    _key,
    _nothing,
    _options_args,
    _record_local,
    _serving,
    _Stages,
    run_pipeline,
)

__all__ = ["ARMS", "check_preference_rows", "compare_block", "completion_tokens",
           "episodes_stage", "next_round", "run_compare", "sample_episodes", "step_tokens"]

#: The arms, in the order the report and the table show them.
ARMS = ("sft", "step", "binary", "trajectory")
#: At most this many rounds (episodes per task), whatever the budget.
MAX_ROUNDS = 256


def next_round(budget: int, spent: int, episodes: int, tasks: int) -> int:
    """How many tasks the next round of one episode per task plays (the first M of them),
    so that the tokens spent come closest to ``budget``; 0 when no round should follow.

    ``spent`` tokens bought ``episodes`` episodes so far; the first round (none played yet)
    plays every task. A next episode is expected to cost the mean so far, so M is the
    remaining budget over that mean, rounded to the nearest whole episode, at most
    ``tasks``.

    Raises:
        ValueError: a negative count, or no tasks.
    """
    if min(budget, spent, episodes) < 0 or tasks < 1:
        raise ValueError("budget, spent and episodes must be >= 0 and tasks >= 1")
    if episodes == 0:
        return tasks
    if spent == 0:
        return 0  # episodes that cost nothing cannot be budgeted: stop rather than loop
    per_episode = spent / episodes
    remaining = budget - spent
    return max(0, min(tasks, math.floor(remaining / per_episode + 0.5)))


def completion_tokens(events: Iterable[Event]) -> int:
    """The completion tokens the steps among ``events`` cost, as their ``produced_by.usage``
    records them: once per request (``request_id``; the candidates of one request share its
    usage), once per step where no request id is recorded."""
    total = 0
    seen: set[str] = set()
    for ev in events:
        produced = getattr(ev.payload, "produced_by", None)
        if not isinstance(produced, dict):
            continue
        rid = produced.get("request_id")
        if isinstance(rid, str):
            if rid in seen:
                continue
            seen.add(rid)
        total += int((produced.get("usage") or {}).get("completion_tokens") or 0)
    return total


async def _store_tokens(db: str) -> int:
    from branchpoint.store.log import iter_events, open_log

    log = await open_log(db)
    try:
        return completion_tokens([ev async for ev in iter_events(log)])
    finally:
        await log.close()


def step_tokens(sample_info: dict[str, Any]) -> int:
    """The completion tokens of the step-level sample stage: the local model's count when
    the stage kept one, else what its store records."""
    if sample_info.get("tokens"):
        return int(sample_info["tokens"])
    return asyncio.run(_store_tokens(str(sample_info["db"])))


# --- stages --------------------------------------------------------------------------------


def _info(stage: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((Path(stage["folder"]) / "done.json").read_text())
    info.pop("seconds", None)
    return info


def _stage_key(stage: dict[str, Any]) -> str:
    return Path(stage["folder"]).name.rsplit("-", 1)[1]


def _export(db: str, fmt: str, target: Path, settings: DemoSettings, *extra: str) -> int:
    cmd = [*_cli(), "export", fmt, "--db", db, "--split", "train", "--env", settings.env,
           "--margin", str(settings.margin), "--out", str(target), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"branchpoint export {fmt} failed: {done.stderr.strip()[-2000:]}")
    return sum(1 for line in target.read_text().splitlines() if line.strip())


def check_preference_rows(rows: list[dict[str, Any]]) -> None:
    """Check that ``rows`` are TRL conversational preference rows with an explicit prompt:
    ``prompt`` a list of messages ending on a user (or tool) turn, ``chosen`` and
    ``rejected`` lists of messages that start and end with an assistant turn.

    Raises:
        ValueError: the first row that is not (its number is named).
    """
    for i, row in enumerate(rows, start=1):
        parts = [row.get(k) for k in ("prompt", "chosen", "rejected")]
        if not all(isinstance(p, list) and p and all(isinstance(m, dict) and "role" in m
                                                     for m in p) for p in parts):
            raise ValueError(f"pair {i}: prompt, chosen and rejected must be lists of "
                             "messages")
        prompt, chosen, rejected = parts
        assert isinstance(prompt, list) and isinstance(chosen, list)
        assert isinstance(rejected, list)
        if prompt[-1]["role"] not in ("user", "tool"):
            raise ValueError(f"pair {i}: the prompt ends on a {prompt[-1]['role']} turn")
        for name, side in (("chosen", chosen), ("rejected", rejected)):
            if side[0]["role"] != "assistant" or side[-1]["role"] != "assistant":
                raise ValueError(f"pair {i}: {name} must start and end with an assistant "
                                 "turn")


def _episodes_vllm(url: str, name: str, settings: DemoSettings, db: str, *, round_: int,
                   tasks: int) -> None:
    cmd = [*_cli(), "sample", "--env", settings.env, "--tasks", str(tasks),
           "--split", "train", "--base-url", url, "--model", name, "--db", db,
           "--strategy", "episodes", "--branching", "1", "--run", f"ep{round_}",
           "--temperature", str(settings.temperature),
           "--max-tokens", str(settings.max_tokens), "--concurrency", "8",
           "--action-format", "text", "--seed", str(settings.seed), "--quiet",
           *_options_args(settings.options)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"branchpoint sample --strategy episodes failed "
                           f"({done.returncode}): {done.stderr.strip()[-2000:]}")


def sample_episodes(settings: DemoSettings, budget: int, db: str, *,
                    play: Callable[[int, int], None], spent: Callable[[], int],
                    progress: Progress) -> dict[str, Any]:
    """Play rounds of one episode per task (``play(round, tasks)``) until the tokens
    (``spent()``) come closest to ``budget`` (:func:`next_round`); the rounds, episodes
    and tokens they took."""
    tasks = settings.sample_tasks
    rounds: list[int] = []
    used = spent()
    while len(rounds) < MAX_ROUNDS:
        m = next_round(budget, used, sum(rounds), tasks)
        if m == 0:
            break
        progress("episodes", f"round {len(rounds) + 1}: {m} tasks, {used} of {budget} "
                 "tokens spent")
        play(len(rounds) + 1, m)
        rounds.append(m)
        used = spent()
    return {"db": db, "rounds": rounds, "episodes": sum(rounds), "tokens": used,
            "budget": budget}


def episodes_stage(url: str | None, name: str, settings: DemoSettings, *, budget: int,
                   folder: Path, say: Progress) -> dict[str, Any]:
    """The trajectory arm's episodes, into ``FOLDER/branchpoint.db``: rounds of one episode
    per training task (:func:`sample_episodes`) played by the model served at ``url``
    (``branchpoint sample --strategy episodes --branching 1``, run ``epN`` for round N), or
    by the model folder ``name`` in-process when ``url`` is None.

    Raises:
        RuntimeError: ``sample`` failed, or more than a tenth of the episodes ended with
            endpoint errors.
    """
    db = f"sqlite:///{(folder / 'branchpoint.db').as_posix()}"
    if url is None:
        from branchpoint.train.grow import grow_episodes
        from branchpoint.train.local import LocalPolicy

        policy = LocalPolicy(name, temperature=settings.temperature,
                             max_new_tokens=settings.max_tokens, seed=settings.seed + 1)
        ids = tasks_in_split("train", settings.sample_tasks)

        def play_local(round_: int, tasks: int) -> None:
            events = grow_episodes(policy, settings.env, ids[:tasks], run=f"ep{round_}",
                                   options=settings.options,
                                   produced_by={"policy": "local", "model": name,
                                                "temperature": settings.temperature})
            asyncio.run(_record_local(events, db))

        return sample_episodes(settings, budget, db, play=play_local,
                               spent=lambda: policy.tokens_generated, progress=say)

    def play_vllm(round_: int, tasks: int) -> None:
        assert url is not None
        _episodes_vllm(url, name, settings, db, round_=round_, tasks=tasks)

    info = sample_episodes(settings, budget, db, play=play_vllm,
                           spent=lambda: asyncio.run(_store_tokens(db)), progress=say)
    failed = asyncio.run(_closed_with_error(db))
    if failed > info["episodes"] // 10:
        raise RuntimeError(f"{failed} of {info['episodes']} episodes ended with endpoint "
                           "errors; the episodes stage is not kept")
    return info


# --- the report ----------------------------------------------------------------------------


def _aligned(a: EvalResult, b: EvalResult) -> tuple[list[float], list[float]]:
    """Per-task success rates of ``a`` and ``b`` over the same tasks, in one order.

    Raises:
        ValueError: the two were not evaluated on the same tasks.
    """
    ra = {t.task_id: t.success_rate for t in a.tasks}
    rb = {t.task_id: t.success_rate for t in b.tasks}
    if set(ra) != set(rb):
        raise ValueError("the arms were evaluated on different tasks")
    ids = sorted(ra)
    return [ra[i] for i in ids], [rb[i] for i in ids]


def _difference(base: EvalResult | None, other: EvalResult | None
                ) -> dict[str, Any]:
    """``other - base`` over tasks with its paired-bootstrap 95% interval (None when an
    arm was not evaluated)."""
    if base is None or other is None:
        return {"difference": None, "ci95": None}
    mean, low, high = paired_bootstrap(*_aligned(base, other))
    return {"difference": mean, "ci95": [low, high]}


def compare_block(results: dict[str, EvalResult | None], n_pairs: dict[str, int],
                  tokens: dict[str, int], *, budget: dict[str, Any],
                  stages: list[Stage], eval_samples: int) -> dict[str, Any]:
    """The ``compare`` block of the report: per arm (``sft``, ``step``, ``binary``,
    ``trajectory``) its held-out success, mean score, pairs and completion tokens, and its
    difference from SFT; then step minus trajectory and step minus binary. Differences
    are means over tasks with paired-bootstrap 95% intervals; an arm with no pairs is not
    trained and has None for its figures."""
    sft = results["sft"]
    assert sft is not None
    arms: dict[str, Any] = {}
    for arm in ARMS:
        r = results.get(arm)
        vs = _difference(sft, r) if arm != "sft" else {"difference": None, "ci95": None}
        arms[arm] = {
            "success": None if r is None else r.success,
            "mean_score": None if r is None else r.mean_score,
            "n_pairs": n_pairs.get(arm), "completion_tokens": tokens.get(arm),
            "trained": arm == "sft" or r is not None,
            "difference_vs_sft": vs["difference"], "difference_vs_sft_ci95": vs["ci95"],
        }
    differences = {f"{arm}_vs_sft": _difference(sft, results.get(arm))
                   for arm in ARMS[1:]}
    differences["step_minus_trajectory"] = _difference(results.get("trajectory"),
                                                       results.get("step"))
    differences["step_minus_binary"] = _difference(results.get("binary"),
                                                   results.get("step"))
    return {
        "n_eval_tasks": len(sft.tasks), "eval_samples": eval_samples,
        "success": {arm: arms[arm]["success"] for arm in ARMS},
        "arms": arms, "differences": differences,
        "n_pairs": {arm: n_pairs.get(arm) for arm in ARMS[1:]},
        "completion_tokens": {arm: tokens.get(arm) for arm in ARMS[1:]},
        "budget": budget,
        "stages": [{"name": s.name, "seconds": round(s.seconds, 1), "cached": s.cached,
                    "folder": s.folder} for s in stages],
    }


# --- the run -------------------------------------------------------------------------------


def run_compare(settings: DemoSettings, out: Path, *, fresh: bool = False,
                progress: Progress | None = None) -> dict[str, Any]:
    """Run (or resume) the main demo, then the binary and trajectory arms; add the
    ``compare`` block to ``OUT/report.json`` and return the whole report.

    Raises:
        MissingDependency: the ``train`` extra is missing.
        ServeError: vLLM could not be started (engine ``vllm``).
        RuntimeError: ``sample`` or ``export`` failed (their error output is included).
    """
    from branchpoint.train.trainers import read_jsonl, train_dpo

    say = progress or (lambda stage, msg: None)
    report = run_pipeline(settings, out, fresh=fresh, progress=say)
    main = {s["name"]: s for s in report["stages"]}
    infos = {name: _info(stage) for name, stage in main.items()}
    k_sample = _stage_key(main["sample"])
    sft_model = Path(infos["sft"]["model"])
    stages = _Stages(out, say)
    engine = settings.engine
    budget = step_tokens(infos["sample"])

    def eval_key(k_arm: str) -> str:
        return _key(k_arm, "eval", engine, settings.eval_split, settings.eval_tasks,
                    settings.eval_samples, settings.temperature, settings.seed)

    def dpo_work(label: str, pairs: str) -> Callable[[Path], dict[str, Any]]:
        def work(folder: Path) -> dict[str, Any]:
            rows = read_jsonl(pairs)
            check_preference_rows(rows)
            model = train_dpo(str(sft_model), rows, folder / "model", settings.dpo,
                              on_log=lambda log: say(label, f"step {log['step']}/"
                                                     f"{log['max_steps']}"))
            return {"model": str(model), "pairs": pairs, "n_pairs": len(rows)}
        return work

    def eval_arm(label: str, k_arm: str, model: Path) -> Stage:
        key = eval_key(k_arm)
        done = (stages.root / f"{label}-{key}" / "done.json").exists()
        with (_serving(model, engine, settings, out / f"vllm-{label}.log") if not done
              else _nothing(str(model))) as (url, name):
            return stages.run(label, key, lambda f: _eval(url, name, settings, f,
                                                           progress=say, label=label))

    def arm(name: str, k_pairs: str, pairs: Stage) -> EvalResult | None:
        """DPO from the SFT model on an arm's pairs, then its evaluation; None when the
        arm gave no pairs (the report says it was not trained)."""
        if not pairs.info["n_pairs"]:
            return None
        k_dpo = _key(k_pairs, "dpo", settings.dpo)
        dpo = stages.run(f"{name}_dpo", k_dpo, dpo_work(f"{name}_dpo", pairs.info["pairs"]))
        done = eval_arm(f"{name}_eval_after", k_dpo, Path(dpo.info["model"]))
        return read_results(done.info["results"])

    # Binary: the step-level trees, exported with a 0/1 checker.
    k_bpairs = _key(k_sample, "binary", settings.margin)
    bpairs = stages.run("binary_pairs", k_bpairs, lambda f: {
        "pairs": str(f / "pairs.jsonl"),
        "n_pairs": _export(str(infos["sample"]["db"]), "dpo", f / "pairs.jsonl", settings,
                           "--binary")})
    results: dict[str, EvalResult | None] = {
        "sft": read_results(infos["eval_before"]["results"]),
        "step": read_results(infos["eval_after"]["results"]),
        "binary": None, "trajectory": None}
    results["binary"] = arm("binary", k_bpairs, bpairs)

    # Trajectory: independent episodes of the same tasks, at the step-level budget.
    k_episodes = _key(k_sample, "episodes", budget)
    ep_dir = stages.root / f"episodes-{k_episodes}"
    with (_serving(sft_model, engine, settings, out / "vllm-sft-episodes.log")
          if not (ep_dir / "done.json").exists() else _nothing(str(sft_model))
          ) as (url, name):
        episodes = stages.run("episodes", k_episodes, lambda f: episodes_stage(
            url, name, settings, budget=budget, folder=f, say=say))
    k_tpairs = _key(k_episodes, "trajectory", settings.margin)
    tpairs = stages.run("trajectory_pairs", k_tpairs, lambda f: {
        "pairs": str(f / "pairs.jsonl"),
        "n_pairs": _export(str(episodes.info["db"]), "trajectory-pairs",
                           f / "pairs.jsonl", settings)})
    results["trajectory"] = arm("trajectory", k_tpairs, tpairs)

    trajectory_tokens = int(episodes.info["tokens"])
    block = compare_block(
        results,
        {"step": int(report["n_pairs"]), "binary": int(bpairs.info["n_pairs"]),
         "trajectory": int(tpairs.info["n_pairs"])},
        {"step": budget, "binary": budget, "trajectory": trajectory_tokens},
        budget={"step_tokens": budget, "trajectory_tokens": trajectory_tokens,
                "ratio": trajectory_tokens / budget if budget else None,
                "rounds": episodes.info["rounds"], "episodes": episodes.info["episodes"],
                "tasks": settings.sample_tasks,
                "method": "rounds of one episode per task (sample --strategy episodes "
                          "--branching 1), the last on the first M tasks, until the "
                          "tokens come closest to the step-level sample's"},
        stages=stages.done, eval_samples=settings.eval_samples)
    block["trajectory_pairs"] = {
        "format": "TRL conversational preference rows as exported: prompt = the opening "
                  "messages, chosen/rejected = the rest of each episode (observations "
                  "included), used as is",
        "trees": episodes.info["db"]}
    report["compare"] = block
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
