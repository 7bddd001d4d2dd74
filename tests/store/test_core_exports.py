"""Export formats: golden files, loading with ``datasets``, streaming and options."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from branchpoint.store.exports import (
    FORMATS,
    TRAINING_FORMATS,
    ExportOptions,
    compute_stats,
    export_lines,
)
from branchpoint.store.log import MemoryEventLog
from tests.store.builders import TOOLS, TreeBuilder, action, call, memory_log, two_step_tree

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("BRANCHPOINT_UPDATE_GOLDEN") == "1"


def scenario() -> list[TreeBuilder]:
    """Three trees over two envs: t1 and t2 share a task (fs/1) and have tools; t3 (shop)
    is text-only, unfinished, judged as well as checked, with a tie and an identical pair."""
    t1 = two_step_tree("t1", tools=TOOLS)
    t2 = TreeBuilder("t2", tools=TOOLS).root()
    t2.step("x", "r", action(None, call("read", {"path": "data.txt"}, "k1")),
            observation=[{"role": "tool", "tool_call_id": "k1", "content": "42"}])
    t2.step("x1", "x", action("the answer is 42"), observation="correct", done=True)
    t2.score("x1", 0.7)
    t2.step("y", "r", action(None, call("read", {"path": "junk.txt"}, "k2")),
            observation=[{"role": "tool", "tool_call_id": "k2", "content": "junk"}], done=True)
    t2.score("y", 0.2).close("done")
    t3 = TreeBuilder("t3", env="shop", task_id="s-1").root(user="buy milk", system=None)
    t3.step("p", "r", action("search milk"), observation="3 results")
    t3.step("q", "r", action("search bread"), observation="2 results")
    t3.step("p1", "p", action("add milk")).score("p1", 1.0).score("p1", 0.6, "judge")
    t3.step("p2", "p", action("add milk")).score("p2", 0.3).score("p2", 0.2, "judge")
    t3.step("q1", "q", action("add bread")).score("q1", 0.4).score("q1", 0.0, "judge")
    t3.step("q2", "q", action("give up")).score("q2", 0.4).score("q2", 0.2, "judge")
    return [t1, t2, t3]


async def lines(log: Any, fmt: str, **opts: Any) -> bytes:
    return b"".join([line async for line in export_lines(log, fmt, ExportOptions(**opts))])


CASES = {
    "dpo": {"with_metadata": True},
    "steps": {},
    "sft": {"min_score": 0.7},
    "trajectory-pairs": {"with_metadata": True},
    "stepwise": {"label_threshold": 0.5},
}  # the options of each training format (``events`` takes none)


def _has_sql() -> bool:
    try:
        import branchpoint.store.sql  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS = ["memory", pytest.param("sqlite", marks=pytest.mark.skipif(
    not _has_sql(), reason="branchpoint.store.sql not written yet"))]


async def open_scenario(backend: str, tmp_path: Path) -> Any:
    if backend == "memory":
        return await memory_log(*scenario())
    from branchpoint.store.log import open_log

    log = await open_log(f"sqlite:///{tmp_path / 'golden.db'}")
    for b in scenario():
        await log.append(b.events)
    return log


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
async def test_each_format_matches_its_golden_file(fmt: str, backend: str, tmp_path: Path):
    log = await open_scenario(backend, tmp_path)
    try:
        got = await lines(log, fmt, **CASES.get(fmt, {}))
    finally:
        await log.close()
    path = GOLDEN / f"{fmt}.jsonl"
    if UPDATE and backend == "memory":
        path.write_bytes(got)
    assert got, f"{fmt} exported nothing from the scenario"
    assert got == path.read_bytes()


@pytest.mark.parametrize("fmt", TRAINING_FORMATS)
async def test_each_format_loads_with_datasets(fmt: str, tmp_path: Path):
    from datasets import load_dataset

    log = await memory_log(*scenario())
    data = await lines(log, fmt, **CASES[fmt])
    f = tmp_path / f"{fmt}.jsonl"
    f.write_bytes(data)
    ds = load_dataset("json", data_files=str(f), split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == data.count(b"\n")
    expected = {
        "dpo": {"prompt", "chosen", "rejected", "tools", "metadata"},
        "steps": {"tree_id", "node_id", "parent_id", "depth", "prompt", "action",
                  "observation", "score", "value", "leaves", "se"},
        "sft": {"messages", "tools"},
        "trajectory-pairs": {"prompt", "chosen", "rejected", "tools", "metadata"},
        "stepwise": {"prompt", "completions", "labels"},
    }[fmt]
    assert set(ds.column_names) == expected


async def test_dpo_prompt_ends_with_the_branching_nodes_observation():
    log = await memory_log(two_step_tree(tools=TOOLS))
    rows = [json.loads(x) for x in (await lines(log, "dpo")).splitlines()]
    deep = rows[1]
    assert deep["prompt"][-1] == {"content": "see data.txt", "role": "tool",
                                  "tool_call_id": "c1"}
    assert deep["chosen"][0]["tool_calls"][0]["function"]["arguments"] == {"path": "data.txt"}
    assert deep["rejected"][0]["tool_calls"][0]["function"]["arguments"] == {"path": "nope.txt"}
    assert deep["tools"] == TOOLS
    assert "metadata" not in deep


async def test_tool_arguments_stay_strings_when_asked():
    log = await memory_log(two_step_tree())
    rows = [json.loads(x) for x in (await lines(log, "dpo", tool_arguments="string"))
            .splitlines()]
    assert rows[1]["chosen"][0]["tool_calls"][0]["function"]["arguments"] == (
        '{"path": "data.txt"}')
    assert "tools" not in rows[1]


async def test_arguments_that_are_not_a_json_object_stay_strings():
    b = TreeBuilder().root()
    b.step("a", "r", action(None, call("f", "{not json"))).score("a", 1.0)
    b.step("b", "r", action(None, call("f", "[1, 2]"))).score("b", 0.0)
    rows = [json.loads(x) for x in (await lines(await memory_log(b), "dpo")).splitlines()]
    assert rows[0]["chosen"][0]["tool_calls"][0]["function"]["arguments"] == "{not json"
    assert rows[0]["rejected"][0]["tool_calls"][0]["function"]["arguments"] == "[1, 2]"


async def test_sft_keeps_paths_whose_leaf_reaches_the_min_score_and_ends_on_the_assistant():
    log = await memory_log(*scenario())
    rows = [json.loads(x) for x in (await lines(log, "sft")).splitlines()]
    assert len(rows) == 2  # t1/a1 and t3/p1: a checker score outranks a later judge
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert len((await lines(log, "sft", min_score=0.0)).splitlines()) == 9
    assert len((await lines(log, "sft", sources=("checker",))).splitlines()) == 2
    assert len((await lines(log, "sft", sources=("judge",))).splitlines()) == 0


async def test_sft_writes_no_row_for_a_scored_root_alone():
    alone = TreeBuilder("alone").root().score("r", 1.0).close()
    log = await memory_log(alone)
    assert await lines(log, "sft", min_score=0.0) == b""
    for fmt in ("dpo", "trajectory-pairs", "stepwise"):
        assert await lines(log, fmt) == b"", fmt


async def test_stepwise_labels_follow_node_values_and_the_threshold():
    log = await memory_log(two_step_tree())
    rows = [json.loads(x) for x in (await lines(log, "stepwise")).splitlines()]
    assert [r["labels"] for r in rows] == [[False], [True, True], [True, False]]
    strict = [json.loads(x) for x in (await lines(log, "stepwise", label_threshold=0.6))
              .splitlines()]
    assert strict[1]["labels"] == [False, True]
    assert rows[1]["completions"][1].startswith("tool: see data.txt\n\nassistant:")


async def test_trajectory_pairs_rank_episodes_across_the_trees_of_a_task():
    log = await memory_log(*scenario())
    rows = [json.loads(x) for x in (await lines(log, "trajectory-pairs", with_metadata=True))
            .splitlines()]
    fs = [r["metadata"] for r in rows if r["metadata"]["env"] == "fs"]
    # fs/1 episodes: t1/a1 1.0, t2/x1 0.7, t2/y 0.2, t1/b 0.0, t1/a2 0.0
    assert [(m["chosen_node_id"], m["rejected_node_id"]) for m in fs] == [
        ("a1", "b"), ("x1", "a2")]
    assert fs[1]["chosen_tree_id"] == "t2" and fs[1]["rejected_tree_id"] == "t1"


async def test_the_env_filter_keeps_one_environment():
    log = await memory_log(*scenario())
    rows = [json.loads(x) for x in (await lines(log, "steps", env="shop")).splitlines()]
    assert {r["tree_id"] for r in rows} == {"t3"}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_exports_select_trees_with_the_stores_tree_filter(backend: str,
                                                                tmp_path: Path):
    from branchpoint.store.log import TreeFilter
    from branchpoint.store.splits import split_of

    log = await open_scenario(backend, tmp_path)
    try:
        async def trees(fmt: str, where: TreeFilter, **opts: Any) -> set[str]:
            data = await lines(log, fmt, where=where, with_metadata=True, **opts)
            rows = [json.loads(x) for x in data.splitlines()]
            return {r.get("tree_id") or r["metadata"]["tree_id"] for r in rows}

        assert await trees("dpo", TreeFilter(tree_id="t2")) == {"t2"}
        assert await trees("dpo", TreeFilter(tree_id="t2", env="shop")) == set()
        # t1 and t2 are task 1 of fs (an integer id: its split is split_of(1)); t3's
        # task id is a string, so t3 belongs to no split
        fs_split = split_of(1)
        assert await trees("dpo", TreeFilter(split=fs_split)) == {"t1", "t2"}
        other = next(s for s in ("train", "validation", "heldout") if s != fs_split)
        assert await trees("dpo", TreeFilter(split=other)) == set()
        assert await lines(log, "trajectory-pairs", where=TreeFilter(split=other)) == b""
        with pytest.raises(ValueError, match="two environments"):
            await lines(log, "dpo", where=TreeFilter(env="fs"), env="shop")
    finally:
        await log.close()


async def test_judge_weight_and_sources_change_which_pairs_are_made():
    log = await memory_log(*scenario())
    stats = await compute_stats(log, ExportOptions(env="shop"))
    # by precedence the checker counts although the judge came later: p1 1.0 / p2 0.3
    # (identical actions), q1 0.4 = q2 0.4 (tie), p 0.65 against q 0.4 (a pair)
    assert stats["dropped"] == {"tie": 1, "under_margin": 0, "identical": 1,
                                "low_confidence": 0}
    assert stats["pairs"] == 1
    checker = await compute_stats(log, ExportOptions(env="shop", sources=("checker",)))
    assert checker == stats
    # the judge alone: p1 0.6 / p2 0.2 (identical), q1 0.0 / q2 0.2, p 0.4 / q 0.1
    judge = await compute_stats(log, ExportOptions(env="shop", sources=("judge",)))
    assert judge["dropped"]["identical"] == 1 and judge["pairs"] == 2
    blended = await compute_stats(log, ExportOptions(env="shop", judge_weight=0.5))
    assert blended["pairs"] + sum(blended["dropped"].values()) == blended["branching_points"]


async def test_stats_count_every_tree_and_split_by_env():
    log = await memory_log(*scenario())
    stats = await compute_stats(log)
    assert stats["trees"] == 3 and stats["nodes"] == 5 + 4 + 7
    assert set(stats["by_env"]) == {"fs", "shop"}
    assert stats["by_env"]["fs"]["trees"] == 2
    for key in ("nodes", "branching_points", "pairs"):
        assert stats[key] == sum(e[key] for e in stats["by_env"].values())
    assert stats["pairs"] == len((await lines(log, "dpo")).splitlines())


class CountingLog(MemoryEventLog):
    """Records how the export reads the log."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def read_tree(self, tree_id: str):  # type: ignore[override]
        self.reads.append(tree_id)
        return await super().read_tree(tree_id)

    async def read_after(self, seq: int = 0, *, limit: int = 1000):  # type: ignore[override]
        raise AssertionError("exports read tree by tree, not the whole log")


