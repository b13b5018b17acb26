"""Decoder-only language models (GPT-2, Llama, Qwen2, Mistral families): what differs from classification.

Same names as :mod:`distill.tasks.classification`. Data is a prompt and a completion per example
(``data.prompt_column`` + ``data.completion_column``; the loss only on the completion's tokens and
the end token after it), or one text (``data.text_column`` without the two: every token).

Items of the losses are the positions whose *next* token is a target: ``labels`` are aligned with
the logits (``labels[t]`` is the token the model should give at position t, -100 elsewhere), so
the per-token KD path of translation serves unchanged. Prompts longer than ``data.max_length`` keep
their end (left truncation, counted in a warning); completions are cut at
``data.max_target_length`` and always end with the end token.

Evaluation: the perplexity of the reference completions (teacher-forced), and the exact match and
chrF of greedy completions generated from the prompts (left-padded, with the KV cache).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import sacrebleu
import torch
from datasets import DatasetDict
from transformers import AutoModelForCausalLM, GenerationConfig, LogitsProcessor, LogitsProcessorList

from distill.config import DataConfig
from distill.errors import DistillError
from distill.tasks import base

log = logging.getLogger(__name__)

MODEL_CLASS = AutoModelForCausalLM
REFERENCE = "reference"  # held-out splits: the raw completion text
PROMPT = "prompt_ids"  # held-out splits: the prompt's tokens, what generation starts from
PRIMARY_METRIC = "chrf"
PIPELINE_TAG = "text-generation"
ALIGNED_LABELS = True  # labels are the inputs shifted by one (checks stretch them with the inputs)
ENCODER_DECODER = False
TOKEN_LEVEL = True  # one output per target token: the teacher store keeps its top-k
PEFT_TASK_TYPE = "CAUSAL_LM"
hard_loss = base.cross_entropy  # cross-entropy on the reference ids
soft_loss = base.distribution_soft_loss
STATS = 2  # eval_step's predictions: [negative log-likelihood sum, target tokens, generated ids...]


def check_recipe(cfg: Any) -> None:
    """The recipe's rules for this task: prompt and completion columns, the losses it takes."""
    d = cfg.data
    if bool(d.prompt_column) != bool(d.completion_column):
        raise DistillError(
            "data: causal_lm takes data.prompt_column with data.completion_column, or neither "
            "(data.text_column: every token is a target)"
        )
    if cfg.loss.hidden_weight > 0:
        raise DistillError("loss.hidden_weight: hidden-state losses are for classification only, so far")
    if cfg.loss.on_policy > 0:
        if cfg.teacher.cache:
            raise DistillError(
                "loss.on_policy: the teacher scores the student's own samples as they come, so it "
                "cannot be cached; set teacher.cache=false"
            )
        if not d.prompt_column:
            raise DistillError("loss.on_policy: the student completes prompts; set data.prompt_column")


def check_models(models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any) -> None:
    """Every model can ``generate()`` (the report scores greedy completions)."""
    base.try_generate(models, rows[0])


def usage_snippet(path: str) -> str:
    return (
        "from transformers import pipeline\n\n"
        f'generate = pipeline("text-generation", model="{path}")\n'
        'print(generate("a prompt", max_new_tokens=32, do_sample=False)[0]["generated_text"])'
    )


def columns(cfg: DataConfig) -> dict[str, str]:
    if cfg.prompt_column or cfg.completion_column:
        return {"prompt_column": cfg.prompt_column, "completion_column": cfg.completion_column}
    return {"text_column": cfg.text_column}


def prepare_targets(
    raw: DatasetDict, cfg: DataConfig, teacher_config: Any, head_trained: bool
) -> tuple[DatasetDict, None]:
    """Every split as two text columns, ``prompt`` (empty for plain text) and ``completion``."""
    out = DatasetDict()
    for split, ds in raw.items():
        if cfg.prompt_column:

            def pick(batch: dict[str, list]) -> dict[str, list]:
                return {"prompt": batch[cfg.prompt_column], "completion": batch[cfg.completion_column]}
        else:

            def pick(batch: dict[str, list]) -> dict[str, list]:
                return {"prompt": [""] * len(batch[cfg.text_column]), "completion": batch[cfg.text_column]}

        out[split] = ds.map(pick, batched=True, remove_columns=ds.column_names, desc=f"reading {split}")
    return out, None


