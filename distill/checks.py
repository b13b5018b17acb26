"""Checks of the user's input that need more than the recipe: the output folder, the columns, the
split sizes, and the models themselves on the longest inputs the recipe allows.

``distill validate`` and ``distill run`` both call them (through :func:`distill.plan.prepare`)
before anything is written, so whatever ``run`` would fail on is refused up front in one line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from datasets import Dataset, DatasetDict, Value
from torch import nn

from distill.config import PRECISIONS, RecipeConfig
from distill.errors import DistillError

log = logging.getLogger(__name__)


def output_dir(path: str) -> None:
    """``output.dir`` must be a folder or creatable as one; a probe file is made and removed."""
    out = Path(path).expanduser()
    for part in out.parts:
        if len(part.encode()) > 255:
            raise DistillError(f"output.dir: the name '{part[:40]}...' is too long for a folder")
    if out.exists() and not out.is_dir():
        raise DistillError(f"output.dir: {out} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DistillError(f"output.dir: {existing} is a file, so {out} cannot be created in it")
    try:
        fd, probe = tempfile.mkstemp(prefix=".distill-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DistillError(f"output.dir: cannot write into {existing}: {e.strerror or e}") from None


def mixed_precision(cfg: RecipeConfig) -> str:
    """The run's mixed precision: the recipe's ``train.mixed_precision`` if it sets one, else what
    Accelerate is told (``accelerate launch --mixed_precision``, an ``accelerate config`` file, the
    ``ACCELERATE_MIXED_PRECISION`` variable), else ``no``.

    A recipe value that contradicts the launcher is refused: neither would be silently dropped.
    ``accelerate launch`` says ``no`` when neither its flag nor its config says anything, so a
    launcher ``no`` gives way to the recipe.
    """
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    if launched and launched not in PRECISIONS:
        raise DistillError(
            f"ACCELERATE_MIXED_PRECISION={launched}: distill trains in one of {', '.join(PRECISIONS)}"
        )
    chosen = cfg.train.mixed_precision
    if chosen and launched and launched != "no" and launched != chosen:
        raise DistillError(
            f"train.mixed_precision={chosen} contradicts the launcher's mixed precision {launched} "
            "(accelerate launch --mixed_precision, its config file or ACCELERATE_MIXED_PRECISION); "
            "drop one of them (train.mixed_precision='' leaves it to the launcher)"
        )
    precision = chosen or launched or "no"
    if precision == "fp16" and not torch.cuda.is_available():
        raise DistillError("train.mixed_precision: fp16 needs a GPU; use bf16 or no on a CPU")
    return precision


def quantized_on_cpu(cfg: RecipeConfig) -> None:
    """``eval.quantized`` rows are measured with CPU int8 kernels: refused where the report would
    be measured on a GPU (the rows would not be comparable)."""
    on_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if cfg.eval.quantized and torch.cuda.is_available() and not on_cpu:
        raise DistillError(
            "eval.quantized: the int8 rows use CPU kernels, and this report would be measured on a GPU; "
            "measure it on the CPU (`distill evaluate RECIPE eval.quantized=true` with "
            "CUDA_VISIBLE_DEVICES=) or set eval.quantized=false"
        )


def launched_sharding() -> str | None:
    """The sharded training ``accelerate launch`` (its flags or config file) asked for, as it tells
    the processes: ``FSDP``, ``DeepSpeed`` or None."""
    for flag, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(flag, "").lower() == "true":
            return name
    return None


def launcher_settings(cfg: RecipeConfig) -> str | None:
    """What ``accelerate launch`` asks for besides the precision, where distill cannot silently
    follow it: returns the sharded training asked for (``FSDP``, ``DeepSpeed`` or None).

    The loop accumulates gradients itself (``train.gradient_accumulation_steps``), so a launcher's
    own count that differs is refused rather than ignored; so are LoRA students under sharding.
    """
    launched = launched_sharding()
    if launched and cfg.student.lora.enabled:
        raise DistillError(
            f"student.lora: LoRA students are not trained under {launched} yet (the adapters are merged "
            "from a whole model); launch without sharding (adapters need little memory) or set "
            "student.lora.enabled=false"
        )
    if launched == "DeepSpeed":
        from distill import zero

        zero.launch_problems(cfg)
    if launched == "FSDP" and not accelerator_available():
        raise DistillError(
            "accelerate launch asked for FSDP, which Accelerate runs only on GPUs (or other accelerators), "
            "and this machine has none; drop --use_fsdp (several CPU processes then train as plain data "
            "parallel over gloo)"
        )
    fsdp2 = launched == "FSDP" and os.environ.get("FSDP_VERSION", "1").strip() == "2"
    if cfg.teacher.shard is True and not fsdp2 and launched != "DeepSpeed":
        how = "shards with FSDP version 1" if launched == "FSDP" else "does not shard"
        raise DistillError(
            "teacher.shard=true: the teacher is sharded only under FSDP2 (accelerate launch --use_fsdp "
            f"--fsdp_version 2) or DeepSpeed training, and this launch {how}; set teacher.shard=auto or false"
        )
    steps = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "").strip()
    if steps and steps != str(cfg.train.gradient_accumulation_steps):
        raise DistillError(
            f"the launcher's gradient accumulation ({steps} steps, accelerate launch "
            "--gradient_accumulation_steps or its config) differs from train.gradient_accumulation_steps="
            f"{cfg.train.gradient_accumulation_steps}; distill accumulates by the recipe's: set it there and "
            "drop the launcher's"
        )
    return launched


def with_precision(cfg: RecipeConfig) -> RecipeConfig:
    """``cfg`` with ``train.mixed_precision`` resolved (:func:`mixed_precision`): what the run
    trains in, as its stage settings and ``config.yaml`` record it."""
    train = dataclasses.replace(cfg.train, mixed_precision=mixed_precision(cfg))
    return dataclasses.replace(cfg, train=train)


def text_columns(raw: DatasetDict, columns: dict[str, str], label_key: str | None) -> None:
    """Every column the task reads as text holds text (not numbers, say)."""
    for split, ds in raw.items():
        for key, column in columns.items():
            if key == label_key:
                continue
            feature = ds.features[column]
            if isinstance(feature, Value) and feature.dtype not in ("string", "large_string"):
                raise DistillError(
                    f"data.{key}: column '{column}' of split '{split}' holds {feature.dtype} values, not text"
                )


# Heads that load into one another without a missing weight (the same ``classifier`` layer): a
# sentence classifier would be taken for a tagger, and the other way round, without a word.
_INTERCHANGEABLE_HEADS = ("ForSequenceClassification", "ForTokenClassification")


def head_kind(config: Any, model_class: Any, source: str) -> None:
    """A trained model whose config says it is another kind of classifier than the task's is refused."""
    found = [str(a) for a in (getattr(config, "architectures", None) or [])]
    try:
        expected = model_class._model_mapping[type(config)].__name__
    except (
        AttributeError,
        KeyError,
    ):  # the task's class has no model for the family: from_pretrained says so
        return
    if not found or expected in found or not expected.endswith(_INTERCHANGEABLE_HEADS):
        return
    if all(a.endswith(_INTERCHANGEABLE_HEADS) for a in found):
        raise DistillError(
            f"the teacher '{source}' is a {found[0]}, not the {expected} this task needs; choose the "
            "task it was trained for, or set teacher.finetune.enabled=true to train a new head on it"
        )


