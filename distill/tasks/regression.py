"""Regression: one number per example (STS-B-style similarity scores, ratings, reward models).

The models are sequence classifiers with one output and ``problem_type: regression`` (what
Transformers trains with its own MSE loss). The student matches the teacher's output by squared
error (``loss.soft: mse``), mixed with the squared error against the references; the report gives
Pearson's and Spearman's correlation with the references (Pearson the headline, as GLUE's STS-B)
and the mean squared error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from datasets import DatasetDict, Value
from scipy.stats import pearsonr, spearmanr
from transformers import AutoModelForSequenceClassification

from distill.config import DataConfig
from distill.errors import DistillError
from distill.losses import hard_mse
from distill.tasks import base, classification

MODEL_CLASS = AutoModelForSequenceClassification
PRIMARY_METRIC = "pearson"
PIPELINE_TAG = "text-classification"
PEFT_TASK_TYPE = "SEQ_CLS"

ENCODER_DECODER = False
TOKEN_LEVEL = False  # one output per example: a store keeps it as it is
ALIGNED_LABELS = False
soft_loss = base.distribution_soft_loss
row_seeds = base.no_row_seeds
sample_completions = base.no_sample_completions

# Texts, pairs, tokenization and batches as in classification: only the targets differ.
columns = classification.columns
max_input_length = classification.max_input_length
tokenize = classification.tokenize
collator = classification.collator
model_inputs = classification.model_inputs
infer = classification.infer
latency_modes = classification.latency_modes
teacher_targets = classification.teacher_targets
with_targets = classification.with_targets

MISSING = -100.0  # what the loop reads as "no target"


def hard_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Squared error against the reference numbers, summed over examples."""
    return hard_mse(student_logits, labels)


def check_recipe(cfg: Any) -> None:
    classification.check_recipe(cfg)
    if cfg.loss.soft != "mse":
        raise DistillError(
            f"loss.soft: regression matches the teacher's output by squared error: set loss.soft=mse "
            f"({cfg.loss.soft} compares distributions, which one number is not)"
        )


def check_models(models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any) -> None:
    """Nothing beyond the forward pass every task's models are tried on."""


def usage_snippet(path: str) -> str:
    return (
        "from transformers import pipeline\n\n"
        f'score = pipeline("text-classification", model="{path}", function_to_apply="none")\n'
        'print(score("this is great")[0]["score"])'
    )


def prepare_targets(
    raw: DatasetDict, cfg: DataConfig, teacher_config: Any, head_trained: bool
) -> tuple[DatasetDict, None]:
    """Every split's ``labels``: its numbers as floats. There are no label names."""
    feature = raw["train"].features[cfg.label_column]
    if not (isinstance(feature, Value) and feature.dtype.startswith(("float", "int", "uint"))):
        raise DistillError(
            f"data.label_column: '{cfg.label_column}' must hold numbers for regression, not {feature}"
        )
    if head_trained and int(getattr(teacher_config, "num_labels", 1)) != 1:
        raise DistillError(
            f"the teacher's head has {teacher_config.num_labels} outputs; regression needs one "
            "(set teacher.finetune.enabled=true to train a new head)"
        )
    out = DatasetDict()
    for split, ds in raw.items():
        values = [float(v) for v in ds[cfg.label_column]]
        bad = next((v for v in values if not np.isfinite(v) or v == MISSING), None)
        if bad is not None:
            reason = "is reserved: it marks a missing target" if bad == MISSING else "is not a finite number"
            raise DistillError(f"data: the label {bad} in split '{split}' {reason}")
        if "labels" in ds.column_names:
            ds = ds.remove_columns("labels")
        out[split] = ds.add_column("labels", values, feature=Value("float32"))
    if len(set(out["train"]["labels"])) < 2:
        raise DistillError(
            f"data.label_column: '{cfg.label_column}' holds one value only: nothing to regress"
        )
    return out, None


def model_kwargs(names: list[str] | None) -> dict[str, Any]:
    return {"num_labels": 1, "problem_type": "regression"}


def check_compatible(teacher_config: Any, config: Any, what: str) -> None:
    if int(config.num_labels) != 1 or int(teacher_config.num_labels) != 1:
        raise DistillError(
            f"{what} has {config.num_labels} outputs and the teacher {teacher_config.num_labels}; regression needs one each"
        )


def eval_step(
    model: Any, batch: dict[str, torch.Tensor], settings: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and reference numbers of one batch, each ``(batch,)`` in float32."""
    return infer(model, batch).float().squeeze(-1), batch["labels"].float()


def compute_metrics(
    predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
) -> dict[str, float]:
    p, r = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    constant = np.ptp(p) == 0 or np.ptp(r) == 0  # a correlation is undefined: report 0, not NaN
    return {
        "pearson": 0.0 if constant else float(pearsonr(p, r).statistic),
        "spearman": 0.0 if constant else float(spearmanr(p, r).statistic),
        "mse": float(np.mean((p - r) ** 2)),
    }


def metric_inputs(
    predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
) -> tuple[list, list]:
    return list(predictions), list(references)
