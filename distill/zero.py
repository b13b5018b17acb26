"""Training under DeepSpeed ZeRO (``accelerate launch --use_deepspeed``), as Accelerate sets it up.

The student (or the teacher being fine-tuned) is the DeepSpeed engine's model: its parameters,
gradients and optimizer state are partitioned over the processes at ZeRO-3, and the saved folder
is gathered from them (``stage3_gather_16bit_weights_on_model_save``). distill keeps what it owns:
the batch size, gradient accumulation and clipping of each stage come from the recipe and are
written into the DeepSpeed config before each stage's ``prepare``; a launcher or config file value
that differs is refused in one line rather than silently replaced. The loop's own optimizer
(AdamW) and schedule are used, so a config file's ``optimizer`` / ``scheduler`` is refused too.

Every other model (the frozen teacher, the reloaded folders, the report's models) is loaded whole,
as without DeepSpeed: transformers would otherwise build every ``from_pretrained`` model inside
``deepspeed.zero.Init`` (partitioned, unusable outside an engine) as soon as Accelerate announces a
ZeRO-3 config. The engine partitions the student when the stage starts.

The engine steps the optimizer inside its ``backward`` on the last micro-batch; the loop reads
the gradient norm the engine computed before clipping for its divergence check, which stops the
stage at the next log, evaluation or checkpoint, before anything of it is saved, as without
DeepSpeed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from typing import Any

from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import Tensor, nn

from distill.errors import DistillError

# What distill sets per stage from the recipe, by DeepSpeed config key.
OWNED = (
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "train_batch_size",
    "gradient_clipping",
)
SAVE_GATHERED = "stage3_gather_16bit_weights_on_model_save"


def active(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def launch_problems(cfg: Any) -> None:
    """What a DeepSpeed launch cannot run, refused in one line before anything starts."""
    if not deepspeed_installed():
        raise DistillError(
            "accelerate launch asked for DeepSpeed, which is not installed: pip install deepspeed "
            "(or pip install 'distill[deepspeed]'), or launch without --use_deepspeed"
        )
    if cfg.loss.hidden_weight > 0:
        raise DistillError(
            "loss.hidden_weight: the hidden-state loss trains a projection beside the student, and "
            "Accelerate's DeepSpeed trains one model; set loss.hidden_weight=0 or launch with "
            "--use_fsdp --fsdp_version 2"
        )
    if not accelerate_counts_processes():
        raise DistillError(
            "accelerate launch asked for DeepSpeed on several processes, which Accelerate sets up only on "
            "GPUs (or other accelerators), and this machine has none (each process would take itself for "
            "the only one); drop --use_deepspeed (several CPU processes then train as plain data parallel)"
        )
    config = _config_file()
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise DistillError(
                f"the DeepSpeed config file ({os.environ['ACCELERATE_DEEPSPEED_CONFIG_FILE']}) has an "
                f"'{section}' section, and distill trains with its own AdamW and schedule (train.*); "
                f"remove the '{section}' section"
            )
    # Each training stage's batch, accumulation and clipping against what the launch fixes.
    given, processes = _launcher_values(), int(os.environ.get("WORLD_SIZE", "1"))
    stages = [("train", cfg.train.batch_size, cfg.train.gradient_accumulation_steps)]
    if cfg.teacher.stage.enabled:
        which = "teacher.train" if cfg.teacher.architecture else "teacher.finetune"
        stages.append((which, cfg.teacher.stage.batch_size, 1))
    for stage, batch_size, accumulation in stages:
        ours = _stage_values(batch_size, accumulation, cfg.train.max_grad_norm, processes)
        _refuse_conflicts(given, ours, stage)
    gathered = config.get("zero_optimization", {}).get(SAVE_GATHERED)
    if gathered is None:
        gathered = os.environ.get("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL")
    if str(gathered).lower() == "false":
        raise DistillError(
            f"DeepSpeed: {SAVE_GATHERED} is false (accelerate launch --zero3_save_16bit_model false or "
            "the config file), and distill ships the student as one gathered from_pretrained folder; "
            "drop that setting"
        )


def _config_file() -> dict[str, Any]:
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if path in ("", "none"):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise DistillError(f"the DeepSpeed config file {path} cannot be read: {e}") from None
    if not isinstance(value, dict):
        raise DistillError(f"the DeepSpeed config file {path} is not a JSON object")
    return value


def accelerate_counts_processes() -> bool:
    """Accelerate records a DeepSpeed launch's process count and ranks: on GPUs (or other
    accelerators), or with a single process; on several CPU processes it counts one."""
    from distill.checks import accelerator_available

    return accelerator_available() or int(os.environ.get("WORLD_SIZE", "1")) <= 1


def check_processes(accelerator: Accelerator) -> None:
    """Accelerate counts every process of the launch (on CPU processes it counts one, and each
    would take itself for the main process and read all the data)."""
    if not active(accelerator):
        return
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    if accelerator.num_processes != world:
        raise DistillError(
            f"accelerate launch started DeepSpeed on {world} processes, and Accelerate counts "
            f"{accelerator.num_processes} (each process would take itself for the only one); launch without "
            "--use_deepspeed"
        )


def load_models_whole(accelerator: Accelerator) -> None:
    """Models built from now on (``from_pretrained``) are whole on each process, not partitioned
    by ``deepspeed.zero.Init``; only the engine's model is partitioned, when it is prepared."""
    if active(accelerator):
        check_processes(accelerator)
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def configure_stage(
    accelerator: Accelerator, *, batch_size: int, accumulation: int, max_grad_norm: float
) -> None:
    """Write the stage's batch size, accumulation and clipping into the DeepSpeed config before its
    ``prepare``; a value the launcher or config file set that differs is refused in one line."""
    plugin = accelerator.state.deepspeed_plugin
    config = plugin.deepspeed_config
    given = getattr(plugin, "_distill_given", None)
    if given is None:  # what the launcher and config file said, before any stage wrote its own
        given = plugin._distill_given = copy.deepcopy({k: config.get(k, "auto") for k in OWNED})
    ours = _stage_values(batch_size, accumulation, max_grad_norm, accelerator.num_processes)
    _refuse_conflicts(given, ours)
    config.update(ours)
    config.setdefault("zero_optimization", {})[SAVE_GATHERED] = True
    accelerator.gradient_accumulation_steps = accumulation  # what Accelerate checks the config against


