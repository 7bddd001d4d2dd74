"""`demo --compare`, shortened and in-process: from the main demo's SFT model (its stages
reused, not redone), the 0/1-checker and trajectory-level arms are trained with real TRL and
evaluated; the report's compare block has every field, and a second run reuses it all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

from branchpoint.train.compare import ARMS, run_compare
from branchpoint.train.pipeline import run_pipeline
from branchpoint.train.trainers import read_jsonl
from tests.train.test_pipeline import tiny

MAIN = ["build", "sft", "sample", "eval_before", "dpo", "eval_after"]
ARM_FIELDS = {"success", "mean_score", "n_pairs", "completion_tokens", "trained",
              "difference_vs_sft", "difference_vs_sft_ci95"}
BLOCK_FIELDS = {"n_eval_tasks", "eval_samples", "success", "arms", "differences", "n_pairs",
                "completion_tokens", "budget", "stages", "trajectory_pairs"}
DIFFERENCES = {"step_vs_sft", "binary_vs_sft", "trajectory_vs_sft", "step_minus_trajectory",
               "step_minus_binary"}


def _is_fraction(x: Any) -> bool:
    return isinstance(x, float) and 0.0 <= x <= 1.0


def _check_difference(d: dict[str, Any], trained: bool) -> None:
    assert set(d) == {"difference", "ci95"}
    if not trained:
        assert d == {"difference": None, "ci95": None}
        return
    low, high = d["ci95"]
    assert -1.0 <= low <= d["difference"] <= high <= 1.0


def check_compare(out: Path, report: dict[str, Any]) -> None:
    block = report["compare"]
    assert json.loads((out / "report.json").read_text()) == report
    assert set(block) == BLOCK_FIELDS
    assert block["n_eval_tasks"] == report["n_eval_tasks"] == 3
    assert block["eval_samples"] == 4
    arms = block["arms"]
    assert set(arms) == set(ARMS) == set(block["success"])
    for arm in ARMS:
        assert set(arms[arm]) == ARM_FIELDS
        assert block["success"][arm] == arms[arm]["success"]
    # SFT and step-level are the main demo's own figures
    assert arms["sft"]["success"] == report["success_before"]
    assert arms["step"]["success"] == report["success_after"]
    assert arms["step"]["difference_vs_sft"] == pytest.approx(report["difference"])
    assert arms["step"]["difference_vs_sft_ci95"] == report["difference_ci95"]
    assert arms["step"]["n_pairs"] == report["n_pairs"] > 0
    assert arms["trajectory"]["n_pairs"] > 0, "episodes of a weak model differ in score"
    for arm in ARMS:
        a = arms[arm]
        if a["trained"]:
            assert _is_fraction(a["success"]) and _is_fraction(a["mean_score"])
        else:
            assert arm == "binary" and a["n_pairs"] == 0 and a["success"] is None
        if arm != "sft":
            assert a["n_pairs"] == block["n_pairs"][arm] >= 0
            assert a["completion_tokens"] == block["completion_tokens"][arm] > 0
            _check_difference({"difference": a["difference_vs_sft"],
                               "ci95": a["difference_vs_sft_ci95"]}, a["trained"])
    assert set(block["differences"]) == DIFFERENCES
    for key, d in block["differences"].items():
        arm = key.split("_")[0] if key.endswith("_vs_sft") else key.rsplit("_", 1)[1]
        _check_difference(d, arms[arm]["trained"])
    if arms["binary"]["trained"]:
        assert block["differences"]["step_minus_binary"]["difference"] == pytest.approx(
            arms["step"]["success"] - arms["binary"]["success"])
    assert block["differences"]["step_minus_trajectory"]["difference"] == pytest.approx(
        arms["step"]["success"] - arms["trajectory"]["success"])
    check_budget_and_artifacts(block)


def check_budget_and_artifacts(block: dict[str, Any]) -> None:
    arms = block["arms"]
    # the same budget: both token counts, and rounds that land near the step-level one
    budget = block["budget"]
    step, traj = budget["step_tokens"], budget["trajectory_tokens"]
    assert step == arms["step"]["completion_tokens"] == arms["binary"]["completion_tokens"]
    assert traj == arms["trajectory"]["completion_tokens"]
    assert budget["ratio"] == pytest.approx(traj / step)
    assert budget["episodes"] == sum(budget["rounds"]) and budget["tasks"] == 10
    assert budget["rounds"][0] == 10 and all(0 < m <= 10 for m in budget["rounds"])
    per_episode = traj / budget["episodes"]
    assert step - traj < per_episode  # stopped within about half an episode
    assert traj - step < 10 * per_episode  # the last round overshot by less than a round
    names = [s["name"] for s in block["stages"]]
    expected = ["binary_pairs", *(["binary_dpo", "binary_eval_after"]
                                  if arms["binary"]["trained"] else []),
                "episodes", "trajectory_pairs", "trajectory_dpo", "trajectory_eval_after"]
    assert names == expected
    folders = {s["name"]: Path(s["folder"]) for s in block["stages"]}
    rows = read_jsonl(folders["trajectory_pairs"] / "pairs.jsonl")
    assert len(rows) == arms["trajectory"]["n_pairs"]
    for row in rows:
        assert row["chosen"][0]["role"] == row["chosen"][-1]["role"] == "assistant"
        assert row["chosen"] != row["rejected"]
    binary = read_jsonl(folders["binary_pairs"] / "pairs.jsonl")
    assert len(binary) == arms["binary"]["n_pairs"]
    for name in ("binary_eval_after", "trajectory_eval_after"):
        if name in folders:
            lines = (folders[name] / "results.jsonl").read_text().splitlines()
            assert len(lines) == 3
    for name in ("binary_dpo", "trajectory_dpo"):
        if name in folders:
            meta = json.loads((folders[name] / "model" / "branchpoint_train.json").read_text())
            assert meta["kind"] == "dpo"
            assert meta["pairs"] == arms[name.split("_")[0]]["n_pairs"]
            assert meta["learning_rate"] == tiny("local").dpo.learning_rate


@pytest.mark.slow
def test_compare_reuses_the_demo_and_reports_every_arm(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    settings = tiny("local")
    main = run_pipeline(settings, out)
    report = run_compare(settings, out)
    assert [s["name"] for s in report["stages"]] == MAIN
    assert all(s["cached"] for s in report["stages"]), "the main demo's stages are reused"
    assert report["success_after"] == main["success_after"]
    assert not any(s["cached"] for s in report["compare"]["stages"])
    check_compare(out, report)
    again = run_compare(settings, out)
    assert all(s["cached"] for s in again["compare"]["stages"])
    assert again["compare"]["arms"] == report["compare"]["arms"]
    check_compare(out, again)
