"""Measured inference latency, teacher and student side by side on the same inputs and machine."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def measure_latency(
    models: dict[str, nn.Module],
    examples: list[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    *,
    batch_size: int = 1,
    repeats: int = 5,
    threads: int = 0,
    device: torch.device | str = "cpu",
    run: Callable[[nn.Module, dict[str, torch.Tensor]], Any] | None = None,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    plain: set[str] = frozenset(),
) -> dict[str, dict[str, float]]:
    """Milliseconds per example for each model, the median over ``repeats`` passes over ``examples``,
    with the fastest and slowest pass and their spread.

    Every model sees the same batches (padded per batch, as in serving). One untimed warm-up pass
    per model comes first, and the models take turns within each repeat so that a slow moment of
    the machine falls on all of them alike. ``threads`` > 0 fixes torch's intra-op threads.
    ``run(model, batch)`` is what is timed (default: a forward pass; generation for seq2seq), inside
    ``context()`` (the run's autocast: models are timed in the precision they are evaluated in),
    except the models named in ``plain`` (int8 ones, which compute as they are).
    """
    run = run or (lambda model, batch: model(**batch))
    batches = [
        {
            k: v.to(device)
            for k, v in collate(examples[i : i + batch_size]).items()
            if k != "labels" and isinstance(v, torch.Tensor)
        }
        for i in range(0, len(examples), batch_size)
    ]
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    timings: dict[str, list[float]] = {name: [] for name in models}
    try:
        with torch.inference_mode():
            for name, model in models.items():
                model.eval()
                with contextlib.nullcontext() if name in plain else context():
                    _timed(run, model, batches, device)
            for _ in range(repeats):
                for name, model in models.items():
                    with contextlib.nullcontext() if name in plain else context():
                        timings[name].append(_timed(run, model, batches, device))
    finally:
        torch.set_num_threads(previous_threads)
    n = len(examples)
    return {
        name: {
            "ms_per_example": 1000 * statistics.median(t) / n,
            "examples_per_s": n / statistics.median(t),
            "min_ms_per_example": 1000 * min(t) / n,
            "max_ms_per_example": 1000 * max(t) / n,
            # (slowest - fastest) / median of the timed passes: 0.3 means they differ by 30%.
            "spread": (max(t) - min(t)) / statistics.median(t),
            "passes_s": list(t),
            "batch_size": batch_size,
            "threads": threads or previous_threads,
        }
        for name, t in timings.items()
    }


def _timed(
    run: Callable, model: nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device | str
) -> float:
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        run(model, batch)
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