def _stage_values(batch_size: int, accumulation: int, max_grad_norm: float, processes: int) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": batch_size * accumulation * processes,
        "gradient_clipping": float(max_grad_norm) if max_grad_norm > 0 else 0.0,
    }


RECIPE_KEYS = {
    "train_micro_batch_size_per_gpu": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "train_batch_size": "batch_size x gradient_accumulation_steps x processes",
    "gradient_clipping": "max_grad_norm",
}


def _refuse_conflicts(given: dict[str, Any], ours: dict[str, Any], stage: str = "train") -> None:
    for key, value in ours.items():
        theirs = given.get(key, "auto")
        if theirs not in (None, "auto") and float(theirs) != float(value):
            if key == "gradient_clipping":
                source = "train.max_grad_norm"  # every stage clips at it
            elif stage == "train" or key == "train_micro_batch_size_per_gpu":
                source = f"{stage}.{RECIPE_KEYS[key]}"
            else:
                source = f"{stage} stage (it does not accumulate gradients)"
            raise DistillError(
                f"DeepSpeed's {key} is {theirs} (accelerate launch or its DeepSpeed config), and the recipe's "
                f"{source} makes it {value}; distill sets it from the recipe: drop it there or set the "
                "recipe to match"
            )


def _launcher_values() -> dict[str, Any]:
    """The values of the keys distill sets that the launch gives, as Accelerate's plugin reads them:
    the config file's, its ``auto`` ones (or all, without a file) filled from the launch flags."""
    config = _config_file()
    flags = {
        "gradient_accumulation_steps": os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "auto"),
        "gradient_clipping": os.environ.get("ACCELERATE_GRADIENT_CLIPPING", "auto"),
    }
    given = {key: config.get(key, "auto") for key in OWNED}
    for key, value in flags.items():
        if given[key] == "auto":
            given[key] = value
    return given


def engine(accelerator: Accelerator) -> Any:
    """The DeepSpeed engine of the stage being trained."""
    return accelerator.deepspeed_engine_wrapped.engine


def engine_of(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """The engine that trains ``model`` (what Accelerate gathers a ZeRO-3 model from), else ``model``."""
    wrapped = getattr(accelerator, "deepspeed_engine_wrapped", None) if active(accelerator) else None
    if wrapped is not None and model in (wrapped.engine, wrapped.engine.module):
        return wrapped.engine
    return model


def backward(accelerator: Accelerator, loss: Tensor, *, last: bool) -> None:
    """Accumulate ``loss``'s gradient (already normalised over the whole step: DeepSpeed does not
    divide it again); on the step's last micro-batch the engine reduces, clips and steps."""
    ds = engine(accelerator)
    ds.set_gradient_accumulation_boundary(is_boundary=last)
    ds.backward(loss, scale_wrt_gas=False)
    if last:
        ds.step()


def mark_sharded(accelerator: Accelerator, model: nn.Module) -> None:
    """generate() keeps the processes in step only for models it knows are sharded (ZeRO-3 gathers
    each layer's weights inside its forward, so every process must run every forward)."""
    if active(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3:
        accelerator.unwrap_model(model)._is_fsdp_managed_module = True
