"""Pair yield: usable DPO pairs per 1,000 completion tokens, with partial credit and with
``--binary``, in both environments (``fs`` and ``shop``).

Usable pairs are what ``branchpoint export dpo`` writes with its default options (margin
0.1, mean values); ``--binary`` counts a checker score as 1.0 when it is 1.0 and 0.0
otherwise, what a 0/1 checker would have said. Both figures come from the same sampled
trees, scored both ways, so they are at the same token budget; the ratio binary/partial
says what share of the pairs partial credit finds a 0/1 checker would find too.

The policy must sometimes succeed, or ``--binary`` finds nothing by construction:

- ``--model PATH``: a model folder (a fine-tuned one) served by vLLM;
- without it, the bench makes one on a bare machine: ``branchpoint model build`` (both
  environments' language, 2 layers) and a brief ``branchpoint train sft`` (100 epochs at
  3e-3) on the scripted experts' demonstrations of the first ``--tasks`` (4) train tasks of
  each environment, the very tasks it then samples: a policy that has half learned those
  tasks, not one that generalises (that is the demo's business).

The model is served by vLLM (``ModelServer``, as ``branchpoint serve-model``: the CPU
build on a machine without a GPU). For each temperature (``--temperatures``, default 0.7,
where this policy mostly succeeds, and 1.0, where it mostly fails) and environment,
``--trees-per-task`` runs (seeds 0, 1, ...) grow ``branch-rollout`` trees of the tasks
(``--branching`` 4 candidates at each of ``--depth`` 4 steps along one line drawn by the
policy, every other candidate rolled out to the end ``--rollouts`` 2 times: the demo's
shape) through the sampler into a SQLite store; completion tokens are the usage the
server reported for every request. The counts are cross-checked against ``branchpoint
export dpo [--binary]`` on the same store, which also says how many pairs are distinct
(trees of one task can meet the same branching point with the same two steps).

Run: ``nice .venv/bin/python bench/bench_pair_yield.py`` (about 10 minutes on 2 cores,
model building, training and vLLM's start included). Exits 1 when the policy never
succeeded in an environment at a temperature (no figure with ``--binary`` would mean
anything there) or when the export disagrees with the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from branchpoint.sampler.envs.base import tasks_in_split
from branchpoint.sampler.grow import RunStats, SampleConfig, sample_run
from branchpoint.sampler.policy import ChatPolicy, Sampling
from branchpoint.sampler.serve import ModelServer, ServeConfig
from branchpoint.store.exports import ExportOptions, compute_stats
from branchpoint.store.log import open_log

ENVS = ("fs", "shop")
OPTIONS: dict[str, dict[str, Any]] = {"fs": {"difficulty": "easy", "max_steps": 12},
                                      "shop": {"difficulty": "easy", "max_steps": 12}}


def _cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("branchpoint")), *args]


def _run(cmd: list[str], label: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def make_policy(folder: Path, args: argparse.Namespace) -> Path:
    """Build a small model and fine-tune it briefly on expert demonstrations of the tasks
    the bench samples; returns the fine-tuned folder."""
    envs = [a for env in ENVS for a in ("--env", env)]
    options = [a for env in ENVS for k, v in OPTIONS[env].items()
               for a in ("--option", f"{env}:{k}={v}")]
    base, sft = folder / "base", folder / "policy"
    seconds = _run(_cli("model", "build", str(base), *envs, *options, "--demo-tasks",
                        "100", "--layers", str(args.layers)), "model build")
    print(f"model build: {seconds:.0f} s", flush=True)
    seconds = _run(_cli("train", "sft", str(base), str(sft), *envs, *options, "--demos",
                        str(args.tasks), "--mistakes", str(args.mistakes), "--epochs",
                        str(args.epochs), "--lr", str(args.lr), "--batch-size", "8"),
                   "train sft")
    print(f"train sft: {seconds:.0f} s ({args.tasks} demonstrations per environment, "
          f"{args.epochs:g} epochs)", flush=True)
    return sft


async def sample(url: str, name: str, env: str, db: str, temperature: float,  # noqa: PLR0917
                 args: argparse.Namespace) -> RunStats:
    """``--trees-per-task`` runs (seeds 0, 1, ...) over the tasks, side by side, each tree
    with up to 4 requests in flight; returns their stats summed."""
    log = await open_log(db)
    total = RunStats()

    async def one(i: int) -> None:
        cfg = SampleConfig(env=env, tasks=tasks_in_split("train", args.tasks), model=name,
                           strategy="branch-rollout", branching=args.branching,
                           depth=args.depth, rollouts=args.rollouts, concurrency=4,
                           run=f"yield{i}", options=OPTIONS[env], action_format="text",
                           sampling=Sampling(temperature=temperature, max_tokens=96, seed=i))
        policy = ChatPolicy(url, name, cfg.sampling)
        stats = RunStats()
        try:
            await sample_run(cfg, policy, log, use_tools=False, stats=stats)
        finally:
            await policy.close()
        for key in ("trees_done", "nodes", "requests", "completion_tokens"):
            setattr(total, key, getattr(total, key) + getattr(stats, key))

    try:
        await asyncio.gather(*(one(i) for i in range(args.trees_per_task)))
    finally:
        await log.close()
    return total


async def score(db: str, env: str) -> dict[str, Any]:
    """Pairs both ways over the same trees, and how often leaves succeeded."""
    log = await open_log(db)
    try:
        partial = await compute_stats(log, ExportOptions(env=env))
        binary = await compute_stats(log, ExportOptions(env=env, binary=True))
        leaves = successes = 0
        total = 0.0
        for t in await log.list_trees():
            events = await log.read_tree(t.tree_id)
            scored = {e.payload.node_id: e.payload.value for e in events
                      if e.type == "score_assigned" and e.payload.source == "checker"}
            leaves += len(scored)
            successes += sum(v >= 1.0 for v in scored.values())
            total += sum(scored.values())
    finally:
        await log.close()
    return {"partial": partial, "binary": binary, "leaves": leaves,
            "successes": successes, "mean_leaf_score": total / leaves if leaves else 0.0}


def exported(db: str, env: str, *binary: str) -> tuple[int, int]:
    """Lines ``branchpoint export dpo`` writes, and how many of them are distinct (trees
    of one task can meet the same branching point with the same two steps)."""
    done = subprocess.run(_cli("export", "dpo", "--db", db, "--env", env, *binary),
                          capture_output=True, text=True, check=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return len(lines), len(set(lines))


def report(label: str, stats: RunStats, seconds: float, f: dict[str, Any],
           checked: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    """Print one environment's figures at one temperature; False when they are unusable."""
    tokens = stats.completion_tokens
    p, b = int(f["partial"]["pairs"]), int(f["binary"]["pairs"])
    per_k = 1000.0 / tokens if tokens else 0.0
    ratio = f"{b / p:.2f}" if p else "n/a"
    print(f"{label}: {stats.trees_done} trees, {stats.nodes} nodes, {f['leaves']} scored "
          f"leaves ({f['successes']} succeeded, mean score {f['mean_leaf_score']:.3f}), "
          f"{tokens} completion tokens in {seconds:.0f} s")
    print(f"  partial credit: {p} pairs, {p * per_k:.2f} per 1,000 tokens ({checked[0][1]} "
          f"distinct; {f['partial']['branching_points']} branching points, dropped "
          f"{f['partial']['dropped']})")
    print(f"  --binary:       {b} pairs, {b * per_k:.2f} per 1,000 tokens ({checked[1][1]} "
          f"distinct; dropped {f['binary']['dropped']})")
    print(f"  ratio binary/partial: {ratio}")
    ok = True
    if (checked[0][0], checked[1][0]) != (p, b):
        print(f"  export dpo wrote {checked[0][0]} and {checked[1][0]} (--binary) lines: "
              "not the counts above")
        ok = False
    if not f["successes"]:
        print("  the policy never succeeded here: --binary can find nothing")
        ok = False
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a model folder vLLM serves (default: "
                        "build and fine-tune a small one)")
    parser.add_argument("--tasks", type=int, default=4, help="train tasks per "
                        "environment (also the demonstrations the default policy learns)")
    parser.add_argument("--trees-per-task", type=int, default=10, help="runs with seeds "
                        "0, 1, ... over the tasks")
    parser.add_argument("--branching", type=int, default=4)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--temperatures", default="0.7,1.0", help="comma-separated; the "
                        "trees of each are scored apart")
    parser.add_argument("--epochs", type=float, default=100.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--mistakes", type=float, default=0.0)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the model and stores here")
    args = parser.parse_args()
    temperatures = [float(t) for t in args.temperatures.split(",")]
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        folder = args.model or make_policy(work, args)
        server = ModelServer(ServeConfig(model=str(folder), port=0, max_model_len=2048),
                             log_path=work / "vllm.log")
        t0 = time.perf_counter()
        url = server.start()
        print(f"vLLM started in {time.perf_counter() - t0:.0f} s", flush=True)
        try:
            for temperature in temperatures:
                for env in ENVS:
                    db = f"sqlite:///{work / f'{env}-t{temperature:g}.db'}"
                    t0 = time.perf_counter()
                    stats = asyncio.run(sample(url, folder.name, env, db, temperature, args))
                    seconds = time.perf_counter() - t0
                    print(f"sampled {env} at T={temperature:g}: {seconds:.0f} s", flush=True)
                    checked = (exported(db, env), exported(db, env, "--binary"))
                    rows.append((f"{env}, T={temperature:g}", stats, seconds,
                                 asyncio.run(score(db, env)), checked))
        finally:
            server.stop()
    print(f"\npair yield: branch-rollout N={args.branching} D={args.depth} "
          f"K={args.rollouts}, {args.tasks} train tasks x {args.trees_per_task} trees per "
          f"environment and temperature; usable pairs as `export dpo` writes them by "
          f"default (margin 0.1), with partial credit and with --binary, from the same trees")
    ok = [report(*row) for row in rows]
    print(f"wall time {time.perf_counter() - started:.0f} s")
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
