"""Sparse soft labels (the teacher's top-k tokens and a tail bucket) against the dense losses."""

import math

import pytest
import torch

from distill.losses import (
    SOFT_LOSSES,
    SPARSE_SOFT_LOSSES,
    TeacherHead,
    TopK,
    chunked_kd_mix,
    hard_ce,
    kd_mix,
    top_k_of,
)

KINDS = [
    ("kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.3}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
]


def logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@pytest.mark.parametrize(("name", "kwargs"), KINDS)
@pytest.mark.parametrize("t", [1.0, 2.5])
def test_with_k_equal_to_the_vocabulary_they_equal_the_dense_losses_in_value_and_gradient(name, kwargs, t):
    s = logits(3, 6, 50, seed=1).requires_grad_(True)
    te = logits(3, 6, 50, seed=2)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    dense = SOFT_LOSSES[name](s, te, temperature=t, mask=mask, **kwargs)
    (g_dense,) = torch.autograd.grad(dense, s)
    sparse = SPARSE_SOFT_LOSSES[name](s, top_k_of(te, 50, t), temperature=t, mask=mask, **kwargs)
    (g_sparse,) = torch.autograd.grad(sparse, s)
    assert sparse.item() == pytest.approx(dense.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(g_sparse, g_dense, atol=1e-6, rtol=1e-5)
    assert torch.isfinite(g_sparse).all()


def test_the_tail_bucket_by_hand():
    """k = 2 of 4 tokens: KL over {a, b, rest} computed from probabilities in float64."""
    s = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    te = torch.tensor([[3.0, 1.0, -2.0, 0.5]])
    p, q = torch.softmax(te.double(), -1)[0], torch.softmax(s.double(), -1)[0]
    p3 = torch.stack([p[0], p[1], p[2] + p[3]])
    q3 = torch.stack([q[0], q[1], q[2] + q[3]])
    expected = (p3 * (p3 / q3).log()).sum().item()
    top = top_k_of(te, 2, 1.0)
    assert top.ids.tolist() == [[0, 1]]
    assert top.tail.exp().item() == pytest.approx((p[2] + p[3]).item(), rel=1e-6)
    assert SPARSE_SOFT_LOSSES["kl"](s, top, temperature=1.0).item() == pytest.approx(expected, rel=1e-5)
    reverse = (q3 * (q3 / p3).log()).sum().item()
    assert SPARSE_SOFT_LOSSES["reverse_kl"](s, top, temperature=1.0).item() == pytest.approx(
        reverse, rel=1e-5
    )


@pytest.mark.parametrize(("name", "kwargs"), KINDS[:3])
def test_grouping_never_exceeds_the_dense_divergence_and_shrinks_with_k(name, kwargs):
    s, te = logits(4, 5, 64, seed=3), logits(4, 5, 64, seed=4)
    dense = SOFT_LOSSES[name](s, te, temperature=2.0, **kwargs).item()
    values = [
        SPARSE_SOFT_LOSSES[name](s, top_k_of(te, k, 2.0), temperature=2.0, **kwargs).item()
        for k in (1, 4, 16, 64)
    ]
    assert all(v <= dense + 1e-5 for v in values)
    assert values == sorted(values)  # more tokens kept: closer to the dense value, from below
    assert values[-1] == pytest.approx(dense, rel=1e-5)
    assert values[0] < 0.9 * dense


@pytest.mark.parametrize(("name", "kwargs"), KINDS)
def test_finite_in_bf16_with_masked_items_and_extreme_logits(name, kwargs):
    s = (logits(2, 5, 300, seed=5, scale=40.0)).bfloat16().requires_grad_(True)
    te = logits(2, 5, 300, seed=6, scale=40.0).bfloat16()
    top = top_k_of(te, 8, 1.0)
    top = TopK(top.logprobs.bfloat16(), top.ids, top.tail.bfloat16())  # a store kept in bf16
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :2] = True
    loss = SPARSE_SOFT_LOSSES[name](s, top, temperature=1.0, mask=mask, **kwargs)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad.float()).all()
    assert (s.grad[~mask] == 0).all()
    none = SPARSE_SOFT_LOSSES[name](s, top, temperature=1.0, mask=torch.zeros_like(mask), **kwargs)
    assert none.item() == 0.0


def test_an_empty_tail_does_not_give_nan_when_the_teacher_is_certain():
    te = torch.full((1, 10), -1e9)
    te[0, 3] = 0.0  # all the teacher's mass on one token: the tail underflows to 0
    s = logits(1, 10, seed=7).requires_grad_(True)
    top = top_k_of(te, 2, 1.0)
    for name in SPARSE_SOFT_LOSSES:
        value = SPARSE_SOFT_LOSSES[name](s, top, temperature=1.0)
        (g,) = torch.autograd.grad(value, s)
        assert math.isfinite(value.item()) and torch.isfinite(g).all(), name


@pytest.mark.parametrize(("name", "kwargs"), KINDS[:3])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_sparse_kd_mix_equals_the_whole_computation(name, kwargs, chunk):
    s = logits(3, 8, 40, seed=8).requires_grad_(True)
    top = top_k_of(logits(3, 8, 40, seed=9), 5, 2.0)
    labels = torch.randint(0, 40, (3, 8), generator=torch.Generator().manual_seed(10))
    labels[0, 5:] = -100
    whole = kd_mix(
        SPARSE_SOFT_LOSSES[name](s, top, temperature=2.0, mask=labels != -100, **kwargs),
        hard_ce(s, labels),
        alpha=0.6,
    )
    (g_whole,) = torch.autograd.grad(whole, s)
    total, _, _ = chunked_kd_mix(
        SPARSE_SOFT_LOSSES[name], s, top, labels, alpha=0.6, chunk=chunk, temperature=2.0, **kwargs
    )
    (g_chunk,) = torch.autograd.grad(total, s)
    assert total.item() == pytest.approx(whole.item(), rel=1e-5)
    assert torch.allclose(g_chunk, g_whole, atol=1e-6, rtol=1e-5)


def test_teacher_logits_from_the_head_chunk_by_chunk_equal_the_dense_ones():
    hidden = logits(2, 6, 16, seed=11)
    head = torch.nn.Linear(16, 30)
    s = logits(2, 6, 30, seed=12).requires_grad_(True)
    labels = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        dense_t = head(hidden)
    a = chunked_kd_mix(SOFT_LOSSES["kl"], s, dense_t, labels, alpha=0.5, chunk=4, temperature=2.0)[0]
    (g_a,) = torch.autograd.grad(a, s)
    b = chunked_kd_mix(
        SOFT_LOSSES["kl"], s, TeacherHead(hidden, head), labels, alpha=0.5, chunk=4, temperature=2.0
    )[0]
    (g_b,) = torch.autograd.grad(b, s)
    assert b.item() == pytest.approx(a.item(), rel=1e-6)
    assert torch.equal(g_a, g_b)
