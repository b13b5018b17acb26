"""Text classification: what differs from other tasks, in one place.

Every task module offers the same names: ``MODEL_CLASS``, ``PRIMARY_METRIC``, ``PIPELINE_TAG``,
``usage_snippet``, ``columns``,
``prepare_targets``, ``model_kwargs``, ``max_input_length``, ``tokenize``, ``collator``, ``model_inputs``, ``infer``,
``latency_modes``, ``eval_step``, ``compute_metrics`` and ``metric_inputs``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, DatasetDict, Value
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from distill.config import DataConfig
from distill.errors import DistillError
from distill.tasks import base

log = logging.getLogger(__name__)

MODEL_CLASS = AutoModelForSequenceClassification
PRIMARY_METRIC = "accuracy"
PIPELINE_TAG = "text-classification"


ENCODER_DECODER = False
TOKEN_LEVEL = False  # one output per example: the teacher store keeps every class's log-probability
ALIGNED_LABELS = False  # labels are not the inputs shifted
PEFT_TASK_TYPE = "SEQ_CLS"
hard_loss = base.cross_entropy  # cross-entropy on the reference ids
# No on-policy sampling (loss.on_policy is for causal_lm): refused in one line.
soft_loss = base.distribution_soft_loss
row_seeds = base.no_row_seeds
sample_completions = base.no_sample_completions


def check_recipe(cfg: Any) -> None:
    """The recipe's rules for this task (beyond each section's own): what it cannot take."""
    if cfg.loss.sequence_kd:
        raise DistillError("loss.sequence_kd: sequence-level KD is for translation and causal_lm")
    if cfg.loss.on_policy > 0:
        raise DistillError("loss.on_policy: on-policy distillation is for task causal_lm")


def check_models(models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any) -> None:
    """Nothing beyond the forward pass every task's models are tried on."""


def teacher_targets(model: Any, batch: dict[str, Any], settings: dict[str, Any]) -> list[list[int]]:
    raise DistillError("loss.sequence_kd: sequence-level KD is for translation and causal_lm")


def with_targets(train: Any, targets: list[list[int]]) -> Any:
    raise DistillError("loss.sequence_kd: sequence-level KD is for translation and causal_lm")


def usage_snippet(path: str) -> str:
    """How a user loads and runs a model folder of this task with plain transformers."""
    return (
        "from transformers import pipeline\n\n"
        f'classify = pipeline("text-classification", model="{path}")\n'
        'print(classify("this is great"))'
    )


_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


def columns(cfg: DataConfig) -> dict[str, str]:
    """The columns this task reads: the text first (what ``dedupe`` compares), then the label."""
    out = {"text_column": cfg.text_column, "label_column": cfg.label_column}
    if cfg.text_pair_column:
        out["text_pair_column"] = cfg.text_pair_column
    return out


def prepare_targets(
    raw: DatasetDict, cfg: DataConfig, teacher_config: Any, head_trained: bool
) -> tuple[DatasetDict, list[str]]:
    """Give every split an integer ``labels`` column and decide the label names (id ``i`` is ``names[i]``).

    The order comes from ``data.label_names``, else the data (a ``ClassLabel``'s names, sorted
    string labels, or integer ids). When the teacher already has a trained head with named labels,
    the data's labels are matched to the teacher's by name and take the teacher's order.
    """
    feature = raw["train"].features[cfg.label_column]
    if isinstance(feature, ClassLabel):
        kind, data_names = "ids", list(feature.names)
    elif isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        kind, data_names = "names", sorted({str(v) for v in raw["train"][cfg.label_column]})
    elif isinstance(feature, Value) and feature.dtype.startswith(("int", "uint")):
        kind, data_names = "ids", None
    else:
        raise DistillError(
            f"data.label_column: '{cfg.label_column}' must hold label names or integer ids, not {feature}"
        )

    if cfg.label_names is not None:
        names = list(cfg.label_names)
    elif data_names is not None:
        names = data_names
    else:  # bare integer labels
        occurring = sorted({int(v) for v in raw["train"][cfg.label_column]})
        if head_trained:  # they are the teacher's ids
            n = int(teacher_config.num_labels)
            if occurring[0] < 0 or occurring[-1] >= n:
                raise DistillError(
                    f"data: the integer labels of '{cfg.label_column}' run {occurring[0]}-{occurring[-1]}, "
                    f"but the teacher's head has {n} labels (ids 0-{n - 1}); set data.label_names to the "
                    "teacher's label names, or teacher.finetune.enabled=true to train a new head"
                )
            names = [str(i) for i in range(n)]
        elif occurring == list(range(len(occurring))):
            names = [str(i) for i in occurring]
        else:  # star ratings 1-5, codes with gaps: ids for the values that occur, named by them
            kind, names = "values", [str(v) for v in occurring]
            log.info(
                "data: the integer labels %s of '%s' become ids 0-%d (their names are the values)",
                ", ".join(names),
                cfg.label_column,
                len(names) - 1,
            )
    if len(names) < 2 and not head_trained:
        raise DistillError(
            f"data.label_column: '{cfg.label_column}' has {len(names)} label {names} in the training "
            "split: a classifier needs 2 or more"
        )

    if head_trained:
        names = align_with_teacher(
            names, teacher_config, explicit=cfg.label_names is not None or data_names is not None
        )

    index = {name: i for i, name in enumerate(names)}
    folded = {name.casefold(): i for i, name in enumerate(names)}
    # Integer labels: the data's id -> its name -> our id (the teacher may have changed the order).
    source_names = cfg.label_names if cfg.label_names is not None else data_names
    by_data_id = (
        None if kind != "ids" or source_names is None else [folded[n.casefold()] for n in source_names]
    )

    def encode(values: list[Any], split: str) -> list[int]:
        out = []
        for v in values:
            if kind in ("names", "values"):
                i = index.get(str(v), folded.get(str(v).casefold()))
                if i is None:
                    raise DistillError(
                        f"data: label '{v}' in split '{split}' is not one of the labels {names}"
                    )
            else:
                v = int(v)
                if not 0 <= v < len(names):
                    raise DistillError(
                        f"data: label {v} in split '{split}' is outside the label set (0-{len(names) - 1}: {names})"
                    )
                i = by_data_id[v] if by_data_id is not None else v
            out.append(i)
        return out

    out = DatasetDict()
    for split, ds in raw.items():
        labels = encode(ds[cfg.label_column], split)
        if "labels" in ds.column_names:
            ds = ds.remove_columns("labels")
        out[split] = ds.add_column("labels", labels)
    return out, names


