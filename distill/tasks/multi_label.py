"""Multi-label classification: each example carries any number of labels from one set (topics,
emotions, moderation flags), none included.

The models are sequence classifiers with ``problem_type: multi_label_classification``: one logit
per label, each read through a sigmoid (what ``pipeline("text-classification")`` then applies).
The data gives each example its labels as a list of names or integer ids (a ``Sequence`` of
``ClassLabel`` from the hub), or as a string of names separated by commas; an empty list is an
example with no label. The targets are multi-hot.

The items of the losses are the (example, label) cells: the hard loss is the binary
cross-entropy summed over cells, the soft loss the per-label binary divergence between the
teacher's and the student's sigmoid probabilities softened by the temperature (``loss.soft: kl``:
KL(teacher ‖ student) of the two Bernoulli distributions, ``reverse_kl`` the other way, ``mse``
the squared difference of the logits), scaled by T² as the softmax KD is. Dividing by the cells
gives the mean binary cross-entropy, as Transformers' own loss for this problem type.

The report gives micro and macro F1 and the exact-match ratio at a probability of 0.5, and the
mean average precision over the labels that occur in the evaluated split (threshold-free).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict, Sequence, Value
from sklearn.metrics import average_precision_score, f1_score
from transformers import AutoModelForSequenceClassification

from distill.config import DataConfig
from distill.errors import DistillError
from distill.losses import binary_kl, binary_reverse_kl, hard_bce, logit_mse
from distill.tasks import base, classification

log = logging.getLogger(__name__)

MODEL_CLASS = AutoModelForSequenceClassification
PRIMARY_METRIC = "micro_f1"
PIPELINE_TAG = "text-classification"
PEFT_TASK_TYPE = "SEQ_CLS"
PROBLEM_TYPE = "multi_label_classification"
THRESHOLD = 0.5  # a label is predicted when its probability is above this

ENCODER_DECODER = False
TOKEN_LEVEL = False  # one output vector per example: a store keeps its logits as they are
ALIGNED_LABELS = False
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


SOFT = {"kl": binary_kl, "reverse_kl": binary_reverse_kl, "mse": logit_mse}


def soft_loss(name: str, sparse: bool) -> Callable[..., torch.Tensor]:
    """The per-label divergences (a store of this task keeps every logit: never sparse)."""
    return SOFT[name]


def hard_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with the multi-hot references, summed over the cells."""
    return hard_bce(student_logits, labels)


def check_recipe(cfg: Any) -> None:
    classification.check_recipe(cfg)
    if cfg.loss.soft not in SOFT:
        raise DistillError(
            f"loss.soft: {cfg.loss.soft} is not a per-label divergence; multi_label_classification "
            f"takes {', '.join(SOFT)}"
        )


def check_models(models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any) -> None:
    """Nothing beyond the forward pass every task's models are tried on."""


def usage_snippet(path: str) -> str:
    return (
        "from transformers import pipeline\n\n"
        f'tag = pipeline("text-classification", model="{path}", top_k=None)\n'
        f'print([p["label"] for p in tag("this is great") if p["score"] > {THRESHOLD}])'
    )


def _labels_of(value: Any) -> list:
    """An example's labels: a list as it is, a string split on commas (blank: none)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value)


def prepare_targets(
    raw: DatasetDict, cfg: DataConfig, teacher_config: Any, head_trained: bool
) -> tuple[DatasetDict, list[str]]:
    """Every split's ``labels``: a multi-hot list of floats, one per label; the label names.

    The names and their ids as :func:`classification.list_label_set` finds them (a teacher with a
    trained head keeps its own order, matched by name).
    """
    if head_trained:
        problem = getattr(teacher_config, "problem_type", None)
        if problem not in (None, PROBLEM_TYPE):
            raise DistillError(
                f"the teacher's head was trained for {problem}, not {PROBLEM_TYPE}; "
                "set teacher.finetune.enabled=true to train a new head"
            )
    label_set = classification.list_label_set(
        raw,
        cfg,
        teacher_config,
        head_trained,
        values_of=_labels_of,
        noun="label",
        holds="each example's labels (a list of label names or ids, or a string of names separated by commas)",
        too_few=None
        if head_trained
        else lambda names: (
            f"{len(names)} label(s) {names} in the training split: multi-label classification needs 2 or more"
        ),
    )
    names = label_set.names

    def encode(value: Any, split: str) -> list[float]:
        hot = [0.0] * len(names)
        for t in _labels_of(value):
            hot[label_set.id_of(t, split)] = 1.0
        return hot

    out = DatasetDict()
    for split, ds in raw.items():
        labels = [encode(v, split) for v in ds[cfg.label_column]]
        if "labels" in ds.column_names:
            ds = ds.remove_columns("labels")
        out[split] = ds.add_column("labels", labels, feature=Sequence(Value("float32")))
    counts = np.asarray(out["train"]["labels"]).sum(-1)
    if len(counts) and (counts == 1).all():
        log.warning(
            "data: every training example has exactly one label: task classification (softmax over "
            "the labels) fits such data better"
        )
    return out, names


def model_kwargs(names: list[str] | None) -> dict[str, Any]:
    return {**classification.model_kwargs(names), "problem_type": PROBLEM_TYPE}


def check_compatible(teacher_config: Any, config: Any, what: str) -> None:
    classification.check_compatible(teacher_config, config, what)


def eval_step(
    model: Any, batch: dict[str, torch.Tensor], settings: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each label's probability and the multi-hot references of one batch, ``(batch, labels)``."""
    return torch.sigmoid(infer(model, batch).float()), batch["labels"].float()


def compute_metrics(
    predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
) -> dict[str, float]:
    probs, refs = np.asarray(predictions, dtype=np.float64), np.asarray(references) > 0.5
    predicted = probs > THRESHOLD
    occurring = refs.any(0)  # average precision is undefined for a label without positives
    return {
        "micro_f1": float(f1_score(refs, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(refs, predicted, average="macro", zero_division=0)),
        "exact_match": float((predicted == refs).all(-1).mean()),
        "mean_average_precision": (
            float(average_precision_score(refs[:, occurring], probs[:, occurring], average="macro"))
            if occurring.any()
            else 0.0
        ),
    }


def metric_inputs(
    predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
) -> tuple[list, list]:
    """As ``evaluate``'s multi-label metrics (``f1`` with config ``multilabel``) take them: 0/1 rows."""
    predicted = (np.asarray(predictions) > THRESHOLD).astype(int).tolist()
    return predicted, (np.asarray(references) > 0.5).astype(int).tolist()
