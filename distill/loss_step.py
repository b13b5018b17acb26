"""One micro-batch's loss: what the student is trained on, for distillation, teacher fine-tuning
and no-teacher baselines alike. The loop (:mod:`distill.loop`) runs it; it is testable alone."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.config import LossConfig
from distill.losses import (
    HIDDEN_LOSSES,
    TeacherHead,
    TopK,
    chunked_kd_mix,
    kd_mix,
)
from distill.modeling import HiddenProjection, sharded, teacher_head
from distill.teacher_store import ROW, TeacherStore

log = logging.getLogger(__name__)

LOGGED_TERMS = ("loss", "hard", "soft", "hidden", "items")


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """A loss term of your own, added to the student's loss in the distillation stage.

    ``fn(student_outputs, teacher_outputs, batch)`` returns a 0-dim tensor: the term **summed**
    over the batch's items (its examples for classification, its target tokens, ``labels != -100``,
    for token-level tasks), as the built-in terms are; the loop divides every term by the items of
    the whole optimizer step, on all processes, so accumulation and process count do not change
    it. ``student_outputs`` and ``teacher_outputs`` are the models' outputs on the batch (with
    ``hidden_states`` when ``hidden_states=True``; the teacher's computed without gradients) and
    ``batch`` the collated batch (``labels`` included). The loss is the built-in mix plus
    ``weight * term``; the term is logged as ``train/<name>`` per item. It is checked once on a few
    training examples before anything is written (``validate`` too): a 0-dim finite tensor, with a
    gradient through the student, whose values on the two halves of a batch add up to its value on
    the whole (a mean would not).
    """

    name: str
    fn: Callable[[Any, Any, dict[str, Tensor]], Tensor]
    weight: float = 1.0
    hidden_states: bool = False  # the term reads hidden states: both models return them


class LossStep:
    """One micro-batch's loss terms, each a sum over items, plus the item count.

    With ``teacher=None`` (teacher fine-tuning, no-KD baselines) only the hard-label loss is used.
    Returns ``{"loss", "hard", "soft", "hidden", "items"}``; "soft"/"hidden" are 0 when unused.
    """

    def __init__(
        self,
        task: ModuleType,
        loss: LossConfig | None = None,
        teacher: nn.Module | None = None,
        projection: HiddenProjection | None = None,
        store: TeacherStore | None = None,
        max_new_tokens: int = 64,
        terms: tuple[LossTerm, ...] = (),
        vocabulary: int | None = None,
    ):
        self.task = task
        self.loss = loss
        self.teacher = teacher
        self.projection = projection
        self.store = store
        has_teacher = teacher is not None or store is not None
        self.use_soft = has_teacher and loss is not None and loss.alpha > 0
        self.use_hidden = teacher is not None and loss is not None and loss.hidden_weight > 0
        if self.use_hidden and projection is None:
            raise ValueError("a hidden-state loss needs a HiddenProjection")
        self.head_checked: bool | None = None  # the teacher's logits from its head match its own?
        self.on_policy = loss.on_policy if loss is not None and teacher is not None else 0.0
        self.max_new_tokens = max_new_tokens
        if terms and teacher is None:
            raise ValueError("custom loss terms need the online teacher")
        self.terms = tuple(terms)
        # Token-level tasks: the tokenizer's ids. Output rows beyond them (a vocabulary padded to a
        # multiple, as Qwen's are) never enter a loss.
        self.vocabulary = vocabulary
        self.term_hidden = any(t.hidden_states for t in self.terms)
        # On-policy batches are scored by the divergence alone: there is no reference to compare with.
        self.soft_only = dataclasses.replace(loss, alpha=1.0) if self.on_policy else None

    @property
    def logged_terms(self) -> tuple[str, ...]:
        """The terms worth logging: "soft" and "hidden" only where they are used (elsewhere they
        are always 0)."""
        unused = {name for name, used in (("soft", self.use_soft), ("hidden", self.use_hidden)) if not used}
        return tuple(k for k in self.summed[:-1] if k not in unused)

    @property
    def summed(self) -> tuple[str, ...]:
        """The terms :meth:`__call__` returns, summed by the loop: the built-ins, the custom terms
        by name, then the item count."""
        return (*LOGGED_TERMS[:-1], *(t.name for t in self.terms), LOGGED_TERMS[-1])

    def _real(self, logits: Any) -> Any:
        """``logits`` (a tensor or a :class:`TeacherHead`) over the tokenizer's ids only."""
        if self.vocabulary is None or logits is None:
            return logits
        if isinstance(logits, TeacherHead):
            head, vocabulary = logits.head, self.vocabulary
            return TeacherHead(logits.hidden, lambda hidden: head(hidden)[..., :vocabulary])
        return logits[..., : self.vocabulary] if logits.shape[-1] > self.vocabulary else logits

    def _teacher_logits(self, inputs: dict[str, Tensor], chunked: bool) -> Tensor | TeacherHead:
        """The online teacher's logits; for chunked per-token KD, its last hidden states and output
        head instead (no [tokens, vocabulary] tensor), once checked to give the model's logits."""
        assert self.teacher is not None
        if sharded(self.teacher):
            # Its output layer is gathered only inside the teacher's own forward pass.
            self.head_checked = False
        with torch.inference_mode():
            if chunked and self.head_checked is not False:
                lazy = teacher_head(self.teacher, inputs)
                if self.head_checked is None:
                    full = self.teacher(**inputs).logits
                    sliced = None if lazy is None else lazy[(slice(None),) * (full.ndim - 1)]
                    self.head_checked = (
                        sliced is not None
                        and sliced.shape == full.shape
                        and torch.allclose(sliced.float(), full.float(), rtol=1e-3, atol=1e-3)
                    )
                    if not self.head_checked:
                        log.info("the teacher's output head is not a plain projection: using its full logits")
                        return full
                return lazy
            return self.teacher(**inputs).logits

    def draw(
        self, student: nn.Module, batch: dict[str, Tensor], *, seed: int, step: int, index: int = 0
    ) -> tuple[dict[str, Tensor], bool]:
        """GKD: with probability ``loss.on_policy``, the student's own completions of the batch's
        prompts instead of the batch (returns the batch to train on, and whether it is sampled).

        The draw and each example's sample are seeded by (seed, optimizer step, micro-batch index)
        and (seed, step, example): every process draws the same, an example samples the same
        whichever process has it, and a resumed run the same as an uninterrupted one.
        """
        if not self.on_policy:
            return batch, False
        if np.random.default_rng([seed, step, index]).random() >= self.on_policy:
            return batch, False
        seeds = self.task.row_seeds(seed, step, batch[ROW].tolist())
        sampled = self.task.sample_completions(
            student,
            batch,
            seeds=seeds,
            temperature=self.loss.on_policy_temperature,
            max_new_tokens=self.max_new_tokens,
        )
        return sampled, True

    def __call__(
        self, student: nn.Module, batch: dict[str, Tensor], on_policy: bool = False
    ) -> dict[str, Tensor]:
        """The loss terms of ``batch``; ``on_policy``: the batch is the student's own samples (from
        :meth:`draw`), scored by the divergence from the teacher alone (there is no reference)."""
        loss = self.soft_only if on_policy else self.loss
        labels = batch["labels"]
        inputs = {k: v for k, v in self.task.model_inputs(batch).items() if k != ROW}
        per_token_chunked = (
            self.use_soft
            and self.task.TOKEN_LEVEL
            and labels.ndim == 2
            and loss.chunk_tokens > 0
            and not self.use_hidden
            and not self.terms
        )
        teacher_out = None
        teacher_logits: Tensor | TopK | TeacherHead | None = None
        hidden = self.use_hidden or self.term_hidden
        if self.store is not None and self.use_soft:
            teacher_logits = self.store.batch(batch[ROW], labels)
        elif self.use_hidden or self.terms:
            assert self.teacher is not None
            # The teacher runs first, so its activations are freed before the student's are built.
            # Custom terms get outputs they may combine freely with the student's (no_grad, not
            # inference_mode: an inference tensor cannot be saved for backward).
            with torch.no_grad() if self.terms else torch.inference_mode():
                teacher_out = self.teacher(**inputs, output_hidden_states=hidden)
            teacher_logits = teacher_out.logits if self.use_soft or self.use_hidden else None
        elif self.use_soft:
            teacher_logits = self._teacher_logits(inputs, per_token_chunked)
        if not isinstance(teacher_logits, TopK):  # a store's top-k ids are the tokenizer's already
            teacher_logits = self._real(teacher_logits)
        student_out = student(**inputs, output_hidden_states=hidden)
        student_logits = self._real(student_out.logits)
        mask = labels != -100  # (batch,) for classification, (batch, target_len) for seq2seq
        items = mask.sum()
        kwargs = {"beta": loss.jsd_beta} if loss is not None and loss.soft == "jsd" else {}
        sparse = isinstance(teacher_logits, TopK)
        soft_fn = self.task.soft_loss(loss.soft, sparse) if loss is not None else None
        if per_token_chunked:
            # Per-token KD over a large vocabulary: soft and hard losses in one chunked pass
            # (see losses.chunked_kd_mix); no full float32 [tokens, vocab] copies.
            total, soft, hard = chunked_kd_mix(
                soft_fn,
                student_logits,
                teacher_logits,
                labels,
                alpha=loss.alpha,
                chunk=loss.chunk_tokens,
                temperature=loss.temperature,
                **kwargs,
            )
            return {
                "loss": total,
                "hard": hard,
                "soft": soft,
                "hidden": torch.zeros_like(soft),
                "items": items,
            }
        hard = self.task.hard_loss(student_logits, labels)
        zero = hard.new_zeros(())
        out = {"hard": hard, "soft": zero, "hidden": zero, "items": items}
        if teacher_logits is None:
            out["loss"] = self._with_terms(hard, out, student_out, teacher_out, batch)
            return out
        assert loss is not None
        if self.use_soft:
            if isinstance(teacher_logits, TeacherHead):
                teacher_logits = teacher_logits[(slice(None),) * (labels.ndim + 1)]
            if isinstance(teacher_logits, Tensor):
                # clone(): inference tensors cannot be saved for backward; a copy made outside can.
                teacher_logits = teacher_logits.clone()
            out["soft"] = soft_fn(
                student_logits, teacher_logits, temperature=loss.temperature, mask=mask, **kwargs
            )
        total = kd_mix(out["soft"], hard, alpha=loss.alpha)
        if self.use_hidden:
            assert self.projection is not None
            token_mask = inputs.get("attention_mask")
            hidden_fn = HIDDEN_LOSSES[self.loss.hidden]
            terms = []
            for s_layer, t_layer in self.projection.layer_map.items():
                # hidden_states[0] is the embedding output; layer i's output is hidden_states[i + 1].
                s_hidden = self.projection(s_layer, student_out.hidden_states[s_layer + 1])
                t_hidden = teacher_out.hidden_states[t_layer + 1].clone()
                terms.append(hidden_fn(s_hidden, t_hidden, mask=token_mask))
            out["hidden"] = torch.stack(terms).mean()
            total = total + self.loss.hidden_weight * out["hidden"]
        out["loss"] = self._with_terms(total, out, student_out, teacher_out, batch)
        return out

    def _with_terms(
        self,
        total: Tensor,
        out: dict[str, Tensor],
        student_out: Any,
        teacher_out: Any,
        batch: dict[str, Tensor],
    ) -> Tensor:
        """``total`` plus each custom term, weighted; each term's value goes into ``out``."""
        for term in self.terms:
            value = term.fn(student_out, teacher_out, batch)
            out[term.name] = value
            total = total + term.weight * value
        return total