def model_kwargs(names: list[str] | None) -> dict[str, Any]:
    return {}


def max_input_length(tokenizer: Any, cfg: DataConfig) -> int:
    """The longest sequence: a prompt of ``data.max_length`` and a completion of
    ``data.max_target_length`` tokens."""
    return cfg.max_length + cfg.max_target_length


def check_compatible(teacher_config: Any, config: Any, what: str) -> None:
    if getattr(config, "is_encoder_decoder", False):
        raise DistillError(
            f"{what} is an encoder-decoder ({config.model_type}); causal_lm needs a decoder-only model"
        )


def _prompt_ids(tokenizer: Any, prompts: list[str], chat: bool) -> list[list[int]]:
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise DistillError(
                "data.chat_template: the tokenizer has no chat template; set data.chat_template=false"
            )
        out = []
        for p in prompts:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True
            )
            out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))  # transformers 5: a mapping
        return out
    probe = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    adds_bos = bos is not None and probe[:1] == [bos]
    adds_eos = eos is not None and len(probe) > 1 and probe[-1] == eos  # seq2seq-style tokenizers
    if not any(prompts):  # plain text: a beginning token the tokenizer adds starts it too
        return [[bos] if adds_bos else [] for _ in prompts]
    ids = tokenizer(prompts)["input_ids"]
    return [x[:-1] if adds_eos and x[-1:] == [eos] else x for x in ids]


def tokenize(splits: DatasetDict, tokenizer: Any, cfg: DataConfig) -> DatasetDict:
    """Prompt + completion + end token as ``input_ids``; ``labels`` the next token at each
    completion position (-100 elsewhere). Held-out splits keep the raw completion (``reference``)
    and the prompt's tokens (``prompt_ids``)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DistillError(
            "the tokenizer has no end token (eos_token); causal_lm needs one to end completions"
        )

    def encode(batch: dict[str, list]) -> dict[str, list]:
        prompts = _prompt_ids(tokenizer, batch["prompt"], cfg.chat_template)
        completions = tokenizer(batch["completion"], add_special_tokens=False)["input_ids"]
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], PROMPT: []}
        out["prompt_truncated"], out["completion_truncated"] = [], []
        for p, c in zip(prompts, completions, strict=True):
            out["prompt_truncated"].append(len(p) > cfg.max_length)
            out["completion_truncated"].append(len(c) + 1 > cfg.max_target_length)
            p = p[-cfg.max_length :] if cfg.max_length else p  # keep the prompt's end
            c = c[: cfg.max_target_length - 1] + [eos]
            ids = p + c
            if not p:  # plain text: every token after the first is a target
                labels = ids[1:] + [-100]
            else:
                labels = completion_labels(p, c)
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
            out[PROMPT].append(p if p else ids[:1])
        return out

    probe = [t for t in splits["train"]["completion"][:64] if t.strip()] if "train" in splits else []
    if probe and not any(tokenizer(probe, add_special_tokens=False)["input_ids"]):
        raise DistillError(
            "the tokenizer turns the completions into no tokens at all; check that it is the model's own "
            "(AutoTokenizer may rebuild a tokenizer of the model's family from files that do not fit it)"
        )
    result = DatasetDict()
    for split, ds in splits.items():
        keep = [] if split == "train" else ["completion"]
        drop = [c for c in ds.column_names if c not in keep]
        tokenized = ds.map(encode, batched=True, remove_columns=drop, desc=f"tokenizing {split}")
        if keep:
            tokenized = tokenized.rename_column("completion", REFERENCE)
        for side, limit in (("prompt", cfg.max_length), ("completion", cfg.max_target_length)):
            cut = sum(tokenized[f"{side}_truncated"])
            if cut:
                log.warning(
                    "split '%s': %d %ss longer than %d tokens were truncated", split, cut, side, limit
                )
        result[split] = tokenized.remove_columns(["prompt_truncated", "completion_truncated"])
    return result


def completion_labels(prompt: list[int], completion: list[int]) -> list[int]:
    """Labels aligned with ``prompt + completion``: the completion's tokens, where they are predicted."""
    return [-100] * (len(prompt) - 1) + completion + [-100]


def _end_and_pad(config: Any) -> tuple[int, int]:
    """The model's end token and its pad token (the end token where it has none)."""
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    return eos, config.pad_token_id if config.pad_token_id is not None else eos