def align_with_teacher(names: list[str], teacher_config: Any, explicit: bool) -> list[str]:
    """The label names of a teacher with a trained head: its own, in its order, when the data's
    (named) labels are among them (a split may lack a label the teacher has); else refused."""
    n_teacher = int(teacher_config.num_labels)
    teacher_names = [str(teacher_config.id2label[i]) for i in range(n_teacher)]
    named = not all(_GENERIC_LABEL.match(n) for n in teacher_names)
    if explicit and named and {n.casefold() for n in names} < {n.casefold() for n in teacher_names}:
        return teacher_names
    if n_teacher != len(names):
        raise DistillError(
            f"the teacher's head has {n_teacher} labels {teacher_names} but the data has {len(names)} {names}; "
            "set teacher.finetune.enabled=true to train a new head"
        )
    if all(_GENERIC_LABEL.match(n) for n in teacher_names):
        return names  # an unnamed head: the data's ids are taken to be the head's
    if not explicit:
        return teacher_names  # bare integer labels: they are the teacher's ids
    if {n.casefold() for n in teacher_names} != {n.casefold() for n in names}:
        raise DistillError(
            f"the teacher's labels {teacher_names} differ from the data's {names}; "
            "set data.label_names to the teacher's label names or teacher.finetune.enabled=true"
        )
    return teacher_names  # the same labels, perhaps in another order: take the teacher's order


class LabelSet:
    """Label names, and the id of each value a list-valued label column holds (multi-label's labels
    per example, token classification's tags per word), as given by name or by integer id."""

    def __init__(self, names: list[str], kind: str, source_names: list[str] | None, noun: str) -> None:
        self.names, self.kind, self.noun = names, kind, noun
        self._index = {name: i for i, name in enumerate(names)}
        self._folded = {name.casefold(): i for i, name in enumerate(names)}
        # Ids of the data -> their names -> our ids (a trained teacher may order them otherwise).
        self._by_data_id = (
            None
            if kind == "names" or source_names is None
            else [self._folded[n.casefold()] for n in source_names]
        )

    def id_of(self, value: Any, split: str) -> int:
        if self.kind == "names":
            i = self._index.get(str(value), self._folded.get(str(value).casefold()))
            if i is None:
                raise DistillError(
                    f"data: {self.noun} '{value}' in split '{split}' is not one of the {self.noun}s {self.names}"
                )
            return i
        t = int(value)
        if not 0 <= t < len(self.names):
            raise DistillError(
                f"data: {self.noun} {t} in split '{split}' is outside the {self.noun} set "
                f"(0-{len(self.names) - 1}: {self.names})"
            )
        return self._by_data_id[t] if self._by_data_id is not None else t


