"""The model folders a run ships, and the records that say a stage is finished.

A model folder is written whole (``save_pretrained`` into ``.partial_NAME``), reloaded from there
by plain ``transformers``, and renamed into place only once the reloaded model holds the trained
model's weights and gives its outputs in the precision of the run; it is the reloaded one that later
stages and the report use. A stage is finished when its
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

from distill import atomic, zero
from distill.errors import RunFailed

RECORD = "complete.json"


# Largest difference of the reloaded model's logits from the trained model's, as a share of
# 1 + the largest logit, by the precision both run in. The two compute the same thing, so on one
# device they agree exactly; the margin (about two units in the last place of the format) covers
# kernels that pick another summation order for another memory layout.
TOLERANCE = {"no": 1e-4, "fp16": 2e-3, "bf16": 8e-3}


def ship(
    accelerator: Accelerator,
    task: ModuleType,
    name: str,
    model: nn.Module,
    tokenizer: Any,
    path: Path,
    probe: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> nn.Module:
    """Save ``model`` and ``tokenizer`` into ``path`` and return the model reloaded from there.

    The folder is written under ``.partial_NAME`` and reloaded from it; only once the reloaded
    model reproduces the trained one (:func:`check_reload`) are the ``extra`` files (JSON values
    by file name: a completion record) written and the folder renamed into place. A folder that
    fails the check is never under its real name, so nothing later reuses it.
    """
    path = Path(path)
    partial = path.with_name(f"{atomic.PARTIAL}{path.name}")
    # Every process takes part: a model sharded by FSDP or DeepSpeed ZeRO-3 is gathered here (the
    # full weights on the main process), a replicated one is just its own state dict.
    state = accelerator.get_state_dict(zero.engine_of(accelerator, model))
    if accelerator.is_main_process:
        with atomic.disk_errors(path):
            atomic.remove(partial)
            partial.mkdir(parents=True)
            bare = accelerator.unwrap_model(model)
            bare.save_pretrained(partial, state_dict=state, save_function=accelerator.save)
            tokenizer.save_pretrained(partial)
    accelerator.wait_for_everyone()
    saved = reload(task, partial, accelerator.device)
    check_reload(name, model, saved, task, probe, accelerator, state=state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic.disk_errors(path):
            for file, value in (extra or {}).items():
                (partial / file).write_text(atomic.dumps(value), encoding="utf-8")
            atomic.replace_folder(partial, path)
    accelerator.wait_for_everyone()
    saved.config._name_or_path = str(path)  # where it lives now, not where it was checked
    return saved


def reload(task: ModuleType, path: Path, device: torch.device) -> nn.Module:
    """The model as a user gets it: ``from_pretrained`` on the folder, in eval mode."""
    return task.MODEL_CLASS.from_pretrained(path).to(device).eval()


def check_reload(
    name: str,
    trained: nn.Module,
    reloaded: nn.Module,
    task: ModuleType,
    batch: dict[str, torch.Tensor],
    accelerator: Accelerator,
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """The reloaded model must hold the trained model's weights and give its outputs on ``batch``;
    else :class:`RunFailed`.

    Every tensor the two state dicts share must be equal bit for bit, whatever the precision
    (``state``: the trained weights as saved, gathered if the model is sharded; empty on the
    processes that did not gather them). Then
    both run in eval mode on the same device under the run's mixed precision (the precision the
    report measures them in), so the logits may differ only by what that precision rounds
    (:data:`TOLERANCE`); anything ``save_pretrained`` silently left out or changed shows here.
    """
    trained = accelerator.unwrap_model(trained, keep_fp32_wrapper=False)
    fail = (
        f"{name}: the saved model does not reproduce the trained one ({{}} after reloading with "
        "from_pretrained); the report would not describe the files, so it was not written"
    )
    theirs_state = reloaded.state_dict()
    for key, tensor in (trained.state_dict() if state is None else state).items():
        other = theirs_state.get(key)
        if (
            other is not None
            and other.shape == tensor.shape
            and not torch.equal(other, tensor.to(other.device))
        ):
            raise RunFailed(fail.format(f"weights {key} differ"))
    was_training = trained.training
    trained.eval()
    inputs = {k: v.to(next(trained.parameters()).device) for k, v in task.model_inputs(batch).items()}
    with torch.inference_mode(), accelerator.autocast():
        ours = trained(**inputs).logits.float()
        theirs = reloaded(**inputs).logits.float()
    trained.train(was_training)
    scale = 1.0 + ours.abs().max().item()
    diff = (ours - theirs).abs().max().item()
    precision = accelerator.mixed_precision
    if not diff <= TOLERANCE.get(precision, TOLERANCE["bf16"]) * scale:  # also catches NaN
        raise RunFailed(fail.format(f"logits differ by up to {diff:.3g} in {precision_name(precision)}"))


def precision_name(mixed_precision: str) -> str:
    """How a model runs under the accelerator's mixed precision, in words."""
    return "float32" if mixed_precision == "no" else f"{mixed_precision} autocast"


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
