"""Translation with encoder-decoder models (Marian, BART, MBart, T5 families): what differs from classification.

Same names as :mod:`distill.tasks.classification`. Items of the losses are target tokens; padding
in ``labels`` is -100. Metrics are corpus BLEU and chrF (sacrebleu) of the detokenized outputs
against the raw target text of the split (kept as ``reference`` in held-out splits): not against
the tokenized labels, which lose unknown words and are cut at ``data.max_target_length``.
"""

from __future__ import annotations

import logging
from typing import Any

import sacrebleu
import torch
from datasets import DatasetDict
from transformers import AutoModelForSeq2SeqLM

from distill.config import DataConfig
from distill.errors import DistillError
from distill.modeling import decoder_inputs_builder, generation_start
from distill.tasks import base

log = logging.getLogger(__name__)

MODEL_CLASS = AutoModelForSeq2SeqLM
REFERENCE = "reference"  # held-out splits: the raw target text
PRIMARY_METRIC = "bleu"
PIPELINE_TAG = "translation"


ENCODER_DECODER = True
TOKEN_LEVEL = True  # one output per target token: the teacher store keeps its top-k
ALIGNED_LABELS = False  # labels are the target, apart from the inputs
PEFT_TASK_TYPE = "SEQ_2_SEQ_LM"
hard_loss = base.cross_entropy  # cross-entropy on the reference ids
# No on-policy sampling (loss.on_policy is for causal_lm): refused in one line.
soft_loss = base.distribution_soft_loss
row_seeds = base.no_row_seeds
sample_completions = base.no_sample_completions


def check_recipe(cfg: Any) -> None:
    """The recipe's rules for this task: where source and target come from, the losses it takes."""
    d = cfg.data
    if d.translation_column:
        if not (d.source_lang and d.target_lang):
            raise DistillError("data.source_lang / data.target_lang: required with data.translation_column")
    elif not (d.source_column and d.target_column):
        raise DistillError(
            "data: translation needs data.source_column and data.target_column, "
            "or data.translation_column with data.source_lang and data.target_lang"
        )
    if cfg.loss.hidden_weight > 0:
        raise DistillError("loss.hidden_weight: hidden-state losses are for classification only, so far")
    if cfg.loss.on_policy > 0:
        raise DistillError("loss.on_policy: on-policy distillation is for task causal_lm")


def teacher_targets(model: Any, batch: dict[str, Any], settings: dict[str, Any]) -> list[list[int]]:
    """Sequence-level KD: the teacher's translations of the batch's sources (beam search with the
    recipe's beams), each without the decoder start token and ending with the end token."""
    generated = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        num_beams=settings["num_beams"],
        max_new_tokens=settings["max_new_tokens"],
        do_sample=False,
    )
    return [_clean(sequence, model) for sequence in generated.tolist()]


def _clean(sequence: list[int], model: Any) -> list[int]:
    """A generated sequence as training labels: no decoder start token (the one ``generate()``
    started with), nothing after the end token."""
    start = generation_start(model)
    eos = model.config.eos_token_id
    pad = model.config.pad_token_id
    if sequence and sequence[0] == start:
        sequence = sequence[1:]
    if eos in sequence:
        sequence = sequence[: sequence.index(eos) + 1]
    else:
        sequence = [t for t in sequence if t != pad] + [eos]
    return sequence


def with_targets(train: Any, targets: list[list[int]]) -> Any:
    """``train`` with the given token ids as its labels."""
    return train.remove_columns("labels").add_column("labels", targets)


def usage_snippet(path: str) -> str:
    """How a user loads and runs a model folder of this task with plain transformers."""
    return (
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{path}")\n'
        f'model = AutoModelForSeq2SeqLM.from_pretrained("{path}")\n'
        'batch = tokenizer(["a sentence to translate"], return_tensors="pt")\n'
        "print(tokenizer.batch_decode(model.generate(**batch, num_beams=4), skip_special_tokens=True))"
    )


def columns(cfg: DataConfig) -> dict[str, str]:
    """The columns this task reads: the source first (what ``dedupe`` compares), then the target."""
    if cfg.translation_column:
        return {"translation_column": cfg.translation_column}
    return {"source_column": cfg.source_column, "target_column": cfg.target_column}


def prepare_targets(
    raw: DatasetDict, cfg: DataConfig, teacher_config: Any, head_trained: bool
) -> tuple[DatasetDict, None]:
    """Every split as two text columns, ``source`` and ``target``. There are no label names."""
    out = DatasetDict()
    for split, ds in raw.items():
        if cfg.translation_column:
            available = sorted(ds[0][cfg.translation_column]) if len(ds) else []
            for key, lang in (("source_lang", cfg.source_lang), ("target_lang", cfg.target_lang)):
                if lang not in available:
                    raise DistillError(
                        f"data.{key}: language '{lang}' is not in column '{cfg.translation_column}' of split "
                        f"'{split}' (languages: {', '.join(available)})"
                    )

            def pick(batch: dict[str, list]) -> dict[str, list]:
                pairs = batch[cfg.translation_column]
                return {
                    "source": [p[cfg.source_lang] for p in pairs],
                    "target": [p[cfg.target_lang] for p in pairs],
                }
        else:

            def pick(batch: dict[str, list]) -> dict[str, list]:
                return {"source": batch[cfg.source_column], "target": batch[cfg.target_column]}

        out[split] = ds.map(pick, batched=True, remove_columns=ds.column_names, desc=f"reading {split}")
    return out, None


