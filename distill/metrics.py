"""Hugging Face ``evaluate`` metrics named in a recipe (``eval.metrics``), beside the built-in ones
(scikit-learn for classification, sacrebleu for translation)."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.modeling import resolve_path


def metric_label(name: str) -> str:
    """``accuracy`` -> ``accuracy``; ``./metrics/my_metric`` or ``my_metric.py`` -> ``my_metric``."""
    return Path(name.rstrip("/")).name.removesuffix(".py")


@functools.cache
def load_metric(name: str) -> Any:
    """``evaluate.load`` of a hub metric name or a local metric folder / script; one-line errors."""
    import evaluate

    try:
        return evaluate.load(resolve_path(name))
    except Exception as e:  # evaluate raises many kinds: missing module, offline, bad script
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DistillError(f"eval.metrics: cannot load metric '{name}': {reason}") from None


def compute_extra(names: list[str], predictions: list, references: list) -> dict[str, float]:
    """Every numeric value each metric returns, keyed ``LABEL/KEY`` (``exact_match/exact_match``)."""
    out: dict[str, float] = {}
    for name in names:
        result = load_metric(name).compute(predictions=predictions, references=references) or {}
        label = metric_label(name)
        for key, value in result.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # lists (per-n-gram precisions), strings (signatures)
            if math.isfinite(value):
                out[f"{label}/{key}"] = float(value)
        if not any(k.startswith(f"{label}/") for k in out):
            raise DistillError(f"eval.metrics: metric '{name}' returned no number ({sorted(result)})")
    return out
