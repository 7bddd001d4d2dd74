"""Thin wrappers around TRL's SFTTrainer and DPOTrainer with settings that work on a CPU.

TRL's configs default to ``bf16=True`` and ``gradient_checkpointing=True``; on a machine
without a GPU both are turned off and ``use_cpu`` is on (on a GPU the defaults stand).
Supervised fine-tuning trains on the assistant turns only (``assistant_only_loss``, which
needs the ``{% generation %}`` blocks that ``model build`` writes into the chat template).
DPO starts from a model folder and reads TRL's conversational preference format, as
``branchpoint export dpo`` writes it (``prompt``, ``chosen``, ``rejected``, ``tools``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from branchpoint.train.deps import require_train

__all__ = ["DpoSettings", "SftSettings", "read_jsonl", "train_dpo", "train_sft"]


@dataclass(frozen=True)
class SftSettings:
    epochs: float = 8.0
    learning_rate: float = 1e-3
    batch_size: int = 16
    max_length: int = 1024
    warmup_ratio: float = 0.05
    seed: int = 0
    lora: bool = False
    # Loss on the assistant turns only (what a user fine-tuning an instruct model wants).
    # False trains on every token, observations included: a model built from scratch
    # learns to read and copy from its context far sooner that way.
    assistant_only: bool = True


@dataclass(frozen=True)
class DpoSettings:
    epochs: float = 2.0
    learning_rate: float = 5e-5
    beta: float = 0.1
    loss_type: tuple[str, ...] = ("sigmoid", "sft")
    loss_weights: tuple[float, ...] | None = None
    batch_size: int = 16
    max_length: int = 1024
    seed: int = 0
    lora: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per non-blank line.

    Raises:
        ValueError: a line that is not a JSON object (its number is named).
    """
    rows: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            rows.append(row)
    return rows


def _cpu_args() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {}
    return {"bf16": False, "fp16": False, "gradient_checkpointing": False, "use_cpu": True}


def _common(out: Path, epochs: float, lr: float, batch: int, seed: int) -> dict[str, Any]:
    return {
        "output_dir": str(out / "checkpoints"), "num_train_epochs": epochs,
        "learning_rate": lr, "per_device_train_batch_size": batch, "seed": seed,
        "save_strategy": "no", "report_to": [], "logging_steps": 10,
        "lr_scheduler_type": "cosine", "dataloader_num_workers": 0,
        "disable_tqdm": True, **_cpu_args(),
    }


def _peft(enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from peft import LoraConfig
    except ImportError as exc:
        from branchpoint.store.errors import MissingDependency

        raise MissingDependency("--lora needs peft: pip install peft") from exc
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules="all-linear")


def _save(trainer: Any, tokenizer: Any, out: Path, meta: dict[str, Any]) -> Path:
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _keep_tokenizer_config(out)
    history = [r for r in trainer.state.log_history if "loss" in r or "train_loss" in r]
    (out / "branchpoint_train.json").write_text(
        json.dumps({**meta, "log": history}, indent=2, default=str) + "\n")
    return out


def _keep_tokenizer_config(out: Path) -> None:
    """Saving rewrites ``tokenizer_class``; older transformers (vLLM's) need the class name
    that ``model build`` wrote."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") in ("TokenizersBackend", "Qwen2Tokenizer"):
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _load(model: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(model), tokenizer


def train_sft(model: str, conversations: Sequence[dict[str, Any]], out: str | Path,
              settings: SftSettings | None = None,
              on_log: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Fine-tune ``model`` (a folder or hub name) on ``conversations`` (rows with
    ``messages``, optionally ``tools``), loss on the assistant turns only; save to ``out``.

    Raises:
        MissingDependency: the ``train`` extra (or peft, with LoRA) is missing.
        ValueError: no conversations.
    """
    require_train()
    if not conversations:
        raise ValueError("no conversations to train on")
    from datasets import Dataset
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    settings = settings or SftSettings()
    target = Path(out)
    net, tokenizer = _load(model)
    rows = [{"messages": c["messages"]} for c in conversations]
    config = SFTConfig(**_common(target, settings.epochs, settings.learning_rate,
                                 settings.batch_size, settings.seed),
                       assistant_only_loss=settings.assistant_only, max_length=settings.max_length,
                       warmup_steps=settings.warmup_ratio, dataset_num_proc=None)
    trainer = SFTTrainer(model=net, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=_peft(settings.lora),
                         callbacks=_callbacks(on_log))
    trainer.train()
    return _save(trainer, tokenizer, target, {"kind": "sft", "base": model,
                                              "examples": len(rows), **asdict(settings)})


def train_dpo(model: str, pairs: Sequence[dict[str, Any]], out: str | Path,
              settings: DpoSettings | None = None,
              on_log: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """DPO from ``model`` on ``pairs`` (TRL's preference rows: ``prompt``, ``chosen``,
    ``rejected``, optionally ``tools``); the reference model is ``model`` itself. Saves to
    ``out``.

    Raises:
        MissingDependency: the ``train`` extra (or peft, with LoRA) is missing.
        ValueError: no pairs, or a row without prompt, chosen and rejected.
    """
    require_train()
    if not pairs:
        raise ValueError("no preference pairs to train on")
    for i, row in enumerate(pairs, start=1):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise ValueError(f"pair {i} has no {', '.join(missing)}")
    from datasets import Dataset
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    settings = settings or DpoSettings()
    target = Path(out)
    net, tokenizer = _load(model)
    # The built-in environments' text actions need no tool schemas; a `tools` column is
    # kept when present so a template that renders tools sees them.
    keep = ("prompt", "chosen", "rejected", "tools")
    rows = [{k: (json.dumps(r[k]) if k == "tools" and not isinstance(r[k], str) else r[k])
             for k in keep if k in r and r[k] is not None} for r in pairs]
    if any("tools" in r for r in rows) and not all("tools" in r for r in rows):
        rows = [{k: v for k, v in r.items() if k != "tools"} for r in rows]
    config = DPOConfig(**_common(target, settings.epochs, settings.learning_rate,
                                 settings.batch_size, settings.seed),
                       beta=settings.beta, loss_type=list(settings.loss_type),
                       loss_weights=(list(settings.loss_weights)
                                     if settings.loss_weights else None),
                       max_length=settings.max_length, **settings.extra)
    trainer = DPOTrainer(model=net, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=_peft(settings.lora),
                         callbacks=_callbacks(on_log))
    trainer.train()
    return _save(trainer, tokenizer, target, {"kind": "dpo", "base": model,
                                              "pairs": len(rows), **asdict(settings)})


def _callbacks(on_log: Callable[[dict[str, Any]], None] | None) -> list[Any]:
    if on_log is None:
        return []
    from transformers import TrainerCallback

    class _Log(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            if logs:
                assert on_log is not None
                on_log({"step": state.global_step, "max_steps": state.max_steps, **logs})

    return [_Log()]
