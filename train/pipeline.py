"""The model demo: build -> SFT -> serve -> sample -> export -> DPO -> serve -> eval.

Every stage writes into a folder of its own under ``OUT/stages/``, named by the stage and
a hash of the settings that produced it (its own and every upstream stage's), and marks
it done with ``done.json`` last; a later run with the same settings reuses a done stage,
so an interrupted demo resumes and a changed setting redoes only what depends on it.

Engines: ``vllm`` (the default) serves each model with ``branchpoint serve-model``'s
server (vLLM's CPU build on a machine without a GPU), grows trees with
``branchpoint sample`` into the SQLite store and evaluates over the OpenAI API, as a user
would; ``local`` runs the same models in-process with transformers (the branch-rollout
grower of :mod:`branchpoint.train.grow` and a local batch policy), for machines where vLLM
cannot run. Either way the pairs come from the store's own export (``export dpo --split
train``), and the report says which engine ran.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from branchpoint.sampler.envs.base import tasks_in_split
from branchpoint.train.evaluate import (
    BatchPolicy,
    EvalResult,
    evaluate,
    paired_bootstrap,
    read_results,
    write_results,
)
from branchpoint.train.grow import GrowSettings
from branchpoint.train.model import ModelSpec
from branchpoint.train.trainers import DpoSettings, SftSettings

__all__ = ["DemoSettings", "Stage", "WindowSettings", "run_pipeline"]

Progress = Callable[[str, str], None]  # (stage, message)


@dataclass(frozen=True)
class WindowSettings:
    """The first stage of supervised fine-tuning: :func:`~branchpoint.train.episodes.
    step_windows` of the expert's mistake-free demonstrations (the request, the last
    ``turns`` actions and observations, the next action), before the whole episodes."""

    demos: int = 1000
    turns: int = 3
    sft: SftSettings = field(default_factory=lambda: SftSettings(
        epochs=8.0, learning_rate=1e-3, batch_size=8))


@dataclass(frozen=True)
class DemoSettings:
    """Everything that shapes the demo's result. The defaults are the settings chosen on
    validation tasks (see the README's proof section)."""

    env: str = "fs"
    options: dict[str, Any] = field(
        default_factory=lambda: {"difficulty": "intro", "max_steps": 12})
    engine: str = "vllm"
    model: ModelSpec = field(default_factory=lambda: ModelSpec(
        envs=("fs",), options={"fs": {"difficulty": "intro", "max_steps": 12}},
        pretokenizer="names", layers=2))
    sft_demos: int = 800
    sft_mistakes: float = 0.2
    windows: WindowSettings | None = field(default_factory=WindowSettings)
    sft: SftSettings = field(default_factory=lambda: SftSettings(
        epochs=2.0, learning_rate=5e-4, batch_size=4))
    sample_tasks: int = 200
    grow: GrowSettings = field(default_factory=GrowSettings)
    temperature: float = 0.7
    max_tokens: int = 96
    margin: float = 0.1
    dpo: DpoSettings = field(default_factory=lambda: DpoSettings(epochs=4.0))
    eval_split: str = "heldout"
    eval_tasks: int = 50
    eval_samples: int = 4
    seed: int = 0


@dataclass
class Stage:
    name: str
    seconds: float
    cached: bool
    folder: str
    info: dict[str, Any] = field(default_factory=dict)


def _key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=asdict)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


class _Stages:
    def __init__(self, out: Path, progress: Progress) -> None:
        self.root = out / "stages"
        self.root.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.done: list[Stage] = []

    def run(self, name: str, key: str, work: Callable[[Path], dict[str, Any]]) -> Stage:
        folder = self.root / f"{name}-{key}"
        marker = folder / "done.json"
        if marker.exists():
            info = json.loads(marker.read_text())
            stage = Stage(name, float(info.pop("seconds", 0.0)), True, str(folder), info)
            self.progress(name, f"reused {folder}")
        else:
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            self.progress(name, "running")
            started = time.perf_counter()
            info = work(folder)
            seconds = time.perf_counter() - started
            marker.write_text(json.dumps({**info, "seconds": seconds}, indent=2) + "\n")
            stage = Stage(name, seconds, False, str(folder), info)
            self.progress(name, f"done in {seconds:.0f} s")
        self.done.append(stage)
        return stage


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "branchpoint"
    return [str(script)] if script.exists() else [sys.executable, "-m",
                                                   "branchpoint.cli.main"]