async def test_exports_stream_tree_by_tree_and_yield_before_reading_the_next():
    log = CountingLog()
    for b in scenario():
        await log.append(b.events)
    gen = export_lines(log, "dpo")
    first = await anext(gen)
    assert first.endswith(b"\n") and log.reads == ["t1"]
    rest = [line async for line in gen]
    assert log.reads == ["t1", "t2", "t3"] and rest


async def test_an_export_is_byte_identical_run_after_run():
    log = await memory_log(*scenario())
    for fmt in FORMATS:
        assert await lines(log, fmt) == await lines(log, fmt)


async def test_an_unknown_format_or_bad_option_is_refused_before_any_line():
    log = await memory_log(two_step_tree())
    with pytest.raises(ValueError, match="unknown export format"):
        await lines(log, "csv")
    with pytest.raises(ValueError, match="margin"):
        await lines(log, "dpo", margin=-1.0)
    with pytest.raises(ValueError, match="sources"):
        await lines(log, "dpo", sources=())


CHATML = (
    "{%- if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.content %}{{ m.content }}{% endif %}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>"
    "{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}"
    "</tool_call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(texts: list[str]) -> Any:
    """A byte-level BPE trained on ``texts``, with a ChatML template that renders tools."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token=None,
                                   chat_template=CHATML, clean_up_tokenization_spaces=False)


@pytest.mark.slow
async def test_trl_dpo_trains_a_step_on_exported_rows(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture):
    import copy

    import torch
    from datasets import load_dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import DPOConfig, DPOTrainer

    log = await memory_log(*scenario())
    data = await lines(log, "dpo")
    f = tmp_path / "dpo.jsonl"
    f.write_bytes(data)
    ds = load_dataset("json", data_files=str(f), split="train", cache_dir=str(tmp_path / "c"))
    tok = tiny_tokenizer([x.decode() for x in data.splitlines()])
    rendered = tok.apply_chat_template(ds[0]["prompt"] + ds[0]["chosen"], tools=ds[0]["tools"],
                                       tokenize=False)
    assert '"arguments": {"path": "notes.txt"}' in rendered
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2,
                     max_steps=1, learning_rate=1e-3, bf16=False, use_cpu=True,
                     gradient_checkpointing=False, report_to=[], save_strategy="no",
                     logging_steps=1, max_length=1024, dataset_num_proc=None)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                         train_dataset=ds, processing_class=tok)
    result = trainer.train()
    assert "not a prefix" not in caplog.text  # prompt tokens line up with prompt + chosen
    assert result.global_step == 1
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


class LabelledTree(TreeBuilder):
    """Steps that say whether the policy meant them as mistakes, and how often it drew them."""

    def labelled(self, node_id: str, parent: str, mistake: bool | None, *,
                 count: int | None = None) -> LabelledTree:
        from branchpoint.store.events import ActionExecuted, NodeCreated

        produced_by: dict[str, Any] = {"policy": "expert"}
        if mistake is not None:
            produced_by["mistake"] = mistake
        if count is not None:
            produced_by["count"] = count
        self._add(NodeCreated(node_id=node_id, parent_id=parent, action=action(node_id),
                              produced_by=produced_by))
        self._add(ActionExecuted(node_id=node_id, observation=[], done=True))
        return self


async def test_stats_grade_pairs_against_the_mistake_labels_per_env_and_in_total():
    right = LabelledTree("a", env="fs").root()
    right.labelled("good", "r", False).score("good", 1.0)
    right.labelled("bad", "r", True).score("bad", 0.0)
    wrong = LabelledTree("b", env="shop").root()
    wrong.labelled("lucky", "r", True).score("lucky", 0.9)
    wrong.labelled("unlucky", "r", False).score("unlucky", 0.2)
    wrong.labelled("x", "r", False).score("x", 0.5)
    both = LabelledTree("c", env="shop").root()  # two non-mistakes: not decided
    both.labelled("p", "r", False).score("p", 1.0)
    both.labelled("q", "r", False).score("q", 0.0)
    plain = two_step_tree("d")  # no labels at all
    stats = await compute_stats(await memory_log(right, wrong, both, plain))
    assert (stats["pairs_decided"], stats["pairs_correct"]) == (2, 1)
    assert stats["pair_precision"] == 0.5
    assert stats["by_env"]["shop"]["pair_precision"] == 0.0
    assert stats["by_env"]["fs"]["pairs_decided"] == 1
    unlabelled = await compute_stats(await memory_log(plain))
    assert "pair_precision" not in unlabelled
    rows = [json.loads(x) for x in (await lines(await memory_log(right), "dpo",
                                                with_metadata=True)).splitlines()]
    assert rows[0]["metadata"]["chosen_mistake"] is False
    assert rows[0]["metadata"]["rejected_mistake"] is True


async def test_a_childs_draw_count_weights_the_exported_values():
    b = LabelledTree("w", env="fs").root()
    b.labelled("often", "r", None, count=3).score("often", 1.0)
    b.labelled("once", "r", None).score("once", 0.0)
    rows = {r["node_id"]: r for r in map(json.loads, (await lines(await memory_log(b),
                                                                  "steps")).splitlines())}
    assert rows["often"]["leaves"] == 1 and rows["often"]["se"] == 0.5
    stats = await compute_stats(await memory_log(b), ExportOptions(value="mean"))
    assert stats["pairs"] == 1
    view_value = (3 * 1.0 + 1 * 0.0) / 4
    from branchpoint.store.exports import TreeView

    view = TreeView("w", b.events, ExportOptions())
    assert view.values["r"] == view_value
