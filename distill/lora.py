"""LoRA students (PEFT): train low-rank adapters on a copied or pretrained student instead of all of
its weights, then ship the adapters merged into a plain ``from_pretrained`` folder.

The adapter itself is kept beside the student (``OUTPUT/student_adapter``): it applies to the
student's initialisation (the pretrained student, or the layers copied from the teacher). The
task head trains fully (PEFT's ``modules_to_save`` for classification), since a copied or new head
is part of what the student learns.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from distill import atomic
from distill.artefacts import TOLERANCE
from distill.errors import DistillError, RunFailed
from distill.tasks import TASKS

ADAPTER_SUFFIX = "_adapter"  # OUTPUT/student_adapter, OUTPUT/baseline_adapter


def wrap(model: nn.Module, settings: Any, task: str, seed: int = 0) -> nn.Module:
    """``model`` with LoRA adapters (a ``PeftModel``): only the adapters (and the head) train. The
    adapters' initialisation depends on ``seed`` alone (not on what ran before), so a stage
    restarted on ``--resume`` starts from the same adapters."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules or None,
        task_type=TASKS[task].PEFT_TASK_TYPE,
    )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_peft_model(model, config)
    except ValueError as e:  # no module matches target_modules, or a family PEFT has no default for
        why = " ".join(str(e).split())[:300]
        raise DistillError(
            f"student.lora: cannot add adapters to the {model.config.model_type} student: {why}"
        ) from None


def is_wrapped(model: nn.Module) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def merge(
    accelerator: Accelerator,
    name: str,
    model: nn.Module,
    task: ModuleType,
    probe: dict[str, torch.Tensor],
    adapter_folder: Path,
) -> nn.Module:
    """Save the adapter into ``adapter_folder`` and return the plain model with the adapters merged
    in, checked to give the adapted model's outputs on ``probe`` (merging changes only rounding)."""
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic.new_folder(adapter_folder) as partial, atomic.disk_errors(adapter_folder):
            model.save_pretrained(partial)
    accelerator.wait_for_everyone()
    model.eval()
    inputs = {k: v.to(accelerator.device) for k, v in task.model_inputs(probe).items()}
    with torch.inference_mode(), accelerator.autocast():
        adapted = model(**inputs).logits.float()
    merged = model.merge_and_unload()
    with torch.inference_mode(), accelerator.autocast():
        plain = merged(**inputs).logits.float()
    diff = (adapted - plain).abs().max().item()
    if not diff <= TOLERANCE.get(accelerator.mixed_precision, TOLERANCE["bf16"]) * (
        1 + adapted.abs().max().item()
    ):
        raise RunFailed(
            f"{name}: the student with its LoRA adapters merged differs from the trained one (logits by {diff:.3g})"
        )
    return merged
