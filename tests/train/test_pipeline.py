"""The model demo, shortened: real TRL trainers, and (for the vLLM engine) the real vLLM
server and ``branchpoint sample``; every artifact is checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")

from branchpoint.train.grow import GrowSettings
from branchpoint.train.model import ModelSpec
from branchpoint.train.pipeline import DemoSettings, WindowSettings, run_pipeline
from branchpoint.train.trainers import DpoSettings, SftSettings

OPTIONS = {"difficulty": "easy", "max_steps": 8}
REPORT_FIELDS = {"success_before", "success_after", "difference_ci95", "n_eval_tasks",
                 "n_pairs", "stages", "by_env"}


def tiny(engine: str) -> DemoSettings:
    """Minutes, not tens of minutes: a 1-layer model, a few demonstrations, short
    episodes; a high SFT learning rate so the model emits commands (good and bad ones,
    which is what makes branches differ)."""
    return DemoSettings(
        env="fs", options=OPTIONS, engine=engine,
        model=ModelSpec(envs=("fs",), options={"fs": OPTIONS}, demo_tasks=30, vocab_size=500,
                        hidden_size=64, layers=1, heads=2, kv_heads=1,
                        intermediate_size=128),
        sft_demos=48, sft_mistakes=0.3,
        windows=WindowSettings(demos=8, turns=3, sft=SftSettings(epochs=1.0,
                                                                 learning_rate=1e-2,
                                                                 batch_size=8)),
        sft=SftSettings(epochs=10.0, learning_rate=1e-2, batch_size=8),
        sample_tasks=10, grow=GrowSettings(candidates=4, rollouts=1, branch_points=4),
        temperature=1.0, max_tokens=24, margin=0.1,
        dpo=DpoSettings(epochs=1.0, batch_size=8),
        eval_tasks=3, eval_samples=4)


def check_artifacts(out: Path, report: dict[str, object]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert set(report) >= REPORT_FIELDS
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["n_eval_tasks"] == 3 and report["eval_split"] == "heldout"
    low, high = report["difference_ci95"]  # type: ignore[misc]
    assert low <= report["difference"] <= high  # type: ignore[operator]
    names = [s["name"] for s in report["stages"]]  # type: ignore[attr-defined,index]
    assert names == ["build", "sft", "sample", "eval_before", "dpo", "eval_after"]
    assert report["n_pairs"] > 0  # type: ignore[operator]
    for stage in report["stages"]:  # type: ignore[attr-defined]
        if stage["name"] in ("sft", "dpo"):
            folder = Path(stage["folder"]) / "model"
            AutoModelForCausalLM.from_pretrained(str(folder))
            AutoTokenizer.from_pretrained(str(folder))
            config = json.loads((folder / "tokenizer_config.json").read_text())
            assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
        if stage["name"] == "sft":  # the step windows came first, and the whole episodes
            info = json.loads((Path(stage["folder"]) / "done.json").read_text())
            assert info["windows"] > 8 and Path(info["windows_model"]).is_dir()
            base = json.loads((folder / "branchpoint_train.json").read_text())["base"]
            assert base == info["windows_model"]
    for stage in report["stages"]:  # type: ignore[attr-defined]
        if stage["name"].startswith("eval"):
            rows = (Path(stage["folder"]) / "results.jsonl").read_text().splitlines()
            assert len(rows) == 3
            assert all(json.loads(r)["episodes"] == 4 for r in rows)
    pairs = next(Path(s["folder"]) / "pairs.jsonl" for s in report["stages"]  # type: ignore[attr-defined]
                 if s["name"] == "sample")
    for line in pairs.read_text().splitlines():
        row = json.loads(line)
        assert row["chosen"] != row["rejected"]


@pytest.mark.slow
def test_the_local_pipeline_runs_every_stage_and_reuses_them(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    report = run_pipeline(tiny("local"), out)
    check_artifacts(out, report)
    again = run_pipeline(tiny("local"), out)
    assert all(s["cached"] for s in again["stages"])
    assert again["success_after"] == report["success_after"]


@pytest.mark.slow
def test_the_vllm_pipeline_serves_samples_trains_and_evaluates(tmp_path: Path) -> None:
    from branchpoint.sampler.serve import default_venv

    if not (default_venv() / ".branchpoint-ready").exists():
        pytest.skip("the vLLM CPU venv is not built (scripts/ensure-vllm.sh, run by make test)")
    out = tmp_path / "demo"
    report = run_pipeline(tiny("vllm"), out)
    check_artifacts(out, report)
    assert report["engine"] == "vllm"
    sample = next(s for s in report["stages"] if s["name"] == "sample")
    db = Path(sample["folder"]) / "branchpoint.db"
    assert db.exists()
