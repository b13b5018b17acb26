"""What the compression cost and bought: teacher, students and baselines measured on the same
held-out data and machine: task metrics, the share of the teacher's score kept, parameters, size on
disk, latency at several batch sizes (median of repeated passes after a warm-up, threads fixed),
speed-up over the teacher and throughput.

The result is the report dictionary written to ``report.json`` (schema in the README).
"""

from __future__ import annotations

import copy
import io
import os
import platform
import statistics
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from torch import nn

from distill.batches import make_dataloader
from distill.loop import evaluate
from distill.modeling import count_parameters, resolve_path
from distill.speed import measure_latency

SCHEMA = "distill.report/1"
NOISY_SPREAD = 0.3  # timed passes of one model differing by more than this share of their median
ROLES = ("teacher", "student", "baseline")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


@dataclass
class Entry:
    """One model of the comparison."""

    name: str  # unique within the report
    role: str  # teacher | student | baseline
    model: nn.Module
    source: str = ""  # folder or hub id it came from ("" if only in memory)
    quantized: str = ""  # "int8": the model of ``source`` with int8 weights, made at load time
    parameters: int | None = None  # of the float model, for a quantized one


INT8 = "int8"
INT8_METHOD = (
    "torch.ao dynamic quantization: int8 weights (per tensor) of every linear layer, activations "
    "quantized per batch; an output layer tied to the embeddings kept in float"
)
QUANTIZED_ROLES = ("teacher", "student")


def quantized_int8(entry: Entry) -> Entry:
    """``entry``'s model with int8 weights: every linear layer (GPT-2's ``Conv1D`` as the
    ``nn.Linear`` it is) replaced by torch's dynamically quantized one (CPU kernels; what measured
    fastest on CPUs here, torchao's int8 configurations included). An output layer tied to the
    input embeddings stays as it is (an int8 copy would add to the size, not save). Not saved:
    made from the loaded folder, as a user would at serving time."""
    model = copy.deepcopy(entry.model).float().cpu().eval()
    _conv1d_to_linear(model)
    tied = None
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and embeddings is not None and head.weight is embeddings.weight:
        tied = head
    names = {
        name: torch.ao.quantization.default_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not tied
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notices that this API moves to torchao
        model = torch.ao.quantization.quantize_dynamic(model, names, dtype=torch.qint8)
    return Entry(
        f"{entry.name}-{INT8}",
        entry.role,
        model,
        entry.source,
        quantized=INT8,
        parameters=count_parameters(entry.model),
    )


def _conv1d_to_linear(model: nn.Module) -> None:
    """Replace transformers' ``Conv1D`` (a linear layer with its weight transposed) by ``nn.Linear``."""
    from transformers.pytorch_utils import Conv1D

    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            linear = nn.Linear(module.weight.shape[0], module.weight.shape[1])
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, linear)


def serialized_mb(model: nn.Module) -> float:
    """Megabytes of the model's state dict as ``torch.save`` writes it (packed int8 weights)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


def evaluate_models(
    accelerator: Accelerator,
    task: ModuleType,
    entries: list[Entry],
    dataset: Dataset,
    collate: Any,
    tokenizer: Any,
    settings: Any,
    *,
    split: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure every entry on ``dataset``; the first entry with role ``teacher`` is the reference.

    Metrics are computed on every process (the data is sharded); sizes and latency on the main
    process only, one model after another on the same batches.
    """
    teacher = next((e for e in entries if e.role == "teacher"), None)
    if teacher is None:
        raise ValueError("the comparison needs a teacher")
    if getattr(settings, "quantized", False):
        entries = [*entries, *(quantized_int8(e) for e in entries if e.role in QUANTIZED_ROLES)]
    dl = accelerator.prepare(make_dataloader(dataset, settings.batch_size, collate, shuffle=False, seed=0))
    scores = {
        # int8 rows compute in float32 between their int8 matrix products: no autocast
        e.name: evaluate(
            accelerator, e.model, dl, task, tokenizer=tokenizer, settings=settings, autocast=not e.quantized
        )
        for e in entries
    }
    metric_names = list(scores[teacher.name])
    models: list[dict[str, Any]] = []
    for e in entries:
        row: dict[str, Any] = {
            "name": e.name,
            "role": e.role,
            "source": e.source,
            "parameters": e.parameters or count_parameters(e.model),
            "dtype": "int8" if e.quantized else weights_dtype(e.model),  # of the weights as loaded
            # what the figures were measured in
            "precision": "int8 weights, float32 activations"
            if e.quantized
            else runs_in(e.model, accelerator.mixed_precision),
            "size_mb": None,
            "metrics": scores[e.name],
            "retained": {m: _ratio(scores[e.name][m], scores[teacher.name][m]) for m in metric_names},
        }
        if e.quantized:
            row["quantized"] = {"weights": e.quantized, "method": INT8_METHOD, "saved": False}
        models.append(row)

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "task": task.__name__.rsplit(".", 1)[-1],
        "split": split,
        "examples": len(dataset),
        "primary_metric": task.PRIMARY_METRIC,
        "metrics": metric_names,
        "machine": {
            "device": str(accelerator.device),
            "device_name": _device_name(accelerator.device),
            "processes": accelerator.num_processes,
            "torch": torch.__version__,
        },
        # The run's mixed precision (none: float32): metrics and latency are measured under it.
        "mixed_precision": accelerator.mixed_precision,
        "latency_settings": None,
        "models": models,
        "groups": groups(models, metric_names),
        **(extra or {}),
    }
    if accelerator.is_main_process:
        for row, e in zip(models, entries, strict=True):
            row["size_mb"] = serialized_mb(e.model) if e.quantized else size_on_disk_mb(e.model, e.source)
        if settings.latency:
            report["latency_settings"] = _measure_speed(
                task, entries, models, teacher.name, dataset, collate, settings, accelerator
            )
    accelerator.wait_for_everyone()
    return report


