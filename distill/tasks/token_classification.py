"""Token classification (named entities, part-of-speech tags): one label per word.

The data gives each example its words (``data.text_column``: a list of words, or a text split on
whitespace) and one tag per word (``data.label_column``: a list of tag names or ids, or a string of
space-separated tags). The words are joined by single spaces and tokenized with the tokenizer's
character offsets, so any fast tokenizer aligns the same way (WordPiece, byte-level BPE,
SentencePiece): a word's tag goes on its first sub-word and the other sub-words are masked
(-100), as Transformers' token-classification examples do. The models and ``pipeline``
("token-classification") then see exactly the text a user would give them.

Items of the losses are the labelled sub-words: the soft loss is the per-token KL over the tag
logits. The report's headline is entity-level F1 (conlleval's chunks of IOB tags, as seqeval's
default mode counts them: a chunk starts at ``B-X``, or at ``I-X`` after another type or ``O``), beside
entity precision and recall and the accuracy over words. Tags without a ``B-``/``I-`` prefix are
chunks of equal consecutive tags.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict, Value
from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

from distill.config import DataConfig
from distill.errors import DistillError
from distill.tasks import base, classification

log = logging.getLogger(__name__)

MODEL_CLASS = AutoModelForTokenClassification
PRIMARY_METRIC = "f1"
PIPELINE_TAG = "token-classification"
PEFT_TASK_TYPE = "TOKEN_CLS"
hard_loss = base.cross_entropy  # cross-entropy on the reference ids

ENCODER_DECODER = False
TOKEN_LEVEL = True  # one output per labelled sub-word: a store keeps every tag's log-probability
ALIGNED_LABELS = False  # labels are tags, not the inputs shifted
soft_loss = base.distribution_soft_loss
row_seeds = base.no_row_seeds
sample_completions = base.no_sample_completions

# A label set as in classification: the same names, ids and compatibility rule.
check_compatible = classification.check_compatible
model_kwargs = classification.model_kwargs

SEQUENCE_KD = "loss.sequence_kd: sequence-level KD is for translation and causal_lm"


def check_recipe(cfg: Any) -> None:
    if cfg.loss.sequence_kd:
        raise DistillError(SEQUENCE_KD)
    if cfg.loss.on_policy > 0:
        raise DistillError("loss.on_policy: on-policy distillation is for task causal_lm")
    if cfg.data.text_pair_column:
        raise DistillError("data.text_pair_column: token classification takes one text per example")


def check_models(models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any) -> None:
    """Nothing beyond the forward pass every task's models are tried on."""


def teacher_targets(model: Any, batch: dict[str, Any], settings: dict[str, Any]) -> list[list[int]]:
    raise DistillError(SEQUENCE_KD)


def with_targets(train: Any, targets: list[list[int]]) -> Any:
    raise DistillError(SEQUENCE_KD)


def usage_snippet(path: str) -> str:
    return (
        "from transformers import pipeline\n\n"
        f'tag = pipeline("token-classification", model="{path}", aggregation_strategy="first")\n'
        'print(tag("Angela Merkel visited Paris"))'
    )


def columns(cfg: DataConfig) -> dict[str, str]:
    """The words first (what ``dedupe`` compares), then the tags."""
    return {"text_column": cfg.text_column, "label_column": cfg.label_column}


def words_of(value: Any) -> list[str]:
    """An example's words: a list as it is, a text split on whitespace."""
    if isinstance(value, str):
        return value.split()
    return [str(w) for w in value]


def _tags_of(value: Any) -> list:
    return value.split() if isinstance(value, str) else list(value)


def prepare_targets(
    raw: DatasetDict, cfg: DataConfig, teacher_config: Any, head_trained: bool
) -> tuple[DatasetDict, list[str]]:
    """Every split's tags as a ``labels`` list of ids, one per word; the tag names (id i is names[i]).

    The names and their ids as :func:`classification.list_label_set` finds them (a teacher with a
    trained head keeps its own order, matched by name).
    """
    text_feature = raw["train"].features[cfg.text_column]
    if not (
        isinstance(text_feature, Value)
        and text_feature.dtype in ("string", "large_string")
        or getattr(text_feature, "feature", None) is not None
    ):
        raise DistillError(
            f"data.text_column: '{cfg.text_column}' must hold the words (a list, or a text split on "
            f"whitespace), not {text_feature}"
        )
    tag_set = classification.list_label_set(
        raw,
        cfg,
        teacher_config,
        head_trained,
        values_of=_tags_of,
        noun="tag",
        holds="one tag per word (a list of tag names or ids, or a string of space-separated tags)",
        too_few=lambda names: f"{len(names)} tag(s) {names}: a tagger needs 2 or more",
    )
    names = tag_set.names

    def encode(words: Any, tags: Any, split: str) -> list[int]:
        words, tags = words_of(words), _tags_of(tags)
        if len(words) != len(tags):
            text = " ".join(words)
            raise DistillError(
                f"data: an example in split '{split}' has {len(words)} words and {len(tags)} tags "
                f"({text[:60] + ('...' if len(text) > 60 else '')!r})"
            )
        return [tag_set.id_of(t, split) for t in tags]

    out = DatasetDict()
    for split, ds in raw.items():
        labels = [encode(w, t, split) for w, t in zip(ds[cfg.text_column], ds[cfg.label_column], strict=True)]
        if "labels" in ds.column_names:
            ds = ds.remove_columns("labels")
        out[split] = ds.add_column("labels", labels)
    return out, names


def max_input_length(tokenizer: Any, cfg: DataConfig) -> int:
    return cfg.max_length


