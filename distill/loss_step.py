"""One micro-batch's loss: what the student is trained on, for distillation, teacher fine-tuning
and no-teacher baselines alike. The loop (:mod:`distill.loop`) runs it; it is testable alone."""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor, nn

from distill.config import LossConfig
from distill.losses import HIDDEN_LOSSES, SOFT_LOSSES, chunked_kd_mix, hard_ce, kd_mix
from distill.modeling import HiddenProjection

LOGGED_TERMS = ("loss", "hard", "soft", "hidden", "items")


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
    ):
        self.task = task
        self.loss = loss
        self.teacher = teacher
        self.projection = projection
        self.use_soft = teacher is not None and loss is not None and loss.alpha > 0
        self.use_hidden = teacher is not None and loss is not None and loss.hidden_weight > 0
        if self.use_hidden and projection is None:
            raise ValueError("a hidden-state loss needs a HiddenProjection")

    def __call__(self, student: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        labels = batch["labels"]
        inputs = self.task.model_inputs(batch)
        teacher_out = None
        if self.use_soft or self.use_hidden:
            assert self.teacher is not None
            # The teacher runs first, so its activations are freed before the student's are built.
            with torch.inference_mode():
                teacher_out = self.teacher(**inputs, output_hidden_states=self.use_hidden)
        student_out = student(**inputs, output_hidden_states=self.use_hidden)
        mask = labels != -100  # (batch,) for classification, (batch, target_len) for seq2seq
        items = mask.sum()
        loss = self.loss
        kwargs = {"beta": loss.jsd_beta} if loss is not None and loss.soft == "jsd" else {}
        if self.use_soft and student_out.logits.ndim == 3 and loss.chunk_tokens > 0 and not self.use_hidden:
            # Per-token KD over a large vocabulary: soft and hard losses in one chunked pass
            # (see losses.chunked_kd_mix); no full float32 [tokens, vocab] copies.
            total, soft, hard = chunked_kd_mix(
                SOFT_LOSSES[loss.soft],
                student_out.logits,
                teacher_out.logits,
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
        hard = hard_ce(student_out.logits, labels)
        zero = hard.new_zeros(())
        out = {"hard": hard, "soft": zero, "hidden": zero, "items": items}
        if teacher_out is None:
            out["loss"] = hard
            return out
        assert loss is not None
        if self.use_soft:
            # clone(): inference tensors cannot be saved for backward; a copy made outside can.
            teacher_logits = teacher_out.logits.clone()
            out["soft"] = SOFT_LOSSES[loss.soft](
                student_out.logits, teacher_logits, temperature=loss.temperature, mask=mask, **kwargs
            )
        total = kd_mix(out["soft"], hard, alpha=self.loss.alpha)
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
        out["loss"] = total
        return out
