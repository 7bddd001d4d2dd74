"""The training commands: they stop at once without the train extra, refuse bad options
before any work, and `train sft` / `train dpo` run real TRL on small inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from branchpoint.cli.main import app
from branchpoint.cli.train import parse_options

runner = CliRunner()


@pytest.mark.parametrize("argv", [
    ["model", "build", "out"],
    ["train", "sft", "m", "out"],
    ["train", "dpo", "m", "p.jsonl", "out"],
    ["eval", "--model", "m", "--base-url", "http://127.0.0.1:1/v1"],
    ["demo"],
])
def test_without_the_train_extra_each_command_stops_with_the_install_command(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str]) -> None:
    from branchpoint.train import deps

    monkeypatch.setattr(deps, "missing_train_modules", lambda: ["trl"])
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, argv)
    assert result.exit_code == 1
    assert "pip install" in result.output and "train" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_environment_options_parse_as_json_and_per_environment() -> None:
    assert parse_options(["difficulty=easy", "max_steps=12", "shop:backend=memory"],
                         ["fs", "shop"]) == {
        "fs": {"difficulty": "easy", "max_steps": 12},
        "shop": {"difficulty": "easy", "max_steps": 12, "backend": "memory"}}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["difficulty"], ["fs"])
    with pytest.raises(ValueError, match="not among"):
        parse_options(["web:x=1"], ["fs"])


def test_an_unknown_loss_type_is_refused_before_any_work(tmp_path: Path) -> None:
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("")
    result = runner.invoke(app, ["train", "dpo", "m", str(pairs), str(tmp_path / "out"),
                                 "--loss-type", "nonsense"])
    assert result.exit_code == 1
    assert "unknown --loss-type nonsense" in result.output
    assert not (tmp_path / "out").exists()


def test_eval_needs_an_endpoint_or_local(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--model", "m"])
    assert result.exit_code == 1
    assert "--base-url" in result.output


def test_eval_reports_an_unreachable_endpoint_clearly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--model", "m", "--base-url",
                                 "http://127.0.0.1:9/v1", "--out", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 1
    assert "cannot reach" in result.output
    assert not (tmp_path / "r.jsonl").exists()


def tiny_model(tmp_path: Path, demo_tasks: int) -> Path:
    """`model build` of a 1-layer model in seconds, at TMP_PATH/base."""
    base = tmp_path / "base"
    built = runner.invoke(app, ["model", "build", str(base), "--env", "fs", "--option",
                                "difficulty=easy", "--demo-tasks", str(demo_tasks),
                                "--vocab-size", "400", "--hidden-size", "32", "--layers",
                                "1", "--heads", "2", "--kv-heads", "1",
                                "--intermediate-size", "64"])
    assert built.exit_code == 0, built.output
    return base


@pytest.mark.slow
def test_sft_then_dpo_on_exported_pairs_run_through_trl(tmp_path: Path) -> None:
    from branchpoint.sampler.demo import DemoConfig, grow_tree
    from branchpoint.store.exports import ExportOptions, export_lines
    from branchpoint.store.log import open_log

    base = tiny_model(tmp_path, demo_tasks=20)
    sft = runner.invoke(app, ["train", "sft", str(base), str(tmp_path / "sft"), "--env", "fs",
                              "--option", "difficulty=easy", "--demos", "8", "--epochs", "1",
                              "--batch-size", "4"])
    assert sft.exit_code == 0, sft.output
    assert "saved" in sft.output

    import asyncio

    async def pairs() -> list[bytes]:
        log = await open_log("memory://")
        try:
            events, _ = grow_tree("fs", 2, DemoConfig(envs=("fs",), tasks=1, mistakes=0.5))
            await log.append(events)
            return [x async for x in export_lines(log, "dpo", ExportOptions())]
        finally:
            await log.close()

    lines = asyncio.run(pairs())
    assert lines
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"".join(lines))
    dpo = runner.invoke(app, ["train", "dpo", str(tmp_path / "sft"), str(path),
                              str(tmp_path / "dpo"), "--epochs", "1", "--batch-size", "2",
                              "--loss-type", "sigmoid", "--loss-type", "sft"])
    assert dpo.exit_code == 0, dpo.output
    meta = json.loads((tmp_path / "dpo" / "branchpoint_train.json").read_text())
    assert meta["kind"] == "dpo" and meta["pairs"] == len(lines)
    assert meta["loss_type"] == ["sigmoid", "sft"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(tmp_path / "dpo"))


@pytest.mark.slow
def test_sft_on_step_windows_of_a_data_file(tmp_path: Path) -> None:
    from branchpoint.train.episodes import demonstrations

    base = tiny_model(tmp_path, demo_tasks=10)
    data = tmp_path / "demos.jsonl"
    episodes = list(demonstrations("fs", 2, options={"difficulty": "easy"}))
    data.write_text("".join(json.dumps({"messages": e.messages}) + "\n" for e in episodes))
    sft = runner.invoke(app, ["train", "sft", str(base), str(tmp_path / "sft"), "--data",
                              str(data), "--windows", "2", "--epochs", "1"])
    assert sft.exit_code == 0, sft.output
    assert f"on {sum(e.steps for e in episodes)} conversations" in sft.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": episodes[0].messages}) + "\n"
                   + json.dumps({"prompt": "no messages"}) + "\n")
    refused = runner.invoke(app, ["train", "sft", str(base), str(tmp_path / "x"), "--data",
                                  str(bad), "--windows", "2"])
    assert refused.exit_code == 1
    assert "conversation 2 has no `messages` list" in refused.output
    assert not (tmp_path / "x").exists()


def test_the_model_demo_refuses_a_bad_engine_or_split_before_any_work(tmp_path: Path) -> None:
    for argv in (["--engine", "gpu"], ["--eval-split", "train"], ["--env", "fs", "--env",
                                                                   "shop"]):
        result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), *argv])
        assert result.exit_code == 1, argv
        assert not (tmp_path / "d").exists()