class CausalCollator:
    """Right-pads ``input_ids`` (the pad token), ``attention_mask`` (0) and ``labels`` (-100); held-out
    batches also get the prompts left-padded for generation (``prompt_ids``, ``prompt_mask``)."""

    def __init__(self, pad: int):
        self.pad = pad

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(r["input_ids"]) for r in rows)
        batch: dict[str, Any] = {
            "input_ids": torch.full((len(rows), width), self.pad, dtype=torch.long),
            "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
            "labels": torch.full((len(rows), width), -100, dtype=torch.long),
        }
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(r["input_ids"])
            batch["attention_mask"][i, :n] = 1
            batch["labels"][i, :n] = torch.tensor(r["labels"])
        for key in ("row",):
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows])
        if PROMPT in rows[0]:
            wide = max(len(r[PROMPT]) for r in rows)
            batch[PROMPT] = torch.full((len(rows), wide), self.pad, dtype=torch.long)
            batch["prompt_mask"] = torch.zeros((len(rows), wide), dtype=torch.long)
            for i, r in enumerate(rows):
                n = len(r[PROMPT])
                batch[PROMPT][i, wide - n :] = torch.tensor(r[PROMPT])
                batch["prompt_mask"][i, wide - n :] = 1
        if REFERENCE in rows[0]:
            batch[REFERENCE] = [r[REFERENCE] for r in rows]
        return batch


def collator(tokenizer: Any, model_config: Any = None) -> CausalCollator:
    return CausalCollator(
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}


def _generate(model: Any, batch: dict[str, Any], settings: Any, min_new: int = 0) -> torch.Tensor:
    """Greedy completions of the batch's prompts (new tokens only; after the end token: -100)."""
    max_new = getattr(settings, "max_new_tokens", 64)
    eos, pad = _end_and_pad(model.config)
    generated = model.generate(
        input_ids=batch[PROMPT],
        attention_mask=batch["prompt_mask"],
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        do_sample=False,
        pad_token_id=pad,
    )
    new = generated[:, batch[PROMPT].shape[1] :]
    ended = (new == eos).long().cumsum(-1) > 0  # the end token and everything after it
    return new.masked_fill(ended, -100)


def infer(model: Any, batch: dict[str, Any], settings: Any = None) -> torch.Tensor:
    return _generate(model, batch, settings)


def latency_modes(settings: Any = None) -> dict[str, Any]:
    """Greedy generation of exactly ``eval.max_new_tokens`` tokens (the KV cache on): the time per
    example divided by that is the time per token."""
    n = getattr(settings, "max_new_tokens", 64)
    return {f"greedy{n}": lambda model, batch: _generate(model, batch, settings, min_new=n)}


def eval_step(model: Any, batch: dict[str, Any], settings: Any = None) -> tuple[torch.Tensor, Any]:
    """Per example: the reference completion's negative log-likelihood and its token count, then
    the greedy completion's token ids (-100 after its end), as one float row."""
    labels = batch["labels"]
    logits = model(**model_inputs(batch)).logits.float()
    mask = labels != -100
    logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    nll = -(logp * mask).sum(-1)
    generated = _generate(model, batch, settings).float()
    stats = torch.stack([nll, mask.sum(-1).float()], dim=-1)
    return torch.cat([stats, generated], dim=-1), batch[REFERENCE]


def decode(tokenizer: Any, rows: list) -> list[str]:
    ids = [[int(t) for t in row[STATS:] if t >= 0] for row in rows]
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def compute_metrics(
    predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
) -> dict[str, float]:
    """Perplexity of the references, exact match and corpus chrF (sacrebleu) of greedy completions."""
    nll = sum(row[0] for row in predictions)
    tokens = sum(row[1] for row in predictions)
    hypotheses = decode(tokenizer, predictions)
    refs = [r.strip() for r in references]
    return {
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, [refs]).score),
        "exact_match": sum(h == r for h, r in zip(hypotheses, refs, strict=True)) / max(len(refs), 1),
        "perplexity": math.exp(nll / tokens) if tokens else float("nan"),
    }


def metric_inputs(
    predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
) -> tuple[list, list]:
    return decode(tokenizer, predictions), [[r.strip()] for r in references]


