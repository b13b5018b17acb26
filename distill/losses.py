"""Distillation losses: pure functions of tensors.

Conventions shared by every function here:

- ``*_logits`` have shape ``(..., classes)``; every position in ``...`` is one *item* (an example
  for classification, a target token for translation).
- ``mask`` (shape ``(...)``, bool) marks real items; masked items contribute exactly 0.
- Inputs are upcast to float32 inside, whatever dtype the models ran in.
- Each function returns the **sum over items**, never a mean. The training loop divides once by
  the global number of items in the optimizer step, so gradient accumulation and several
  processes give the same gradient as one big batch.
- Soft-label losses compare distributions softened by a temperature T and are multiplied by T²,
  which keeps their gradient scale independent of T (Hinton et al., 2015).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def _masked_sum(per_item: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return per_item.sum()
    # where() rather than multiplication: a fully masked input gives 0 with finite gradients.
    return torch.where(mask, per_item, torch.zeros_like(per_item)).sum()


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def soft_kl(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float, mask: Tensor | None = None
) -> Tensor:
    """Forward KL, ``T² · Σ_items KL(p_T ‖ q_T)``.

    ``p_T = softmax(teacher_logits / T)``, ``q_T = softmax(student_logits / T)``. Computed in log
    space on both sides (no ``log(0)``). Zero when the two sets of logits are equal.
    """
    s = _log_probs(student_logits, temperature)
    t = _log_probs(teacher_logits, temperature)
    return temperature**2 * _masked_sum(_kl(t, s), mask)


def _kl(p_log: Tensor, q_log: Tensor) -> Tensor:
    """``Σ p (log p − log q)`` over the last dimension, from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def _jsd(s: Tensor, t: Tensor, beta: float) -> Tensor:
    """Per-item ``JSD_β`` from log-probabilities (0 < β < 1)."""
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1.0 - beta)]), dim=0)
    return beta * _kl(t, m) + (1.0 - beta) * _kl(s, m)


def reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float, mask: Tensor | None = None
) -> Tensor:
    """Reverse KL, ``T² · Σ_items KL(q_T ‖ p_T)`` (mode-seeking: the student's mass stays where the teacher's is)."""
    s = _log_probs(student_logits, temperature)
    t = _log_probs(teacher_logits, temperature)
    return temperature**2 * _masked_sum(_kl(s, t), mask)


def jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float,
    beta: float = 0.5,
    mask: Tensor | None = None,
) -> Tensor:
    """Generalised Jensen-Shannon divergence, ``T² · Σ_items JSD_β(p_T ‖ q_T)``.

    ``JSD_β = β · KL(p ‖ m) + (1 − β) · KL(q ‖ m)`` with ``m = β·p + (1 − β)·q``, p the teacher and q
    the student (Agarwal et al., 2024; TRL's ``generalized_jsd_loss``). As β → 0, ``JSD_β / β``
    tends to the forward ``KL(p ‖ q)``; as β → 1, ``JSD_β / (1 − β)`` tends to the reverse
    ``KL(q ‖ p)``. β = 0 and β = 1 are defined as those limits, i.e. :func:`soft_kl` and
    :func:`reverse_kl`. β = 0.5 is the symmetric JSD, bounded by ``T² · log 2`` per item.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return soft_kl(student_logits, teacher_logits, temperature=temperature, mask=mask)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature=temperature, mask=mask)
    s = _log_probs(student_logits, temperature)
    t = _log_probs(teacher_logits, temperature)
    return temperature**2 * _masked_sum(_jsd(s, t, beta), mask)


def hard_ce(student_logits: Tensor, labels: Tensor, *, ignore_index: int = -100) -> Tensor:
    """Cross-entropy with the hard labels, summed over items whose label is not ``ignore_index``."""
    logits = student_logits.float().reshape(-1, student_logits.shape[-1])
    return F.cross_entropy(logits, labels.reshape(-1), ignore_index=ignore_index, reduction="sum")


def soft_mse(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float, mask: Tensor | None = None
) -> Tensor:
    """Squared error between the two models' outputs, ``Σ_items Σ_outputs (s − t)²``: output
    matching for regression (one output per example) and logit matching for classification. No
    softmax, so ``temperature`` does not enter."""
    per_item = (student_logits.float() - teacher_logits.float()).pow(2).sum(-1)
    return _masked_sum(per_item, mask)


def hard_mse(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Squared error of one output per item against float targets, summed over items."""
    return (student_logits.float().reshape(labels.shape) - labels.float()).pow(2).sum()