def split_sizes(cfg: RecipeConfig, splits: DatasetDict, processes: int) -> None:
    """Each training stage needs at least one global batch of training examples."""
    n = len(splits["train"])
    refs = min(n, cfg.data.reference_examples) if cfg.data.reference_examples else n
    seen = {"": refs, "replace": n, "mix": refs + n}[cfg.loss.sequence_kd]  # what the student trains on
    stages = [("train", cfg.train.batch_size, seen)]
    if cfg.train.baseline:
        stages.append(("train", cfg.train.batch_size, refs))
    if cfg.teacher.stage.enabled:
        which = "train" if cfg.teacher.architecture else "finetune"
        stages.append((f"teacher.{which}", cfg.teacher.stage.batch_size, n))
    for key, batch, examples in stages:
        if examples < batch * processes:
            raise DistillError(
                f"{key}.batch_size: the training split has {examples} examples, fewer than one global batch "
                f"({batch} x {processes} processes)"
            )


def tokenizer_ready(tokenizer: Any, what: str = "teacher") -> None:
    """Batches are padded. A tokenizer without a pad token (GPT-2, Llama, Qwen2) pads with its end
    token, as their classifiers are usually fine-tuned; the student's folder is saved that way."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token is None:
        raise DistillError(
            f"the {what}'s tokenizer ({type(tokenizer).__name__}) has neither a pad token nor an end token, "
            "so batches cannot be padded; save it with a pad token set"
        )
    tokenizer.pad_token = tokenizer.eos_token
    log.info("the %s's tokenizer has no pad token: padding with its end token %r", what, tokenizer.eos_token)


def embeddings_cover(model: nn.Module, tokenizer: Any, role: str) -> None:
    """Every token id the tokenizer can give has an embedding in the model."""
    size = model.get_input_embeddings().num_embeddings
    if size < len(tokenizer):
        raise DistillError(
            f"the {role} has {size} token embeddings, fewer than the {len(tokenizer)} tokens of the tokenizer"
        )


def pad_in_config(model: nn.Module, tokenizer: Any) -> None:
    """The model's config names the pad token (decoder-only classifiers find each sequence's last
    real token by it, and refuse batches without it)."""
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def models_take_the_longest_inputs(
    cfg: RecipeConfig,
    task: ModuleType,
    splits: DatasetDict,
    tokenizer: Any,
    models: dict[str, nn.Module],
) -> None:
    """Run each model once on a batch as long as the recipe allows, with the tokenizer's highest id.

    This is what fails mid-run otherwise: ``data.max_length`` beyond the model's positions, a
    tokenizer larger than a model's embeddings, a student whose output size differs from the
    teacher's. The batch is built from a real training example, stretched to the limits.
    """
    sample = Dataset.from_dict(splits["train"][:4])  # in memory: nothing is cached to disk
    logger = logging.getLogger(task.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)  # its truncation warnings come again when the run tokenizes
    try:
        tokenized = task.tokenize(DatasetDict(train=sample), tokenizer, cfg.data)["train"]
    finally:
        logger.setLevel(level)
    task.check_models(models, [dict(r) for r in tokenized], tokenizer)  # beyond one forward pass
    row = dict(tokenized[0])
    top = len(tokenizer) - 1
    length = task.max_input_length(tokenizer, cfg.data)
    row["input_ids"] = _stretch(list(row["input_ids"]), length, top)
    for key in ("attention_mask", "token_type_ids"):
        if key in row:
            row[key] = [row[key][0]] * len(row["input_ids"])
    targets = ""
    if task.ALIGNED_LABELS:  # causal_lm: the next token at every position
        row["labels"] = row["input_ids"][1:] + [-100]
    elif isinstance(row.get("labels"), list):  # translation: the longest target too
        row["labels"] = _stretch(list(row["labels"]), cfg.data.max_target_length, top)
        targets = f" with targets of data.max_target_length={cfg.data.max_target_length}"
    batch = task.collator(tokenizer, next(iter(models.values())).config)([row])
    inputs = task.model_inputs(batch)
    shapes = {}
    for role, model in models.items():
        embeddings_cover(model, tokenizer, role)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                shapes[role] = tuple(model(**inputs).logits.shape)
        except Exception as e:
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            limit = getattr(model.config, "max_position_embeddings", None)
            hint = f" (it has {limit} positions)" if limit else ""
            raise DistillError(
                f"the {role} fails on inputs of data.max_length={length} tokens{targets}{hint}: {reason}"
            ) from None
        finally:
            model.train(was_training)
    if task.TOKEN_LEVEL and all(shape[-1] >= len(tokenizer) for shape in shapes.values()):
        # Output layers padded beyond the tokenizer (Qwen2.5: 152,064 and 151,936 rows for one
        # tokenizer of 151,665) are compared over the tokenizer's ids only.
        shapes = {role: shape[:-1] for role, shape in shapes.items()}
    if "teacher" in shapes and "student" in shapes and shapes["teacher"] != shapes["student"]:
        hint = ""
        if task.ENCODER_DECODER and shapes["student"][-1] != shapes["teacher"][-1]:
            hint = (
                f"; the tokenizer has {len(tokenizer)} tokens: resize both output layers to it "
                "(model.resize_token_embeddings) and save the student again"
            )
        raise DistillError(
            f"the student's outputs have shape {shapes['student']}, the teacher's {shapes['teacher']} "
            f"(another vocabulary or label count): they cannot be compared{hint}"
        )


def loss_terms_hold(
    cfg: RecipeConfig,
    task: ModuleType,
    splits: DatasetDict,
    tokenizer: Any,
    teacher: nn.Module,
    student: nn.Module,
) -> None:
    """Each custom loss term (``loss.terms``), once on 4 training examples, keeps the built-ins'
    contract: a 0-dim finite floating tensor, with a gradient through the student, whose values on
    the two halves of the batch add up to its value on the whole (a sum over items, not a mean)."""
    if not cfg.loss.terms:
        return
    from distill import memory

    terms = [memory.loss_term(reference) for reference in cfg.loss.terms]
    sample = Dataset.from_dict(splits["train"][:4])
    logger = logging.getLogger(task.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        tokenized = task.tokenize(DatasetDict(train=sample), tokenizer, cfg.data)["train"]
    finally:
        logger.setLevel(level)
    batch = task.collator(tokenizer, student.config)([dict(r) for r in tokenized])
    n = len(batch["labels"])
    halves = [{k: v[a:b] for k, v in batch.items()} for a, b in ((0, n // 2), (n // 2, n))]
    modes = teacher.training, student.training
    teacher.eval(), student.eval()  # no dropout: the halves must see what the whole saw
    try:
        for term in terms:
            where = f"loss term '{term.name}'"

            def value(
                part: dict[str, torch.Tensor], *, grad: bool, term: Any = term, where: str = where
            ) -> Any:
                inputs = task.model_inputs(part)
                hidden = {"output_hidden_states": True} if term.hidden_states else {}
                try:
                    with torch.no_grad():
                        teacher_out = teacher(**inputs, **hidden)
                    with torch.enable_grad() if grad else torch.no_grad():
                        return term.fn(student(**inputs, **hidden), teacher_out, part)
                except Exception as e:
                    reason = " ".join(str(e).split())[:200] or type(e).__name__
                    raise DistillError(
                        f"{where} fails on a batch of {len(part['labels'])} training examples: "
                        f"{type(e).__name__}: {reason}"
                    ) from None

            whole = value(batch, grad=True)
            if not isinstance(whole, torch.Tensor) or whole.ndim != 0 or not whole.is_floating_point():
                what = (
                    f"a tensor of shape {tuple(whole.shape)}"
                    if isinstance(whole, torch.Tensor)
                    else type(whole).__name__
                )
                raise DistillError(
                    f"{where} returns {what}; it must return a 0-dim floating tensor (the sum over the batch's items)"
                )
            if not torch.isfinite(whole):
                raise DistillError(f"{where} is {whole.item()} on {n} training examples; it must be finite")
            if not whole.requires_grad:
                raise DistillError(
                    f"{where} has no gradient through the student's outputs, so it cannot train it; "
                    "compute it from student_outputs (not under torch.no_grad, not from .detach() or .item())"
                )
            parts = [float(value(half, grad=False)) for half in halves]
            total, added = whole.item(), sum(parts)
            if abs(total - added) > 1e-3 * max(abs(total), abs(added)) + 1e-12:
                raise DistillError(
                    f"{where} gives {total:.6g} on {n} training examples but {parts[0]:.6g} + {parts[1]:.6g} "
                    f"= {added:.6g} on their two halves; return the term summed over the batch's items "
                    "(the loop divides by their count), not a mean"
                )
    finally:
        teacher.train(modes[0]), student.train(modes[1])


def _stretch(ids: list[int], length: int, top: int) -> list[int]:
    """``ids`` made ``length`` long (repeating its inner tokens), one of them the highest id."""
    if len(ids) >= length:
        ids = ids[:length]
    else:
        inner = ids[1:-1] or ids
        filler = [inner[i % len(inner)] for i in range(length - len(ids))]
        ids = ids[:-1] + filler + ids[-1:] if len(ids) > 1 else ids + filler
    if len(ids) > 2:
        ids[len(ids) // 2] = top
    return ids


# The package each tracker needs, and what to install for it.
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
    "comet_ml": ("comet_ml", "comet-ml"),
    "aim": ("aim", "aim"),
    "clearml": ("clearml", "clearml"),
    "dvclive": ("dvclive", "dvclive"),
    "swanlab": ("swanlab", "swanlab"),
}


def trackers_installed(cfg: RecipeConfig) -> None:
    """Every tracker in ``train.report_to`` can be imported (Accelerate would drop it silently)."""
    import importlib.util

    for name in cfg.train.report_to:
        module, package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise DistillError(f"train.report_to: {name} is not installed here (pip install {package})")


def cpu_processes() -> bool:
    """Several processes (torchrun, accelerate launch) on a machine without GPUs: gloo on CPU.

    Accelerate only treats a launched process as one of several CPU processes when told to use
    the CPU; otherwise each would train alone on the whole data.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # DeepSpeed runs on CPU processes too (its CPU accelerator, over gloo), but Accelerate sets it
    # up only for processes not told to use the CPU.
    deepspeed = launched_sharding() == "DeepSpeed"
    return world > 1 and not accelerator_available() and not deepspeed


def accelerator_available() -> bool:
    """A GPU (CUDA or ROCm) or an Intel XPU is at hand: what Accelerate's sharding runs on."""
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
