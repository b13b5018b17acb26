"""What a task family provides: the protocol every module in ``distill/tasks`` implements.

The generic code (the stages, the loop, the checks, the report) reaches a task only through
these names, and every task module defines all of them: what a task cannot do (sequence-level KD
for classification, on-policy sampling beyond causal LMs) it refuses in one line, in
``check_recipe`` first. ``tests/test_tasks.py`` checks every registered module against this
protocol, signatures included. In the manner of torchtune's recipe interface: a written list,
not a set of names found by ``hasattr``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from datasets import DatasetDict

from distill.errors import DistillError


class Task(Protocol):
    """A task family: how its data becomes batches, what its models are, how it is measured."""

    MODEL_CLASS: Any  # the transformers Auto class of its models (from_pretrained, from_config)
    PRIMARY_METRIC: str  # the report's headline metric
    PIPELINE_TAG: str  # the model card's pipeline_tag
    PEFT_TASK_TYPE: str  # PEFT's task type for LoRA students
    ENCODER_DECODER: bool  # its models have an encoder and a decoder
    TOKEN_LEVEL: bool  # one output distribution per target token (else one per example)
    ALIGNED_LABELS: bool  # labels are the inputs shifted by one (a causal LM's next tokens)

    # --- the recipe and the data
    def check_recipe(self, cfg: Any) -> None:
        """The recipe's rules for this task beyond each section's own; one-line DistillError."""

    def columns(self, cfg: Any) -> dict[str, str]:
        """Config key -> the column the task reads, the text that dedupe compares first."""

    def prepare_targets(
        self, raw: DatasetDict, cfg: Any, teacher_config: Any, head_trained: bool
    ) -> tuple[DatasetDict, list[str] | None]:
        """The raw splits with their targets checked and laid out; the label names (or None)."""

    def max_input_length(self, tokenizer: Any, cfg: Any) -> int:
        """The longest input the recipe lets a model see (what validate tries the models on)."""

    def tokenize(self, splits: DatasetDict, tokenizer: Any, cfg: Any) -> DatasetDict:
        """Model-ready columns (input_ids, attention_mask, labels, ...)."""

    def collator(self, tokenizer: Any, model_config: Any = None) -> Any:
        """Rows -> a padded batch of tensors."""

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """What of a batch the model's forward takes."""

    # --- the models
    def model_kwargs(self, names: list[str] | None) -> dict[str, Any]:
        """from_pretrained / from_config keyword arguments for the label set (num_labels, ...)."""

    def check_compatible(self, teacher_config: Any, config: Any, what: str) -> None:
        """Refuse a model whose outputs cannot be compared with the teacher's."""

    def check_models(self, models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any) -> None:
        """What the task needs of the models beyond one forward pass (validate runs it)."""

    def hard_loss(self, student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss on the references, summed over items (labels -100 are no item)."""

    def soft_loss(self, name: str, sparse: bool) -> Callable[..., torch.Tensor]:
        """The soft loss ``loss.soft`` names, ``fn(student_logits, teacher, *, temperature, mask)``
        summed over items (``sparse``: the teacher is a store's top-k entries)."""

    # --- measuring
    def eval_step(self, model: Any, batch: dict[str, Any], settings: Any = None) -> tuple[Any, Any]:
        """One batch's predictions and references."""

    def compute_metrics(
        self, predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
    ) -> dict[str, float]:
        """The task's metrics of all predictions (``label_names``: the model's, id i is names[i])."""

    def metric_inputs(
        self, predictions: list, references: list, tokenizer: Any = None, label_names: list[str] | None = None
    ) -> tuple[list, list]:
        """What extra `evaluate` metrics (eval.metrics) are given."""

    def latency_modes(self, settings: Any = None) -> dict[str, Any]:
        """Name -> fn(model, batch): what is timed (forward; greedy and beam generation)."""

    def usage_snippet(self, path: str) -> str:
        """The model card's code that loads and uses the saved folder."""

    # --- sequence-level KD and on-policy distillation
    def teacher_targets(self, model: Any, batch: dict[str, Any], settings: dict[str, Any]) -> list[list[int]]:
        """The teacher's own outputs for a batch, as target token ids (loss.sequence_kd)."""

    def with_targets(self, train: Any, targets: list[list[int]]) -> Any:
        """The tokenized training split with those targets in place of its own."""

    def row_seeds(self, seed: int, step: int, rows: list[int]) -> list[int]:
        """Per-example seeds of on-policy samples (loss.on_policy), fixed by seed, step and row."""

    def sample_completions(
        self, model: Any, batch: dict[str, Any], *, seeds: list[int], temperature: float, max_new_tokens: int
    ) -> dict[str, Any]:
        """The student's own samples for a batch, as a training batch (loss.on_policy)."""


def try_generate(models: dict[str, Any], row: dict[str, Any]) -> None:
    """Each model runs ``generate()`` on one example, greedy and with 2 beams, 2 new tokens: a
    model that cannot generate (an upstream cache error, say) is refused before training, not after.
    In eval mode and on a forked RNG: the run's randomness is as if this never ran."""
    ids = torch.tensor([list(row["input_ids"])])
    for role, model in models.items():
        # A model dispatched by a device map (weights offloaded to meta) moves its inputs itself.
        dispatched = bool(getattr(model, "hf_device_map", None))
        device = torch.device("cpu") if dispatched else getattr(model, "device", torch.device("cpu"))
        inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
        was_training = model.training
        model.eval()
        try:
            for beams in (1, 2):
                try:
                    with torch.random.fork_rng(devices=[]), torch.inference_mode():
                        model.generate(**inputs, max_new_tokens=2, num_beams=beams, do_sample=False)
                except Exception as e:  # whatever the family's generate() raises
                    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                    raise DistillError(
                        f"the {role} cannot generate() (num_beams={beams}), which the report and "
                        f"sequence-level KD need: {type(e).__name__}: {reason}"
                    ) from None
        finally:
            model.train(was_training)


def cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The hard loss of every task whose targets are class or token ids."""
    from distill.losses import hard_ce

    return hard_ce(student_logits, labels)


def distribution_soft_loss(name: str, sparse: bool) -> Callable[..., torch.Tensor]:
    """The soft loss of every task whose outputs are distributions over classes or tokens."""
    from distill.losses import SOFT_LOSSES, SPARSE_SOFT_LOSSES

    return (SPARSE_SOFT_LOSSES if sparse else SOFT_LOSSES)[name]


def members() -> tuple[list[str], list[str]]:
    """The protocol's constants and its functions, by name."""
    constants = [name for name in Task.__annotations__]
    functions = [name for name, value in vars(Task).items() if callable(value) and not name.startswith("_")]
    return constants, functions


# What the tasks without on-policy sampling (all but causal_lm) give for its two hooks.
ON_POLICY_ONLY = "loss.on_policy: on-policy distillation is for task causal_lm"


def no_row_seeds(seed: int, step: int, rows: list[int]) -> list[int]:
    raise DistillError(ON_POLICY_ONLY)


def no_sample_completions(
    model: Any, batch: dict[str, Any], *, seeds: list[int], temperature: float, max_new_tokens: int
) -> dict[str, Any]:
    raise DistillError(ON_POLICY_ONLY)
