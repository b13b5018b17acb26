"""The one training loop: distillation, teacher fine-tuning and no-teacher baselines all run here.

Shape (accelerate's ``nlp_example.py``): one ``accelerator.prepare(...)``, explicit ``for`` loops,
and a separately testable :class:`LossStep`. The teacher is frozen, runs under ``inference_mode``,
is never prepared (so never wrapped for DDP), never handed to the optimizer and never saved in a
checkpoint.

Normalisation: losses are sums over items. Before each optimizer step the loop counts the real
items in all its micro-batches on all processes, and divides once by that global count (times the
number of processes, because DDP averages gradients). One process with a batch of 8, or 2
processes x 2 micro-batches of 2, give the same gradient.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import get_scheduler

from distill import atomic, checkpoints, zero
from distill.batches import endless, make_dataloader
from distill.callbacks import CallbackList
from distill.config import TrainConfig
from distill.errors import DistillError, RunFailed
from distill.loss_step import LossStep
from distill.metrics import compute_extra
from distill.modeling import freeze_unsaved, place

log = logging.getLogger(__name__)

SCHEDULER_NAMES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


@dataclass
class TrainResult:
    steps: int
    metrics: dict[str, float]  # validation metrics after the last step
    history: list[dict[str, Any]] = field(default_factory=list)  # logged losses and evaluations


def evaluate(
    accelerator: Accelerator,
    model: nn.Module,
    dataloader: DataLoader,
    task: ModuleType,
    *,
    tokenizer: Any = None,
    settings: Any = None,
    autocast: bool = True,
) -> dict[str, float]:
    """Task metrics of ``model`` over a prepared dataloader, gathered from every process, under the
    run's autocast (``autocast=False``: as the model computes, for int8 models).

    ``task.eval_step`` gives predictions and references per batch (class ids, token ids padded
    with -100, or reference texts); sequences are padded to one length across processes before
    gathering, and ``gather_for_metrics`` drops the duplicates that even batches add at the end.
    """
    model = accelerator.unwrap_model(model)  # generate() lives on the bare model
    was_training = model.training
    model.eval()
    predictions: list = []
    references: list = []
    for batch in dataloader:
        with torch.no_grad(), accelerator.autocast() if autocast else contextlib.nullcontext():
            preds, refs = task.eval_step(model, batch, settings)
        if preds.ndim > 1:
            preds = accelerator.pad_across_processes(preds, dim=1, pad_index=-100)
        if isinstance(refs, Tensor):
            if refs.ndim > 1:
                refs = accelerator.pad_across_processes(refs, dim=1, pad_index=-100)
            preds, refs = accelerator.gather_for_metrics((preds, refs))
            references.extend(refs.cpu().tolist())
        else:  # raw reference texts
            preds = accelerator.gather_for_metrics(preds)
            references.extend(accelerator.gather_for_metrics(list(refs), use_gather_object=True))
        predictions.extend(preds.cpu().tolist())
    model.train(was_training)
    names = label_names(model)
    scores = task.compute_metrics(predictions, references, tokenizer, names)
    extra = list(getattr(settings, "metrics", None) or [])
    if extra:
        scores.update(compute_extra(extra, *task.metric_inputs(predictions, references, tokenizer, names)))
    return scores


def label_names(model: nn.Module) -> list[str]:
    """The model's label names by id (``config.id2label``): what tag ids mean to the metrics."""
    config = model.config
    return [str(config.id2label[i]) for i in range(int(getattr(config, "num_labels", 0) or 0))]


def latest_checkpoint(stage_dir: Path) -> Path | None:
    """The newest checkpoint of a stage by name (intact or not: see :func:`checkpoints.latest_intact`)."""
    found = checkpoints.listed(stage_dir)
    return found[-1] if found else None


@dataclass(frozen=True)
class StageData:
    """What a training stage reads: its training split, the validation split it is evaluated on
    (with the task's metrics, in batches of ``eval_batch_size``), and how rows become batches."""

    train: Dataset
    validation: Dataset
    collate: Callable
    task: ModuleType
    eval_batch_size: int
    tokenizer: Any = None  # for metrics over generated text
    eval_settings: Any = None  # EvalConfig: beams, new tokens, extra metrics