def _measure_speed(
    task: ModuleType,
    entries: list[Entry],
    models: list[dict[str, Any]],
    teacher: str,
    dataset: Dataset,
    collate: Any,
    settings: Any,
    accelerator: Accelerator,
) -> dict[str, Any]:
    modes = task.latency_modes(settings)
    batch_sizes = sorted(set(settings.latency_batch_sizes))
    threads = settings.latency_threads or torch.get_num_threads()
    load_before = _load_average()
    noisy: list[str] = []
    for row in models:
        row["latency"], row["speedup"], row["speedup_range"] = {}, {}, {}
    for mode, run in modes.items():
        for bs in batch_sizes:
            n = min(len(dataset), max(settings.latency_examples, bs))
            examples = [dataset[i] for i in range(n)]
            timed = measure_latency(
                {e.name: e.model for e in entries},
                examples,
                collate,
                batch_size=bs,
                repeats=settings.latency_repeats,
                threads=threads,
                device=accelerator.device,
                run=run,
                context=accelerator.autocast,  # timed in the precision the metrics were measured in
                plain={e.name for e in entries if e.quantized},
            )
            key = f"batch_{bs}"
            teacher_ms = timed[teacher]["ms_per_example"]
            for row in models:
                t = timed[row["name"]]
                row["latency"].setdefault(mode, {})[key] = {
                    "ms_per_batch": t["ms_per_example"] * min(bs, n),
                    "ms_per_example": t["ms_per_example"],
                    "examples_per_s": t["examples_per_s"],
                    "min_ms_per_example": t["min_ms_per_example"],
                    "max_ms_per_example": t["max_ms_per_example"],
                    "spread": t["spread"],
                }
                row["speedup"].setdefault(mode, {})[key] = teacher_ms / t["ms_per_example"]
                # The models take turns within each pass, so pass r of the teacher and of this
                # model saw the same moment of the machine: the range of their ratios.
                ratios = [a / b for a, b in zip(timed[teacher]["passes_s"], t["passes_s"], strict=True)]
                row["speedup_range"].setdefault(mode, {})[key] = [min(ratios), max(ratios)]
                if t["spread"] > NOISY_SPREAD and row["name"] not in noisy:
                    noisy.append(row["name"])
    for row in models:
        largest = f"batch_{batch_sizes[-1]}"
        row["throughput"] = {mode: row["latency"][mode][largest]["examples_per_s"] for mode in modes}
    return {
        "modes": list(modes),
        "batch_sizes": batch_sizes,
        "examples": settings.latency_examples,
        "repeats": settings.latency_repeats,
        "warmup_passes": 1,
        "threads": threads,
        "statistic": "median",
        "noisy_threshold": NOISY_SPREAD,
        "noisy": noisy,  # models whose timed passes spread more than the threshold
        "load_average": [load_before, _load_average()],  # 1-minute load before and after timing
        "cpu_count": os.cpu_count(),
    }


def groups(models: list[dict[str, Any]], metric_names: list[str]) -> list[dict[str, Any]]:
    """Mean and spread of each role with several models (e.g. one student per seed)."""
    out = []
    for role in ROLES:
        rows = [r for r in models if r["role"] == role and not r.get("quantized")]
        if len(rows) < 2:
            continue
        values = {m: [r["metrics"][m] for r in rows] for m in metric_names}
        out.append(
            {
                "role": role,
                "models": [r["name"] for r in rows],
                "n": len(rows),
                "mean": {m: statistics.fmean(v) for m, v in values.items()},
                "std": {m: statistics.stdev(v) for m, v in values.items()},
                "min": {m: min(v) for m, v in values.items()},
                "max": {m: max(v) for m, v in values.items()},
            }
        )
    return out


def weights_dtype(model: nn.Module) -> str:
    """The dtype of the model's floating-point weights (``float32``, ``bfloat16``...)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes)) or "-"


def runs_in(model: nn.Module, mixed_precision: str) -> str:
    """The precision a model computes in under the accelerator's ``mixed_precision``: float32
    weights run as the autocast says, lower-precision weights (a bf16 teacher) as they are."""
    dtype = weights_dtype(model)
    if mixed_precision == "no":
        return dtype
    return f"{mixed_precision} autocast" if dtype == "float32" else f"{dtype} ({mixed_precision} autocast)"


def size_on_disk_mb(model: nn.Module, source: str) -> float:
    """Megabytes (10^6 bytes) of weight files: those of a local model folder, else of the model
    saved with ``save_pretrained`` (safetensors) to a temporary folder."""
    folder = Path(resolve_path(source)) if source else None
    if folder is not None and folder.is_dir():
        files = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
        if files:
            return sum(p.stat().st_size for p in files) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return sum(p.stat().st_size for p in Path(tmp).iterdir() if p.name.endswith(WEIGHT_SUFFIXES)) / 1e6


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # not on every platform
        return None


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux names the CPU model here; platform.processor() is often empty
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()
