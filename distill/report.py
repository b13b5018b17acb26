"""What the compression cost and bought: teacher vs student on the same held-out data and machine."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from accelerate import Accelerator
from datasets import DatasetDict

from distill.config import RecipeConfig
from distill.loop import evaluate, make_dataloader
from distill.modeling import count_parameters
from distill.speed import measure_latency


def compare(
    accelerator: Accelerator,
    cfg: RecipeConfig,
    task: ModuleType,
    label_names: list[str],
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    tokenized: DatasetDict,
    collate: Any,
    tokenizer: Any,
    copied: list[int] | None,
    validation: dict[str, float],
) -> dict[str, Any]:
    """Teacher and student on the test split (the validation split if there is none): task
    metrics, parameter counts and, on the main process, measured latency and speed-up."""
    split = "test" if "test" in tokenized else "validation"
    dataset = tokenized[split]
    dl = accelerator.prepare(make_dataloader(dataset, cfg.eval.batch_size, collate, shuffle=False, seed=0))
    scores = {
        name: evaluate(accelerator, model, dl, task, tokenizer=tokenizer, settings=cfg.eval)
        for name, model in (("teacher", teacher), ("student", student))
    }
    results: dict[str, Any] = {
        "task": cfg.task,
        "split": split,
        "examples": len(dataset),
        "processes": accelerator.num_processes,
        "labels": label_names,
        "student_layers_from_teacher": copied,
        "student_validation": validation,
    }
    for name, model in (("teacher", teacher), ("student", student)):
        results[name] = {**scores[name], "parameters": count_parameters(model)}
    primary = task.PRIMARY_METRIC
    results["retained"] = scores["student"][primary] / max(scores["teacher"][primary], 1e-12)
    if cfg.eval.latency and accelerator.is_main_process:
        examples = [dataset[i] for i in range(min(cfg.eval.latency_examples, len(dataset)))]
        latency = measure_latency(
            {"teacher": teacher, "student": student},
            examples,
            collate,
            batch_size=cfg.eval.latency_batch_size,
            repeats=cfg.eval.latency_repeats,
            threads=cfg.eval.latency_threads,
            device=accelerator.device,
            run=lambda model, batch: task.infer(model, batch, cfg.eval),
        )
        for name in ("teacher", "student"):
            results[name]["latency"] = latency[name]
        results["speedup"] = latency["teacher"]["ms_per_example"] / latency["student"]["ms_per_example"]
        results["latency_device"] = str(accelerator.device)
    accelerator.wait_for_everyone()
    return results


def format_results(results: dict[str, Any]) -> str:
    metrics = [k for k in results["teacher"] if k not in ("parameters", "latency")]
    header = ["model", *metrics, "params (M)"] + (["ms/example"] if "speedup" in results else [])
    rows = []
    for name in ("teacher", "student"):
        r = results[name]
        row = [name, *(f"{r[m]:.4f}" for m in metrics), f"{r['parameters'] / 1e6:.2f}"]
        if "speedup" in results:
            row.append(f"{r['latency']['ms_per_example']:.2f}")
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    summary = f"{results['split']} split, {results['examples']} examples: student keeps {results['retained']:.1%} of the teacher's {metrics[0]}"
    if "speedup" in results:
        summary += f", {results['speedup']:.2f}x faster on {results['latency_device']} (batch {results['teacher']['latency']['batch_size']})"
    summary += (
        f", {results['teacher']['parameters'] / results['student']['parameters']:.2f}x fewer parameters"
    )
    return "\n".join([*lines, summary])