def _options_args(options: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for k, v in options.items():
        args += ["--option", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    return args


@contextmanager
def _serving(model: Path, engine: str, settings: DemoSettings, log: Path
             ) -> Iterator[tuple[str | None, str]]:
    """``(base_url, served name)`` of a vLLM server on ``model`` (stopped on exit), or
    ``(None, folder)`` for the local engine."""
    if engine == "local":
        yield None, str(model)
        return
    from branchpoint.sampler.serve import ModelServer, ServeConfig

    server = ModelServer(ServeConfig(model=str(model), port=0, served_name=model.name,
                                     max_model_len=2048), log_path=log)
    url = server.start()
    try:
        yield url, model.name
    finally:
        server.stop()


def _policy(url: str | None, name: str, settings: DemoSettings, seed: int
            ) -> tuple[BatchPolicy, Callable[[], None], Callable[[], int]]:
    from branchpoint.train.policies import endpoint_policy, local_policy

    if url is None:
        from branchpoint.train.local import LocalPolicy

        local = LocalPolicy(name, temperature=settings.temperature,
                            max_new_tokens=settings.max_tokens, seed=seed)
        return local, lambda: None, lambda: local.tokens_generated
    policy, close = endpoint_policy(url, name, temperature=settings.temperature,
                                    max_tokens=settings.max_tokens, seed=seed)
    del local_policy
    return policy, close, lambda: 0


def _eval(url: str | None, name: str, settings: DemoSettings, folder: Path, *,
          progress: Progress, label: str) -> dict[str, Any]:
    policy, close, tokens = _policy(url, name, settings, settings.seed + 7)
    try:
        result = evaluate(policy, settings.env, split=settings.eval_split,  # type: ignore[arg-type]
                          tasks=settings.eval_tasks, samples=settings.eval_samples,
                          options=settings.options,
                          progress=lambda d, t: progress(label, f"{d}/{t} episodes"))
    finally:
        close()
    path = folder / "results.jsonl"
    write_results(result, path, {"model": name, "engine": settings.engine,
                                 "temperature": settings.temperature,
                                 "samples": settings.eval_samples})
    return {"success": result.success, "mean_score": result.mean_score,
            "results": str(path), "tokens": tokens()}


def _sample_vllm(url: str, name: str, settings: DemoSettings, db: str,
                 progress: Progress) -> dict[str, Any]:
    cmd = [*_cli(), "sample", "--env", settings.env, "--tasks", str(settings.sample_tasks),
           "--split", "train", "--base-url", url, "--model", name, "--db", db,
           "--strategy", "branch-rollout", "--branching", str(settings.grow.candidates),
           "--rollouts", str(settings.grow.rollouts),
           "--depth", str(settings.grow.branch_points),
           "--temperature", str(settings.temperature),
           "--max-tokens", str(settings.max_tokens), "--concurrency", "8",
           "--action-format", "text", "--seed", str(settings.seed), "--quiet",
           *_options_args(settings.options)]
    progress("sample", " ".join(cmd[1:6]) + " ...")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"branchpoint sample failed ({done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    failed = asyncio.run(_closed_with_error(db))
    if failed > settings.sample_tasks // 10:
        # A run whose endpoint went away closes its trees with `error` and exits 0, as a
        # long sampling run should; the demo must not keep such a stage as done.
        raise RuntimeError(f"{failed} of {settings.sample_tasks} sampled trees ended with "
                           f"endpoint errors; the sample stage is not kept:\n"
                           f"{done.stdout.strip()[-1000:]}")
    return {"command": cmd, "output": done.stdout.strip()[-2000:]}


async def _closed_with_error(db: str) -> int:
    from branchpoint.store.log import open_log

    log = await open_log(db)
    try:
        return sum(t.closed == "error" for t in await log.list_trees())
    finally:
        await log.close()


async def _record_local(events: list[Any], db: str) -> None:
    from branchpoint.store.log import open_log

    log = await open_log(db)
    try:
        await log.append(events)
    finally:
        await log.close()


def _sample_local(model: str, settings: DemoSettings, db: str) -> dict[str, Any]:
    from branchpoint.train.grow import grow_trees
    from branchpoint.train.local import LocalPolicy

    policy = LocalPolicy(model, temperature=settings.temperature,
                         max_new_tokens=settings.max_tokens, seed=settings.seed)
    tasks = tasks_in_split("train", settings.sample_tasks)
    events = grow_trees(policy, settings.env, tasks, run="demo", options=settings.options,
                        settings=settings.grow,
                        produced_by={"policy": "local", "model": model,
                                     "temperature": settings.temperature})
    asyncio.run(_record_local(events, db))
    return {"events": len(events), "tokens": policy.tokens_generated}


def _export(db: str, target: Path, settings: DemoSettings) -> int:
    cmd = [*_cli(), "export", "dpo", "--db", db, "--split", "train", "--env", settings.env,
           "--margin", str(settings.margin), "--out", str(target)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"branchpoint export failed: {done.stderr.strip()[-2000:]}")
    return sum(1 for line in target.read_text().splitlines() if line.strip())


def _sft(settings: DemoSettings, base: str, folder: Path, say: Progress) -> dict[str, Any]:
    """SFT from ``base``: on the step windows first when ``settings.windows`` is set, then
    on whole demonstrations with mistakes."""
    from branchpoint.train.episodes import demonstrations, step_windows
    from branchpoint.train.trainers import train_sft

    start, info = base, {}
    if settings.windows is not None:
        w = settings.windows
        short = list(step_windows(list(demonstrations(
            settings.env, w.demos, options=settings.options)), w.turns))
        start = str(train_sft(start, short, folder / "windows", w.sft,
                              on_log=lambda log: say("sft", f"windows: step {log['step']}"
                                                     f"/{log['max_steps']}")))
        info = {"windows_model": start, "windows": len(short)}
    rows = [{"messages": e.messages} for e in demonstrations(
        settings.env, settings.sft_demos, mistakes=settings.sft_mistakes,
        options=settings.options)]
    model = train_sft(start, rows, folder / "model", settings.sft,
                      on_log=lambda log: say("sft", f"step {log['step']}/"
                                             f"{log['max_steps']}"))
    return {"model": str(model), "demos": len(rows), **info}


def run_pipeline(settings: DemoSettings, out: Path, *, fresh: bool = False,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Run (or resume) every stage; write and return the report (``OUT/report.json``).

    Raises:
        MissingDependency: the ``train`` extra is missing.
        ServeError: vLLM could not be started (engine ``vllm``).
        RuntimeError: ``sample`` or ``export`` failed (their error output is included).
    """
    from branchpoint.train.deps import require_train
    from branchpoint.train.model import build_model
    from branchpoint.train.trainers import read_jsonl, train_dpo

    require_train()
    say = progress or (lambda stage, msg: None)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(out, say)
    started = time.perf_counter()
    engine = settings.engine

    k_build = _key("build", settings.model)
    build = stages.run("build", k_build, lambda f: {
        "model": str(build_model(f / "model", settings.model))})

    def sft_work(folder: Path) -> dict[str, Any]:
        return _sft(settings, build.info["model"], folder, say)

    k_sft = _key(k_build, "sft", settings.env, settings.options, settings.sft_demos,
                 settings.sft_mistakes, settings.sft, settings.windows)
    sft = stages.run("sft", k_sft, sft_work)
    sft_model = Path(sft.info["model"])

    k_sample = _key(k_sft, "sample", engine, settings.sample_tasks, settings.grow,
                    settings.temperature, settings.max_tokens, settings.seed)
    k_before = _key(k_sft, "eval", engine, settings.eval_split, settings.eval_tasks,
                    settings.eval_samples, settings.temperature, settings.seed)
    sample_dir = stages.root / f"sample-{k_sample}"
    before_dir = stages.root / f"eval_before-{k_before}"
    need = not (sample_dir / "done.json").exists() or not (before_dir / "done.json").exists()
    with (_serving(sft_model, engine, settings, out / "vllm-sft.log") if need
          else _nothing(str(sft_model))) as (url, name):
        def sample_work(folder: Path) -> dict[str, Any]:
            db = f"sqlite:///{(folder / 'branchpoint.db').as_posix()}"
            if url is None:
                info = _sample_local(name, settings, db)
            else:
                info = _sample_vllm(url, name, settings, db, say)
            n = _export(db, folder / "pairs.jsonl", settings)
            return {**info, "db": db, "pairs": str(folder / "pairs.jsonl"), "n_pairs": n}

        sample = stages.run("sample", k_sample, sample_work)
        before = stages.run("eval_before", k_before, lambda f: _eval(
            url, name, settings, f, progress=say, label="eval_before"))

    if not sample.info.get("n_pairs"):
        raise RuntimeError(
            f"the SFT model's trees gave no DPO pairs (see `branchpoint stats --db "
            f"{sample.info.get('db')}`): every branching point tied or fell under the "
            f"margin; sample more tasks, or train SFT longer so that branches differ")
    k_dpo = _key(k_sample, "dpo", settings.margin, settings.dpo)
    dpo = stages.run("dpo", k_dpo, lambda f: {
        "model": str(train_dpo(str(sft_model), read_jsonl(sample.info["pairs"]),
                               f / "model", settings.dpo,
                               on_log=lambda log: say("dpo", f"step {log['step']}/"
                                                      f"{log['max_steps']}")))})
    dpo_model = Path(dpo.info["model"])
    k_after = _key(k_dpo, "eval", engine, settings.eval_split, settings.eval_tasks,
                   settings.eval_samples, settings.temperature, settings.seed)
    after_dir = stages.root / f"eval_after-{k_after}"
    with (_serving(dpo_model, engine, settings, out / "vllm-dpo.log")
          if not (after_dir / "done.json").exists() else _nothing(str(dpo_model))
          ) as (url, name):
        after = stages.run("eval_after", k_after, lambda f: _eval(
            url, name, settings, f, progress=say, label="eval_after"))

    report = _report(settings, stages.done, read_results(before.info["results"]),
                     read_results(after.info["results"]), sample=sample,
                     seconds=time.perf_counter() - started)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, out / "report.png")
    return report


@contextmanager
def _nothing(model: str) -> Iterator[tuple[str | None, str]]:
    yield None, model


def _report(settings: DemoSettings, stages: list[Stage], before: EvalResult,
            after: EvalResult, *, sample: Stage, seconds: float) -> dict[str, Any]:
    by_id = {t.task_id: t.success_rate for t in before.tasks}
    pairs_before = [by_id[t.task_id] for t in after.tasks]
    mean, low, high = paired_bootstrap(pairs_before, [t.success_rate for t in after.tasks])
    figures = {
        "success_before": before.success, "success_after": after.success,
        "difference": mean, "difference_ci95": [low, high],
        "mean_score_before": before.mean_score, "mean_score_after": after.mean_score,
        "n_eval_tasks": len(after.tasks), "eval_samples": settings.eval_samples,
        "n_pairs": int(sample.info.get("n_pairs", 0)),
    }
    return {
        "env": settings.env, "options": settings.options, "engine": settings.engine,
        "eval_split": settings.eval_split, **figures,
        "stages": [{"name": s.name, "seconds": round(s.seconds, 1), "cached": s.cached,
                    "folder": s.folder} for s in stages],
        "seconds": round(seconds, 1),
        "by_env": {settings.env: {**figures, "options": settings.options}},
        "settings": json.loads(json.dumps(asdict(settings), default=str)),
        "trees": sample.info.get("db"),
        "look_at_trees": f"branchpoint serve --db {sample.info.get('db')} (the viewer at "
                         f"http://127.0.0.1:8000/); branchpoint stats --db "
                         f"{sample.info.get('db')}",
    }


def _plot(report: dict[str, Any], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5), dpi=100)
    values = [report["success_before"], report["success_after"]]
    low, high = report["difference_ci95"]
    ax.bar(["SFT", "SFT + DPO"], values, color=["#999999", "#3b7dd8"])
    # The interval of the difference, drawn from the SFT model's rate: where the DPO
    # model's rate may lie.
    top = report["success_before"] + high
    ax.errorbar([1], [report["success_after"]],
                yerr=[[report["success_after"] - (report["success_before"] + low)],
                      [top - report["success_after"]]],
                fmt="none", ecolor="black", capsize=6)
    for i, v in enumerate(values):
        ax.text(i, max(v, top if i == 1 else v) + 0.03, f"{v:.0%}", ha="center")
    ax.set_ylim(0, 1.15)
    split = report.get("eval_split", "heldout")
    ax.set_ylabel(f"{split} success ({report['eval_samples']} samples/task, T=0.7)")
    ax.set_title(f"{report['env']}: {report['n_eval_tasks']} tasks, "
                 f"{report['n_pairs']} pairs")
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