def word_spans(words: Sequence[str]) -> tuple[str, np.ndarray]:
    """The words joined by single spaces, and each character's word index (-1 for the spaces)."""
    text = " ".join(words)
    owner = np.full(len(text), -1, dtype=np.int64)
    position = 0
    for i, word in enumerate(words):
        owner[position : position + len(word)] = i
        position += len(word) + 1
    return text, owner


def first_subwords(offsets: Sequence[Sequence[int]], owner: np.ndarray) -> list[int]:
    """For each token (its character offsets), the word it starts, or -1: special tokens, spaces
    and the later sub-words of a word. A token's word is that of its first character that is not
    a space (byte-level BPE's tokens carry the space before a word)."""
    out, seen = [], set()
    for start, end in offsets:
        word = -1
        if end > start:
            inside = owner[start:end]
            inside = inside[inside >= 0]
            if len(inside) and int(inside[0]) not in seen:
                word = int(inside[0])
                seen.add(word)
        out.append(word)
    return out


def tokenize(splits: DatasetDict, tokenizer: Any, cfg: DataConfig) -> DatasetDict:
    """Input ids of the joined words (truncated to ``data.max_length``) and the word tags on each
    word's first sub-word. Words cut off by truncation carry no label and are not scored."""
    if not getattr(tokenizer, "is_fast", False):
        raise DistillError(
            "token classification needs a fast tokenizer (it aligns tags by character offsets); "
            f"{type(tokenizer).__name__} is not one"
        )

    def encode(batch: dict[str, list]) -> dict[str, list]:
        joined = [word_spans(words_of(w)) for w in batch[cfg.text_column]]
        enc = tokenizer(
            [text for text, _ in joined],
            truncation=True,
            max_length=cfg.max_length,
            return_offsets_mapping=True,
        )
        labels = []
        for (_, owner), offsets, tags in zip(joined, enc["offset_mapping"], batch["labels"], strict=True):
            labels.append([tags[w] if w >= 0 else -100 for w in first_subwords(offsets, owner)])
        out = {k: v for k, v in enc.items() if k != "offset_mapping"}
        out["labels"] = labels
        out["words_scored"] = [sum(1 for t in row if t != -100) for row in labels]
        out["words"] = [len(t) for t in batch["labels"]]
        return out

    out = DatasetDict()
    for split, ds in splits.items():
        drop = [c for c in ds.column_names if c != "labels"]
        encoded = ds.map(encode, batched=True, remove_columns=drop, desc=f"tokenizing {split}")
        cut = sum(s < w for s, w in zip(encoded["words_scored"], encoded["words"], strict=True))
        if cut:
            log.warning(
                "split '%s': %d of %d examples are longer than data.max_length=%d tokens; their last "
                "words are not seen or scored",
                split,
                cut,
                len(encoded),
                cfg.max_length,
            )
        out[split] = encoded.remove_columns(["words_scored", "words"])
    return out


def collator(tokenizer: Any, model_config: Any = None) -> Any:
    return DataCollatorForTokenClassification(tokenizer, return_tensors="pt")


# The model sees a batch and is timed as a sentence classifier is: its logits from one forward pass.
model_inputs = classification.model_inputs
infer = classification.infer
latency_modes = classification.latency_modes


def eval_step(
    model: Any, batch: dict[str, torch.Tensor], settings: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true tag ids at each word's first sub-word, ``(batch, tokens)``, -100 elsewhere."""
    labels = batch["labels"]
    predicted = infer(model, batch).argmax(-1)
    return torch.where(labels == -100, torch.full_like(predicted, -100), predicted), labels


def tag_sequences(
    predictions: list, references: list, label_names: list[str] | None
) -> tuple[list[list[str]], list[list[str]]]:
    """Per example, the predicted and true tag names of its scored words, in order."""
    names = list(label_names or [])
    hyps, refs = [], []
    for p_row, r_row in zip(predictions, references, strict=True):
        pairs = [(p, r) for p, r in zip(p_row, r_row, strict=False) if r != -100]
        hyps.append([names[p] if 0 <= p < len(names) else str(p) for p, _ in pairs])
        refs.append([names[r] if r < len(names) else str(r) for _, r in pairs])
    return hyps, refs


def _split(tag: str) -> tuple[str, str]:
    """``B-PER`` -> (B, PER); ``O`` -> (O, ''); a tag without a B/I prefix is its own type (IO)."""
    if tag == "O":
        return "O", ""
    head, sep, rest = tag.partition("-")
    if sep and head in ("B", "I"):
        return head, rest
    return "I", tag


def chunks(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The entities of one tag sequence, as (type, first word, last word), by conlleval's rules."""
    found = set()
    kind, start = "", -1
    for i, tag in enumerate([*tags, "O"]):
        prefix, t = _split(tag)
        continues = prefix == "I" and t == kind and start >= 0
        if not continues and start >= 0:
            found.add((kind, start, i - 1))
            kind, start = "", -1
        if prefix in ("B", "I") and not continues:
            kind, start = t, i
    return found


def compute_metrics(
    predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
) -> dict[str, float]:
    """Entity-level (micro) precision, recall and F1, and the accuracy over scored words."""
    hyps, refs = tag_sequences(predictions, references, label_names)
    true_pos = predicted = gold = words = right = 0
    for h, r in zip(hyps, refs, strict=True):
        h_chunks, r_chunks = chunks(h), chunks(r)
        true_pos += len(h_chunks & r_chunks)
        predicted += len(h_chunks)
        gold += len(r_chunks)
        words += len(r)
        right += sum(a == b for a, b in zip(h, r, strict=True))
    precision = true_pos / predicted if predicted else 0.0
    recall = true_pos / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall, "accuracy": right / words if words else 0.0}


def metric_inputs(
    predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
) -> tuple[list, list]:
    """Tag names per example, as ``evaluate``'s seqeval takes them."""
    return tag_sequences(predictions, references, label_names)