def _bernoulli_log_probs(logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """log σ(z/T) and log (1 − σ(z/T)), in float32, without forming σ (stable at any logit)."""
    z = logits.float() / temperature
    return F.logsigmoid(z), F.logsigmoid(-z)


def binary_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float,
    mask: Tensor | None = None,
) -> Tensor:
    """``T² · Σ_cells KL(Bern(σ(t/T)) ‖ Bern(σ(s/T)))``: each label's yes/no distribution of the
    teacher matched by the student's, summed over the (example, label) cells of ``mask``."""
    s1, s0 = _bernoulli_log_probs(student_logits, temperature)
    t1, t0 = _bernoulli_log_probs(teacher_logits, temperature)
    per_cell = t1.exp() * (t1 - s1) + t0.exp() * (t0 - s0)
    return temperature**2 * _masked_sum(per_cell, mask)


def binary_reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float,
    mask: Tensor | None = None,
) -> Tensor:
    """``T² · Σ_cells KL(Bern(σ(s/T)) ‖ Bern(σ(t/T)))``: the student's distribution first."""
    return binary_kl(teacher_logits, student_logits, temperature=temperature, mask=mask)


def logit_mse(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float,
    mask: Tensor | None = None,
) -> Tensor:
    """``Σ_cells (s − t)²``: the logits matched by squared error (no temperature)."""
    return _masked_sum((student_logits.float() - teacher_logits.float()).pow(2), mask)