def model_kwargs(names: list[str] | None) -> dict[str, Any]:
    return {}


def max_input_length(tokenizer: Any, cfg: DataConfig) -> int:
    """The longest source after tokenization: ``data.max_length``, or the tokenizer's
    ``model_max_length`` if smaller."""
    model_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_limit, int) and 0 < model_limit < cfg.max_length:
        return model_limit
    return cfg.max_length


def tokenize(splits: DatasetDict, tokenizer: Any, cfg: DataConfig) -> DatasetDict:
    """Sources (with ``source_prefix``) and targets to token ids, truncated with a warning.

    Sources longer than ``data.max_length`` (or than the tokenizer's ``model_max_length``, if
    smaller) and targets longer than ``data.max_target_length`` are cut, and the counts logged.
    Splits other than ``train`` keep the raw target text as ``reference``, what metrics compare with.
    """
    source_limit = max_input_length(tokenizer, cfg)
    if source_limit < cfg.max_length:
        log.warning(
            "data.max_length %d is more than the model allows; using %d", cfg.max_length, source_limit
        )

    def encode(batch: dict[str, list]) -> dict[str, list]:
        sources = [cfg.source_prefix + s for s in batch["source"]]
        full = tokenizer(sources)["input_ids"]
        enc = tokenizer(sources, max_length=source_limit, truncation=True)
        full_targets = tokenizer(text_target=batch["target"])["input_ids"]
        labels = tokenizer(text_target=batch["target"], max_length=cfg.max_target_length, truncation=True)[
            "input_ids"
        ]
        enc["labels"] = labels
        enc["source_truncated"] = [len(f) > source_limit for f in full]
        enc["target_truncated"] = [len(f) > cfg.max_target_length for f in full_targets]
        return enc

    out = DatasetDict()
    for split, ds in splits.items():
        keep = [] if split == "train" else ["target"]
        drop = [c for c in ds.column_names if c not in keep]
        tokenized = ds.map(encode, batched=True, remove_columns=drop, desc=f"tokenizing {split}")
        if keep:
            tokenized = tokenized.rename_column("target", REFERENCE)
        for side, limit in (("source", source_limit), ("target", cfg.max_target_length)):
            cut = sum(tokenized[f"{side}_truncated"])
            if cut:
                log.warning(
                    "split '%s': %d %ss longer than %d tokens were truncated", split, cut, side, limit
                )
        out[split] = tokenized.remove_columns(["source_truncated", "target_truncated"])
    return out


def _masks_without_cache(models: dict[str, Any], row: dict[str, Any], decoder_ids: torch.Tensor) -> None:
    """Each model computes the same given whole decoder inputs with and without ``use_cache``: the
    loop calls the models as ``forward`` defaults, and a family that builds its causal mask only
    without the cache (FSMT) would train a decoder that sees the tokens it is to predict."""
    ids = torch.tensor([list(row["input_ids"])])
    for role, model in models.items():
        dispatched = bool(getattr(model, "hf_device_map", None))
        device = torch.device("cpu") if dispatched else getattr(model, "device", torch.device("cpu"))
        inputs = {
            "input_ids": ids.to(device),
            "attention_mask": torch.ones_like(ids).to(device),
            "decoder_input_ids": decoder_ids.to(device),
        }
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.inference_mode():
                default = model(**inputs).logits.float()
                uncached = model(**inputs, use_cache=False).logits.float()
        finally:
            model.train(was_training)
        if not torch.allclose(default, uncached, rtol=1e-3, atol=1e-4):
            raise DistillError(
                f"the {role} ({model.config.model_type}) computes otherwise on whole decoder inputs when "
                "config.use_cache is on (as training runs it: without a causal mask); set use_cache to "
                "false in its config.json (generation keeps its cache through generation_config.json)"
            )