def train(
    accelerator: Accelerator,
    *,
    name: str,
    cfg: TrainConfig,
    student: nn.Module,
    loss_step: LossStep,
    data: StageData,
    stage_dir: Path,
    resume: bool,
    callbacks: CallbackList | None = None,
) -> tuple[nn.Module, TrainResult]:
    """Train ``student`` for ``cfg.steps`` optimizer steps; returns the prepared model and the result.

    Checkpoints go to ``stage_dir/checkpoints/step_N`` (see :mod:`distill.checkpoints`); with
    ``resume`` the latest intact one is loaded and training continues exactly where it stopped,
    logged history included.

    Parameters that ``save_pretrained`` does not write (Marian's sinusoidal position tables) are
    frozen, so the saved model is the trained one. The first non-finite loss or gradient stops the
    stage with :class:`RunFailed`: it is detected on the device and checked at every log,
    evaluation and checkpoint step and at the end, so no checkpoint or model is written after it.
    """
    accum = cfg.gradient_accumulation_steps
    global_batch = cfg.batch_size * accelerator.num_processes
    callbacks = callbacks or CallbackList()
    train_dataset, task, collate = data.train, data.task, data.collate
    if len(train_dataset) < global_batch:
        raise DistillError(
            f"{name}: the training split has {len(train_dataset)} examples, fewer than one global batch "
            f"({cfg.batch_size} x {accelerator.num_processes} processes)"
        )
    train_dl = make_dataloader(
        train_dataset,
        cfg.batch_size,
        collate,
        shuffle=True,
        seed=cfg.seed,
        group_by_length=cfg.group_by_length,
    )
    eval_dl = make_dataloader(data.validation, data.eval_batch_size, collate, shuffle=False, seed=cfg.seed)
    frozen = freeze_unsaved(student)
    if frozen:
        accelerator.print(
            f"{name}: not training {', '.join(frozen)} (save_pretrained does not write them; "
            "they keep their initial values so that the saved model is the trained one)"
        )
    modules = [student] + ([loss_step.projection] if loss_step.projection is not None else [])
    # A stage's checkpoints hold its own model and optimizer only: save_state writes, and
    # load_state reads back, whatever the accelerator has prepared, earlier stages' included.
    accelerator.free_memory()
    # Fused AdamW: one kernel for all parameters instead of several per tensor (on a 2-core CPU,
    # the step over the quickstart student's 15.6M parameters takes 26 ms instead of 237).
    fused = {"fused": True} if accelerator.device.type in ("cuda", "cpu") else {}
    optimizer = torch.optim.AdamW(_param_groups(modules, cfg.weight_decay), lr=cfg.learning_rate, **fused)
    # The scheduler is stepped by hand once per optimizer step (a prepared one steps once per
    # process); its state is saved beside each checkpoint.
    scheduler = get_scheduler(
        SCHEDULER_NAMES[cfg.lr_scheduler],
        optimizer,
        num_warmup_steps=round(cfg.warmup_ratio * cfg.steps),
        num_training_steps=cfg.steps,
    )
    if zero.active(accelerator):
        if len(modules) > 1:
            raise DistillError(
                f"{name}: a hidden-state projection cannot be trained under DeepSpeed (one model)"
            )
        zero.configure_stage(
            accelerator, batch_size=cfg.batch_size, accumulation=accum, max_grad_norm=cfg.max_grad_norm
        )
    prepared = accelerator.prepare(*modules, optimizer, train_dl, eval_dl)
    student, projection = prepared[0], (prepared[1] if len(modules) > 1 else None)
    optimizer, train_dl, eval_dl = prepared[len(modules) :]
    loss_step.projection = accelerator.unwrap_model(projection) if projection is not None else None
    if getattr(accelerator, "is_fsdp2", False):
        # generate() (evaluation, on-policy samples) keeps the processes in step only for models it
        # knows are sharded; Accelerate's fully_shard does not mark them as transformers' own does.
        accelerator.unwrap_model(student)._is_fsdp_managed_module = True
    zero.mark_sharded(accelerator, student)
    if loss_step.teacher is not None:
        # The teacher is not prepared (never wrapped for DDP, never in a checkpoint): place it by hand.
        place(loss_step.teacher, accelerator.device)

    start_step, history = 0, []
    summed_terms = loss_step.summed  # the built-in terms, any custom ones, and the item count
    running = torch.zeros(len(summed_terms), device=accelerator.device)  # summed since the last log
    if accelerator.is_main_process:
        atomic.clean_leftovers(stage_dir / "checkpoints")  # what interrupted writes left behind
    accelerator.wait_for_everyone()
    checkpoint = checkpoints.latest_intact(accelerator, stage_dir, name) if resume else None
    if checkpoint is not None:
        try:
            start_step, history, sums = checkpoints.load(accelerator, checkpoint, scheduler)
        except Exception as e:  # a checkpoint that matches its manifest but not this model
            why = " ".join(str(e).split())[:300]  # one line, whatever the library wrote
            raise DistillError(f"{name}: cannot resume from {checkpoint}: {why}") from None
        running = torch.tensor(sums, dtype=running.dtype, device=accelerator.device)
        accelerator.print(f"{name}: resuming from {checkpoint} (step {start_step} of {cfg.steps})")

    batches = endless(accelerator, train_dl, start_step * accum)
    student.train()
    progress = tqdm(
        total=cfg.steps,
        initial=start_step,
        desc=name,
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    metrics: dict[str, float] = {}
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    # fp16's loss scaling overflows the gradient on purpose now and then (the step is skipped):
    # there only the loss tells divergence.
    check_gradient = accelerator.mixed_precision != "fp16"
    first_bad = torch.zeros((), dtype=torch.long, device=accelerator.device)  # 0: all finite so far
    timed_from = (start_step, time.perf_counter())  # examples/s since the last log
    try:
        for step in range(start_step + 1, cfg.steps + 1):
            micro = [next(batches) for _ in range(accum)]
            totals = backward_step(accelerator, student, loss_step, micro, seed=cfg.seed, step=step)
            running += torch.stack([totals[k] for k in summed_terms])
            first_bad, grad_norm = optimizer_step(
                accelerator,
                optimizer,
                params,
                max_grad_norm=cfg.max_grad_norm,
                loss=totals["loss"],
                first_bad=first_bad,
                step=step,
                check_gradient=check_gradient,
            )
            scheduler.step()
            progress.update(1)

            evaluating = (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps
            checkpointing = cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps
            logging_now = step % cfg.log_every == 0 or step == cfg.steps
            if logging_now or evaluating or checkpointing:
                _stop_if_diverged(accelerator, name, first_bad)
            if logging_now:
                summed = (
                    accelerator.reduce(running, "sum") if accelerator.num_processes > 1 else running
                ).tolist()
                items = max(summed[-1], 1.0)
                entry = {"step": step, "lr": scheduler.get_last_lr()[0]}
                shown = loss_step.logged_terms  # no chart of a term that is always 0
                entry.update(
                    {
                        f"train/{k}": v / items
                        for k, v in zip(summed_terms[:-1], summed[:-1], strict=True)
                        if k in shown
                    }
                )
                # The norm of this step's gradient before clipping (the same on every process).
                entry["train/grad_norm"] = float(grad_norm) if grad_norm is not None else math.nan
                now = time.perf_counter()
                speed = (step - timed_from[0]) * global_batch * accum / max(now - timed_from[1], 1e-9)
                timed_from = (step, now)
                # examples/s is the machine's, not the run's: logged, but not kept in the history
                # (a resumed run's history is the uninterrupted one's).
                logged = {f"{name}/{k}": v for k, v in entry.items() if k != "step"}
                accelerator.log({**logged, f"{name}/train/examples_per_s": speed}, step=step)
                history.append(entry)
                callbacks.on_log(name, step, {**entry, "train/examples_per_s": speed})
                progress.set_postfix(loss=f"{entry['train/loss']:.4f}")
                running.zero_()
            if evaluating:
                metrics = evaluate(
                    accelerator, student, eval_dl, task, tokenizer=data.tokenizer, settings=data.eval_settings
                )
                accelerator.log({f"{name}/validation/{k}": v for k, v in metrics.items()}, step=step)
                history.append({"step": step, **{f"validation/{k}": v for k, v in metrics.items()}})
                callbacks.on_evaluate(name, step, metrics)
                if accelerator.is_local_main_process:  # tqdm.write prints whatever disable says
                    progress.write(
                        f"{name} step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                    )
            if checkpointing:
                saved = checkpoints.save(
                    accelerator,
                    stage_dir,
                    step,
                    history=history,
                    running=running.tolist(),
                    scheduler=scheduler,
                    keep=cfg.keep_checkpoints,
                )
                callbacks.on_checkpoint(name, step, saved)
    finally:
        progress.close()  # before any message about why the loop stopped
    return student, TrainResult(steps=cfg.steps, metrics=metrics, history=history)


def backward_step(
    accelerator: Accelerator,
    model: nn.Module,
    loss_step: LossStep,
    micro_batches: list[dict[str, Tensor]],
    *,
    seed: int = 0,
    step: int = 0,
) -> dict[str, Tensor]:
    """Accumulate the gradient of one optimizer step over its micro-batches.

    The loss is divided once by the number of real items in all micro-batches of all processes,
    and multiplied by the number of processes since DDP averages gradients: the result is the
    gradient of the mean loss over the global batch, however it is split. Returns this process's
    summed loss terms (not normalised, detached), for logging. Nothing here waits for the device
    (but on-policy sampling): counts and totals stay tensors. ``seed`` and ``step`` seed on-policy
    draws (:meth:`LossStep.draw`).
    """
    # On-policy batches are sampled first: their items are the sampled tokens.
    with accelerator.autocast():  # sampled in the precision the student trains in
        drawn = [loss_step.draw(model, b, seed=seed, step=step, index=i) for i, b in enumerate(micro_batches)]
    local_items = torch.stack([(b["labels"] != -100).sum() for b, _ in drawn]).sum()
    global_items = accelerator.reduce(local_items, "sum") if accelerator.num_processes > 1 else local_items
    scale = accelerator.num_processes / global_items.clamp(min=1).float()
    totals: dict[str, Tensor] = {}
    deepspeed = zero.active(accelerator)
    for i, (batch, sampled) in enumerate(drawn):
        # Gradients are all-reduced once per optimizer step, on its last micro-batch.
        last = i == len(drawn) - 1
        quiet = contextlib.nullcontext() if last or deepspeed else accelerator.no_sync(model)
        with quiet, accelerator.autocast():
            terms = loss_step(model, batch, on_policy=sampled)
            if deepspeed:  # the engine reduces, clips and steps on the last micro-batch
                zero.backward(accelerator, terms["loss"] * scale, last=last)
            else:
                accelerator.backward(terms["loss"] * scale)
        for k in loss_step.summed:
            value = terms[k].detach().float()
            totals[k] = totals[k] + value if k in totals else value
    return totals


def optimizer_step(
    accelerator: Accelerator,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    *,
    max_grad_norm: float,
    loss: Tensor,
    first_bad: Tensor,
    step: int,
    check_gradient: bool = True,
) -> Tensor:
    """Clip the gradient (``max_grad_norm`` > 0), step and clear it; returns ``first_bad``, the first
    step whose loss or gradient was not finite (0: none), updated on the device without a host sync,
    and the gradient's norm before clipping (a tensor on the device).

    The norm is computed even without clipping (clipping at infinity changes nothing): it is what
    shows a non-finite gradient.
    """
    norm = accelerator.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
    if hasattr(norm, "full_tensor"):  # FSDP2: the norm of sharded gradients is a DTensor
        norm = norm.full_tensor()
    finite = torch.isfinite(loss)
    if check_gradient and norm is not None:
        finite = finite & torch.isfinite(torch.as_tensor(norm, device=finite.device))
    first_bad = torch.where((first_bad == 0) & ~finite, step, first_bad)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return first_bad, norm


def _stop_if_diverged(accelerator: Accelerator, name: str, first_bad: Tensor) -> None:
    """Raise :class:`RunFailed` if any process saw a non-finite loss or gradient (one host sync)."""
    if accelerator.num_processes > 1:
        first_bad = accelerator.reduce(first_bad, "max")
    step = int(first_bad.item())
    if step:
        raise RunFailed(
            f"{name}: training diverged at step {step} (non-finite loss or gradient); nothing of this stage "
            "was saved and earlier checkpoints are kept; lower the stage's learning rate (or raise its "
            "warm-up) and run again with output.overwrite=true"
        )


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
