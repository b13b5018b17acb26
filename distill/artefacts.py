"""The model folders a run ships, and the records that say a stage is finished.

A model folder is written whole (``save_pretrained`` into ``.partial_NAME``, then a rename) and
then reloaded by plain ``transformers``; the reloaded model must give the trained model's outputs,
and it is the reloaded one that later stages and the report use. A stage is finished when its
record, written last, is in place: a resumed run skips it and reads its result from the record.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from distill import atomic
from distill.errors import RunFailed

RECORD = "complete.json"


def save_model(
    accelerator: Accelerator,
    model: nn.Module,
    tokenizer: Any,
    path: Path,
    extra: dict[str, Any] | None = None,
) -> None:
    """``save_pretrained`` model and tokenizer into ``path``, which appears only once complete.

    ``extra`` maps file names to JSON values written inside the folder before the rename (a
    completion record that must never stand beside half a model).
    """
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic.new_folder(path) as partial, atomic.disk_errors(path):
            accelerator.unwrap_model(model).save_pretrained(partial, save_function=accelerator.save)
            tokenizer.save_pretrained(partial)
            for name, value in (extra or {}).items():
                (partial / name).write_text(atomic.dumps(value), encoding="utf-8")
    accelerator.wait_for_everyone()


def reload(task: ModuleType, path: Path, device: torch.device) -> nn.Module:
    """The model as a user gets it: ``from_pretrained`` on the folder, in eval mode."""
    return task.MODEL_CLASS.from_pretrained(path).to(device).eval()


def check_reload(
    name: str, trained: nn.Module, reloaded: nn.Module, task: ModuleType, batch: dict[str, torch.Tensor]
) -> None:
    """The reloaded model must give the trained model's outputs on ``batch``; else :class:`RunFailed`.

    Both run in eval mode in float32 on the same device, so the same weights give the same logits;
    anything ``save_pretrained`` silently left out shows up here.
    """
    was_training = trained.training
    trained.eval()
    inputs = {k: v.to(next(trained.parameters()).device) for k, v in task.model_inputs(batch).items()}
    with torch.inference_mode():
        ours = trained(**inputs).logits.float()
        theirs = reloaded(**inputs).logits.float()
    trained.train(was_training)
    scale = 1.0 + ours.abs().max().item()
    diff = (ours - theirs).abs().max().item()
    if not diff <= 1e-4 * scale:  # also catches NaN
        raise RunFailed(
            f"{name}: the saved model does not reproduce the trained one (logits differ by up to {diff:.3g} "
            "after reloading with from_pretrained); the report would not describe the files, so it was not written"
        )


def write_record(accelerator: Accelerator, path: Path, value: dict[str, Any]) -> None:
    """A stage's completion record, written last by the main process."""
    if accelerator.is_main_process:
        atomic.write_json(path, value)
    accelerator.wait_for_everyone()


def read_record(path: Path) -> dict[str, Any] | None:
    """A completion record, or ``None`` if there is none (or it is damaged: the stage is redone)."""
    value = atomic.read_json(path)
    return value if isinstance(value, dict) else None


def is_model_folder(path: Path) -> bool:
    return (Path(path) / "config.json").is_file()


def json_equal(a: Any, b: Any) -> bool:
    """Equal as they would be written to JSON (tuples and lists alike, keys as strings)."""
    return json.loads(atomic.dumps(a)) == json.loads(atomic.dumps(b))