class _RowGumbel(LogitsProcessor):
    """Sampling from ``softmax(logits / temperature)`` by the Gumbel-max trick under greedy search:
    each row's noise comes from its own generator, so what a row samples does not depend on the
    other rows of its batch (nor on how many processes share the global batch)."""

    def __init__(self, seeds: list[int], temperature: float, device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        width = scores.shape[-1]
        uniform = torch.stack(
            [
                torch.rand(width, generator=g, device=scores.device, dtype=torch.float32)
                for g in self.generators
            ]
        )
        gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(torch.float32).tiny)))
        return scores.float() / self.temperature + gumbel


def row_seeds(seed: int, step: int, rows: list[int]) -> list[int]:
    """One sampling seed per (training seed, optimizer step, training example)."""
    return [int(np.random.SeedSequence([seed, step, r]).generate_state(1, np.uint64)[0] >> 1) for r in rows]


def sample_completions(
    model: Any, batch: dict[str, Any], *, seeds: list[int], temperature: float, max_new_tokens: int
) -> dict[str, Any]:
    """On-policy distillation (GKD, Agarwal et al., 2024): a batch whose completions the model
    samples itself from the batch's prompts, laid out as training batches are (right-padded,
    ``labels`` the sampled tokens up to and with the end token).

    Row i samples from the model's own distribution at ``temperature`` (no top-k, top-p or
    repetition penalty from the model's generation config) with the random stream ``seeds[i]``:
    the same seeds give the same completions whatever the batch around them, so a resumed run
    and a run split over several processes sample what one uninterrupted process does.
    """
    bare = getattr(model, "module", model)  # DistributedDataParallel wraps it
    config = bare.config
    eos, pad = _end_and_pad(config)
    prompts = batch[PROMPT]
    was_training, own = bare.training, bare.generation_config
    # generate() fills what a passed config leaves unset from the model's generation config (a
    # chat model's top_k, top_p, repetition_penalty...): a bare one leaves the distribution alone.
    bare.generation_config = GenerationConfig(
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=config.bos_token_id,
        suppress_tokens=own.suppress_tokens,  # rows padded beyond the tokenizer, never sampled
    )
    bare.eval()
    try:
        with torch.no_grad():
            generated = bare.generate(
                input_ids=prompts,
                attention_mask=batch["prompt_mask"],
                do_sample=False,  # the argmax of the logits plus Gumbel noise is the sample
                num_beams=1,
                logits_processor=LogitsProcessorList([_RowGumbel(seeds, temperature, prompts.device)]),
                max_new_tokens=max_new_tokens,
            )
    finally:
        bare.generation_config = own
        bare.train(was_training)
    width = prompts.shape[1]
    rows = []
    for i in range(generated.shape[0]):
        prompt = prompts[i][batch["prompt_mask"][i].bool()].tolist()
        new = generated[i, width:].tolist()
        if eos in new:
            new = new[: new.index(eos) + 1]
        rows.append(
            {
                "input_ids": prompt + new,
                "labels": completion_labels(prompt, new),
            }
        )
    sampled = CausalCollator(pad)(rows)
    device = batch["input_ids"].device
    return {k: v.to(device) for k, v in sampled.items()}


def teacher_targets(model: Any, batch: dict[str, Any], settings: dict[str, Any]) -> list[list[int]]:
    """Sequence-level KD: the teacher's completions of the batch's prompts (beam search with the
    recipe's beams, greedy with 1), each ending with the end token."""
    config = model.config
    eos, pad = _end_and_pad(config)
    generated = model.generate(
        input_ids=batch[PROMPT],
        attention_mask=batch["prompt_mask"],
        num_beams=settings["num_beams"],
        max_new_tokens=settings["max_new_tokens"],
        do_sample=False,
        pad_token_id=pad,
    )
    outputs = []
    for row in generated[:, batch[PROMPT].shape[1] :].tolist():
        outputs.append(row[: row.index(eos) + 1] if eos in row else [t for t in row if t != pad] + [eos])
    return outputs


def with_targets(train: Any, targets: list[list[int]]) -> Any:
    """``train`` with each prompt followed by the given completion (``targets``; labels on the
    completion)."""
    prompts = train[PROMPT]
    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for p, c in zip(prompts, targets, strict=True):
        columns["input_ids"].append(p + c)
        columns["attention_mask"].append([1] * (len(p) + len(c)))
        columns["labels"].append(completion_labels(p, c))
    out = train.remove_columns([k for k in columns if k in train.column_names])
    for key, values in columns.items():
        out = out.add_column(key, values)
    return out.cast(train.features)  # the same column types, so that it concatenates with train