def list_label_set(
    raw: DatasetDict,
    cfg: DataConfig,
    teacher_config: Any,
    head_trained: bool,
    *,
    values_of: Callable[[Any], list[Any]],
    noun: str,
    holds: str,
    too_few: Callable[[list[str]], str] | None,
) -> LabelSet:
    """The label set of a column holding a list of labels per example (or a string of them).

    The names come from ``data.label_names``, else the data (a sequence of ``ClassLabel``: its
    names; label strings: sorted; integer ids: 0 to the largest that occurs). A teacher with a
    trained head keeps its own order, matched by name (:func:`align_with_teacher`). ``holds`` says
    what the column must hold; ``too_few`` words the refusal of a set of fewer than 2 (None: allowed).
    """
    feature = raw["train"].features[cfg.label_column]
    inner = getattr(feature, "feature", None)  # datasets' List / Sequence of one feature
    string = ("string", "large_string")
    if isinstance(inner, ClassLabel):
        kind, data_names = "ids", list(inner.names)
    elif isinstance(inner, Value) and inner.dtype.startswith(("int", "uint")):
        kind, data_names = "ids", None
    elif (isinstance(inner, Value) and inner.dtype in string) or (
        isinstance(feature, Value) and feature.dtype in string
    ):
        kind = "names"
        data_names = sorted({str(t) for v in raw["train"][cfg.label_column] for t in values_of(v)})
    else:
        raise DistillError(f"data.label_column: '{cfg.label_column}' must hold {holds}, not {feature}")

    if cfg.label_names is not None:
        names = list(cfg.label_names)
    elif data_names is not None:
        names = data_names
    else:
        found = sorted({int(t) for v in raw["train"][cfg.label_column] for t in v})
        names = [str(i) for i in range(found[-1] + 1)] if found else []
    if len(names) < 2 and too_few is not None:
        raise DistillError(f"data.label_column: '{cfg.label_column}' has {too_few(names)}")
    if head_trained:
        names = align_with_teacher(
            names, teacher_config, explicit=cfg.label_names is not None or data_names is not None
        )
    source_names = cfg.label_names if cfg.label_names is not None else data_names
    return LabelSet(names, kind, source_names, noun)


def check_compatible(teacher_config: Any, config: Any, what: str) -> None:
    """A model compared with the teacher must predict the same label set, in the same order."""
    theirs = [str(config.id2label[i]) for i in range(int(config.num_labels))]
    ours = [str(teacher_config.id2label[i]) for i in range(int(teacher_config.num_labels))]
    if theirs != ours:
        raise DistillError(f"{what} predicts the labels {theirs}, the teacher {ours}")


def model_kwargs(names: list[str] | None) -> dict[str, Any]:
    """Keyword arguments that give a model this label set (``pipeline`` then reports label names)."""
    assert names is not None
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }


def max_input_length(tokenizer: Any, cfg: DataConfig) -> int:
    """The longest input after tokenization: texts are truncated to ``data.max_length``."""
    return cfg.max_length


def tokenize(splits: DatasetDict, tokenizer: Any, cfg: DataConfig) -> DatasetDict:
    """Tokenize every split (truncating to ``max_length``, no padding: the collator pads per batch).

    ``datasets`` caches the result next to the source data, keyed by the tokenizer and settings.
    """

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = batch[cfg.text_column]
        pairs = batch[cfg.text_pair_column] if cfg.text_pair_column else None
        return tokenizer(texts, pairs, truncation=True, max_length=cfg.max_length)

    out = DatasetDict()
    for split, ds in splits.items():
        drop = [c for c in ds.column_names if c != "labels"]
        out[split] = ds.map(encode, batched=True, remove_columns=drop, desc=f"tokenizing {split}")
    return out


def collator(tokenizer: Any, model_config: Any = None) -> Any:
    return DataCollatorWithPadding(tokenizer, return_tensors="pt")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model's ``forward`` takes from a collated batch."""
    return {k: v for k, v in batch.items() if k != "labels"}


def infer(model: Any, batch: dict[str, torch.Tensor], settings: Any = None) -> torch.Tensor:
    """What serving does with a batch (timed by the latency measurement): the class logits."""
    return model(**model_inputs(batch)).logits


def latency_modes(settings: Any = None) -> dict[str, Any]:
    """What the latency measurement times: one forward pass."""
    return {"forward": lambda model, batch: infer(model, batch, settings)}


def eval_step(
    model: Any, batch: dict[str, torch.Tensor], settings: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true class ids of one batch, each ``(batch,)``."""
    return infer(model, batch).argmax(-1), batch["labels"]


def compute_metrics(
    predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
) -> dict[str, float]:
    predictions, references = np.asarray(predictions), np.asarray(references)
    return {
        "accuracy": float(accuracy_score(references, predictions)),
        "macro_f1": float(f1_score(references, predictions, average="macro")),
    }


def metric_inputs(
    predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
) -> tuple[list, list]:
    """Predictions and references as a Hugging Face ``evaluate`` metric takes them: class ids."""
    return list(predictions), list(references)