def check_models(models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any) -> None:
    """Every model builds its decoder inputs as the collator does (the teacher's family rule), and
    ``generate()`` starts with the token the decoder is trained to start with: a decoder trained
    behind one token and run behind another translates worse, silently."""
    width = max(len(r["labels"]) for r in rows)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        labels[i, : len(r["labels"])] = torch.tensor(r["labels"], dtype=torch.long)
    first = next(iter(models.values()))
    expected = decoder_inputs_builder(first.config)(labels)
    base.try_generate(models, rows[0])
    _masks_without_cache(models, rows[0], expected[:1, : len(rows[0]["labels"])])
    for role, model in models.items():
        built = decoder_inputs_builder(model.config)(labels)
        if not torch.equal(built, expected):
            raise DistillError(
                f"the {role} ({model.config.model_type}) builds its decoder inputs from the targets "
                f"differently from the teacher ({first.config.model_type}); use a student of the "
                "teacher's family"
            )
        starts = sorted(set(built[:, 0].tolist()))
        start = generation_start(model)
        if starts != [start]:
            names = ", ".join(f"{t} ({tokenizer.convert_ids_to_tokens(t)!r})" for t in starts)
            shown = "none" if start is None else f"{start} ({tokenizer.convert_ids_to_tokens(start)!r})"
            fix = (
                f"set decoder_start_token_id to {starts[0]} in its config.json and generation_config.json"
                if len(starts) == 1
                else "the targets do not all end with the same token: check the tokenizer's end token"
            )
            raise DistillError(
                f"the {role} ({model.config.model_type}) is trained with decoder inputs starting with "
                f"token {names} but generate() starts with {shown}; {fix}"
            )


class Seq2SeqCollator:
    """Pads inputs (tokenizer's pad id) and labels (-100), and builds ``decoder_input_ids``.

    ``decoder_input_ids`` are built from the labels the family's own way
    (:func:`decoder_inputs_builder`), as the models do themselves when given labels: the loss step
    passes them explicitly because it calls the models without labels (the losses are computed
    outside).
    """

    def __init__(self, tokenizer: Any, model_config: Any):
        self.tokenizer = tokenizer
        self.shift = decoder_inputs_builder(model_config)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        labels = [list(r["labels"]) for r in rows]
        inputs = self.tokenizer.pad(
            [{k: v for k, v in r.items() if k not in ("labels", REFERENCE)} for r in rows],
            return_tensors="pt",
        )
        width = max(len(x) for x in labels)
        padded = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, ids in enumerate(labels):
            padded[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        batch = {**inputs, "labels": padded, "decoder_input_ids": self.shift(padded)}
        if rows and REFERENCE in rows[0]:
            batch[REFERENCE] = [r[REFERENCE] for r in rows]  # a list of strings, not a tensor
        return batch


def collator(tokenizer: Any, model_config: Any = None) -> Seq2SeqCollator:
    return Seq2SeqCollator(tokenizer, model_config)


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k not in ("labels", REFERENCE)}


def infer(model: Any, batch: dict[str, torch.Tensor], settings: Any = None) -> torch.Tensor:
    """Generation, as serving does it: beam search with the recipe's beams and length limit."""
    return _generate_with(settings, getattr(settings, "num_beams", 4))(model, batch)


def check_compatible(teacher_config: Any, config: Any, what: str) -> None:
    """A model compared with the teacher must be an encoder-decoder (the tokenizers are checked apart)."""
    if not getattr(config, "is_encoder_decoder", False):
        raise DistillError(f"{what} is a {config.model_type} model, not an encoder-decoder")


def latency_modes(settings: Any = None) -> dict[str, Any]:
    """What the latency measurement times: greedy decoding and the recipe's beam search."""
    beams = getattr(settings, "num_beams", 4)
    modes = {"greedy": _generate_with(settings, 1)}
    if beams > 1:
        modes[f"beam{beams}"] = _generate_with(settings, beams)
    return modes


def _generate_with(settings: Any, beams: int) -> Any:
    max_new = getattr(settings, "max_new_tokens", 64)

    def run(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            num_beams=beams,
            max_new_tokens=max_new,
            do_sample=False,
        )

    return run


def eval_step(model: Any, batch: dict[str, Any], settings: Any = None) -> tuple[torch.Tensor, Any]:
    """Generated token ids ``(batch, length)``, padding as -100, and the references: the raw texts
    where the split has them, else the label ids."""
    generated = infer(model, batch, settings)
    pad = getattr(model.config, "pad_token_id", None)
    if pad is not None:
        generated = generated.masked_fill(generated == pad, -100)
    return generated, batch.get(REFERENCE, batch["labels"])


def decode(tokenizer: Any, rows: list) -> list[str]:
    """Token id rows (padding -100) to text; rows that are text already are kept as they are."""
    if rows and isinstance(rows[0], str):
        return [r.strip() for r in rows]
    cleaned = [[t for t in row if t >= 0] for row in rows]
    return [t.strip() for t in tokenizer.batch_decode(cleaned, skip_special_tokens=True)]


def compute_metrics(
    predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu defaults) of the detokenized outputs against the references."""
    hypotheses = decode(tokenizer, predictions)
    refs = decode(tokenizer, references)
    return {
        "bleu": float(sacrebleu.corpus_bleu(hypotheses, [refs]).score),
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, [refs]).score),
    }


def metric_inputs(
    predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
) -> tuple[list, list]:
    """Detokenized outputs, and one reference per sentence as a list (as sacrebleu, bleu, chrf take them)."""
    return decode(tokenizer, predictions), [[r] for r in decode(tokenizer, references)]