def hard_bce(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy of one logit per cell with 0/1 targets, summed over the cells whose
    target is not -100 (multi-label classification)."""
    mask = labels != -100
    per_cell = F.binary_cross_entropy_with_logits(
        student_logits.float(), torch.where(mask, labels.float(), 0.0), reduction="none"
    )
    return _masked_sum(per_cell, mask)


def kd_mix(soft: Tensor, hard: Tensor, *, alpha: float) -> Tensor:
    """``alpha · soft + (1 − alpha) · hard``: the classic distillation objective."""
    return alpha * soft + (1.0 - alpha) * hard


def hidden_mse(student_hidden: Tensor, teacher_hidden: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Hidden-state mean squared error, summed over items.

    ``student_hidden`` and ``teacher_hidden`` are ``(batch, seq, width)`` (project the student
    first when widths differ); ``mask`` is ``(batch, seq)``. Per item (a sequence), the loss is the
    squared error averaged over its real tokens and the width; padding is ignored.
    """
    per_token = (student_hidden.float() - teacher_hidden.float()).pow(2).mean(-1)  # (batch, seq)
    return _per_sequence_mean(per_token, mask).sum()


def hidden_cosine(student_hidden: Tensor, teacher_hidden: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Hidden-state cosine distance ``1 − cos(h_s, h_t)``, averaged over real tokens, summed over items."""
    per_token = 1.0 - F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1, eps=1e-8)
    return _per_sequence_mean(per_token, mask).sum()


def _per_sequence_mean(per_token: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return per_token.mean(-1)
    mask = mask.bool()
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum(-1)
    return total / mask.sum(-1).clamp(min=1)


class _ChunkedKDMix(torch.autograd.Function):
    """``alpha · soft + (1 − alpha) · hard``, chunk by chunk, with one gradient buffer for both.

    The memory-lean form of :func:`kd_mix` over a soft loss and :func:`hard_ce`. Only one chunk's
    float32 temporaries (log-probabilities of both models, their difference) exist at any time,
    and the gradient w.r.t. the student's logits is taken chunk by chunk in forward and kept in
    their own dtype; the cross-entropy keeps no log-probabilities of its own for backward. A KD
    step so holds about as many ``[tokens, vocabulary]`` tensors as a plain cross-entropy step
    (the student's logits, their gradient) plus the teacher's logits.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, labels, fn, alpha, chunk, kwargs):  # noqa: ANN001, ANN205
        classes = student_logits.shape[-1]
        flat_s = student_logits.reshape(-1, classes)
        items = flat_s.shape[0]
        # dense logits, or a sparse/lazy teacher (TopK, TeacherHead) sliced the same way
        flat_t = (
            teacher_logits.reshape(-1, classes)
            if isinstance(teacher_logits, Tensor)
            else teacher_logits.reshape(items)
        )
        flat_y = labels.reshape(-1)
        grad = torch.empty_like(flat_s)
        soft_total = flat_s.new_zeros((), dtype=torch.float32)
        hard_total = flat_s.new_zeros((), dtype=torch.float32)
        for start in range(0, flat_s.shape[0], chunk):
            part = slice(start, start + chunk)
            s = flat_s[part].detach().requires_grad_(True)
            y = flat_y[part]
            with torch.enable_grad():
                # clone(): the teacher's logits may be inference tensors; a chunk's copy is not.
                t = flat_t[part]
                soft = fn(s, t.clone() if isinstance(t, Tensor) else t, mask=y != -100, **kwargs)
                hard = hard_ce(s, y)
                (g,) = torch.autograd.grad(alpha * soft + (1.0 - alpha) * hard, s)
            grad[part] = g
            soft_total = soft_total + soft.detach()
            hard_total = hard_total + hard.detach()
        ctx.save_for_backward(grad)
        ctx.shape = student_logits.shape
        ctx.mark_non_differentiable(soft_total, hard_total)
        return alpha * soft_total + (1.0 - alpha) * hard_total, soft_total, hard_total

    @staticmethod
    def backward(ctx, grad_total, grad_soft, grad_hard):  # noqa: ANN001, ANN205
        (grad,) = ctx.saved_tensors
        # In place: the buffer is not needed again, and a copy would be one more [tokens, vocab].
        return grad.mul_(grad_total.to(grad.dtype)).reshape(ctx.shape), None, None, None, None, None, None


class TeacherHead:
    """A teacher's logits not yet computed: its last hidden states ``(..., width)`` and its output
    head. Sliced like a tensor of logits, it computes only the slice's logits, so chunked losses
    never hold the teacher's full ``[tokens, vocabulary]`` logits."""

    def __init__(self, hidden: Tensor, head: Callable[[Tensor], Tensor]):
        self.hidden, self.head = hidden, head

    def reshape(self, items: int) -> TeacherHead:
        return TeacherHead(self.hidden.reshape(items, self.hidden.shape[-1]), self.head)

    def __getitem__(self, index: Any) -> Tensor:
        with torch.no_grad():
            return self.head(self.hidden[index])


def chunked_kd_mix(
    fn: Callable[..., Tensor],
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float,
    chunk: int,
    **kwargs: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(alpha · soft + (1 − alpha) · hard, soft, hard)`` over items whose label is not -100,
    ``chunk`` items at a time; only the first has a gradient (w.r.t. the student's logits).

    Equal to ``kd_mix(fn(s, t, mask=labels != -100, **kwargs), hard_ce(s, labels), alpha=alpha)``
    up to float summation order. The backward pass may be run once. ``teacher_logits`` is a dense
    tensor, or a :class:`TopK` (with a sparse ``fn``) or :class:`TeacherHead`, sliced per chunk.
    """
    if isinstance(teacher_logits, Tensor):
        teacher_logits = teacher_logits.detach()
    return _ChunkedKDMix.apply(student_logits, teacher_logits, labels, fn, alpha, max(chunk, 1), kwargs)


# --- Sparse soft labels: the teacher's top-k tokens and a tail bucket -------------------------
#
# A stored teacher keeps, per item, the log-probabilities (at the recipe's temperature) of its k
# most likely tokens, their ids, and the log of the probability left over (the *tail*). The losses
# below compare the teacher and the student over k + 1 outcomes: the k kept tokens, and the tail
# bucket that holds each model's mass on every other token. The student's tail is computed from
# its full distribution, so no mass is dropped or renormalised: with k equal to the vocabulary the
# tail is empty and the losses equal the dense ones in value and gradient. Each divergence over
# the buckets is at most the divergence over the full vocabulary (grouping outcomes never
# increases a divergence), with equality when the tail is empty.

TAIL_FLOOR = -1.0e4  # log-probability of an empty tail; exp() of it is exactly 0 in float32


class TopK:
    """A teacher's sparse soft labels for a batch: ``logprobs`` and ``ids`` ``(..., k)``, ``tail``
    ``(...)`` the log of the probability mass outside the k tokens (-inf or below when none)."""

    def __init__(self, logprobs: Tensor, ids: Tensor, tail: Tensor):
        self.logprobs, self.ids, self.tail = logprobs, ids, tail

    def __getitem__(self, index: Any) -> TopK:
        return TopK(self.logprobs[index], self.ids[index], self.tail[index])

    def reshape(self, items: int) -> TopK:
        k = self.ids.shape[-1]
        return TopK(self.logprobs.reshape(items, k), self.ids.reshape(items, k), self.tail.reshape(items))


@torch.no_grad()
def top_k_of(teacher_logits: Tensor, k: int, temperature: float) -> TopK:
    """The top-k soft labels of dense teacher logits at ``temperature`` (what a store keeps).

    The tail is summed from the probabilities in place (one exp over the vocabulary, the k kept
    ones zeroed), not by a masked copy's logsumexp: 4x less time over a 151,936-id vocabulary on a
    CPU, and the same sum (a log-softmax's probabilities are at most 1: nothing overflows; a tail
    below float32's smallest number is the empty tail)."""
    t = _log_probs(teacher_logits, temperature)  # a new tensor: free to overwrite below
    logprobs, ids = t.topk(min(k, t.shape[-1]), dim=-1)
    probs = t.exp_().scatter_(-1, ids, 0.0)
    return TopK(logprobs, ids, probs.sum(-1).log().clamp(min=TAIL_FLOOR))


def _tail(log_probs: Tensor, ids: Tensor) -> Tensor:
    """``log Σ_{j not in ids} p_j``, from the full log-probabilities, floored at TAIL_FLOOR."""
    rest = log_probs.scatter(-1, ids, torch.finfo(log_probs.dtype).min)
    return torch.logsumexp(rest, dim=-1).clamp(min=TAIL_FLOOR)


def _buckets(student_logits: Tensor, teacher: TopK, temperature: float) -> tuple[Tensor, Tensor]:
    """Both models' log-probabilities over the k kept tokens and the tail bucket, ``(..., k + 1)``."""
    s = _log_probs(student_logits, temperature)
    ids = teacher.ids.long()
    s_buckets = torch.cat([s.gather(-1, ids), _tail(s, ids).unsqueeze(-1)], dim=-1)
    t_tail = teacher.tail.float().clamp(min=TAIL_FLOOR).unsqueeze(-1)
    t_buckets = torch.cat([teacher.logprobs.float(), t_tail], dim=-1)
    return s_buckets, t_buckets


def sparse_soft_kl(
    student_logits: Tensor, teacher: TopK, *, temperature: float, mask: Tensor | None = None
) -> Tensor:
    """Forward KL over the teacher's top-k tokens and the tail bucket, ``T² · Σ_items``."""
    s, t = _buckets(student_logits, teacher, temperature)
    return temperature**2 * _masked_sum(_kl(t, s), mask)


def sparse_reverse_kl(
    student_logits: Tensor, teacher: TopK, *, temperature: float, mask: Tensor | None = None
) -> Tensor:
    """Reverse KL over the teacher's top-k tokens and the tail bucket, ``T² · Σ_items``."""
    s, t = _buckets(student_logits, teacher, temperature)
    return temperature**2 * _masked_sum(_kl(s, t), mask)


def sparse_jsd(
    student_logits: Tensor,
    teacher: TopK,
    *,
    temperature: float,
    beta: float = 0.5,
    mask: Tensor | None = None,
) -> Tensor:
    """``JSD_β`` over the teacher's top-k tokens and the tail bucket (β = 0, 1: the KL limits)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return sparse_soft_kl(student_logits, teacher, temperature=temperature, mask=mask)
    if beta == 1.0:
        return sparse_reverse_kl(student_logits, teacher, temperature=temperature, mask=mask)
    s, t = _buckets(student_logits, teacher, temperature)
    return temperature**2 * _masked_sum(_jsd(s, t, beta), mask)


SOFT_LOSSES = {"kl": soft_kl, "reverse_kl": reverse_kl, "jsd": jsd, "mse": soft_mse}
SPARSE_SOFT_LOSSES = {"kl": sparse_soft_kl, "reverse_kl": sparse_reverse_kl, "jsd": sparse_jsd}
HIDDEN_LOSSES = {"mse": hidden_mse, "cosine": hidden_cosine}
