import math

import pytest
import torch

from distill.losses import hard_ce, hidden_cosine, hidden_mse, jsd, kd_mix, reverse_kl, soft_kl

SOFT = {"kl": soft_kl, "reverse_kl": reverse_kl, "jsd": jsd}


def logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def kl_reference(p_logits, q_logits, t):
    """float64 KL(p || q) per item, from probabilities (not log-space), as an independent reference."""
    p = torch.softmax(p_logits.double() / t, -1)
    q = torch.softmax(q_logits.double() / t, -1)
    return (p * (p.log() - q.log())).sum(-1)


@pytest.mark.parametrize("name", list(SOFT))
def test_zero_for_identical_inputs(name):
    x = logits(4, 7, 11)
    assert SOFT[name](x, x.clone(), temperature=2.0).abs().item() < 1e-5


@pytest.mark.parametrize("name", list(SOFT))
@pytest.mark.parametrize("t", [0.5, 1.0, 4.0])
def test_non_negative(name, t):
    for seed in range(5):
        s, te = logits(6, 9, seed=seed), logits(6, 9, seed=seed + 100)
        assert SOFT[name](s, te, temperature=t).item() >= 0


@pytest.mark.parametrize("t", [1.0, 2.0, 5.0])
def test_forward_kl_matches_float64_reference_with_t_squared(t):
    s, te = logits(5, 13), logits(5, 13, seed=1)
    expected = t**2 * kl_reference(te, s, t).sum()
    assert soft_kl(s, te, temperature=t).item() == pytest.approx(expected.item(), rel=1e-5)


def test_reverse_kl_matches_float64_reference():
    s, te = logits(5, 13), logits(5, 13, seed=1)
    expected = 4.0 * kl_reference(s, te, 2.0).sum()
    assert reverse_kl(s, te, temperature=2.0).item() == pytest.approx(expected.item(), rel=1e-5)
    # KL is not symmetric: forward and reverse differ on these inputs.
    assert abs(reverse_kl(s, te, temperature=2.0) - soft_kl(s, te, temperature=2.0)).item() > 1e-3


def test_jsd_matches_float64_reference():
    s, te, beta, t = logits(5, 13), logits(5, 13, seed=1), 0.3, 2.0
    p = torch.softmax(te.double() / t, -1)
    q = torch.softmax(s.double() / t, -1)
    m = beta * p + (1 - beta) * q
    ref = beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
    assert jsd(s, te, temperature=t, beta=beta).item() == pytest.approx(t**2 * ref.sum().item(), rel=1e-5)


def test_jsd_limits_are_forward_and_reverse_kl():
    s, te = logits(3, 10, scale=1.0), logits(3, 10, seed=2, scale=1.0)
    fwd = soft_kl(s, te, temperature=1.0)
    rev = reverse_kl(s, te, temperature=1.0)
    assert jsd(s, te, temperature=1.0, beta=0.0).item() == pytest.approx(fwd.item())
    assert jsd(s, te, temperature=1.0, beta=1.0).item() == pytest.approx(rev.item())
    # Near the ends, JSD_beta / beta -> KL(p||q) and JSD_beta / (1 - beta) -> KL(q||p).
    eps = 1e-4
    assert (jsd(s, te, temperature=1.0, beta=eps) / eps).item() == pytest.approx(fwd.item(), rel=2e-3)
    assert (jsd(s, te, temperature=1.0, beta=1 - eps) / eps).item() == pytest.approx(rev.item(), rel=2e-3)


def test_symmetric_jsd_is_bounded_by_log2():
    s, te = logits(8, 50, scale=30.0), logits(8, 50, seed=3, scale=30.0)
    per_item = jsd(s, te, temperature=1.0, beta=0.5) / 8
    assert 0 < per_item.item() <= math.log(2) + 1e-6


@pytest.mark.parametrize("name", list(SOFT))
def test_mask_drops_items_and_fully_masked_gives_zero_with_finite_grad(name):
    s = logits(4, 6, 8).requires_grad_(True)
    te = logits(4, 6, 8, seed=5)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, :3] = True
    partial = SOFT[name](s, te, temperature=2.0, mask=mask)
    only_kept = SOFT[name](s[:, :3], te[:, :3], temperature=2.0)
    assert partial.item() == pytest.approx(only_kept.item(), rel=1e-5)

    none = SOFT[name](s, te, temperature=2.0, mask=torch.zeros(4, 6, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() == 0


@pytest.mark.parametrize("name", list(SOFT))
@pytest.mark.parametrize("t", [1.0, 2.0, 4.0, 8.0])
def test_finite_under_bf16(name, t):
    s = (logits(16, 30522, scale=20.0)).bfloat16().requires_grad_(True)
    te = logits(16, 30522, seed=9, scale=20.0).bfloat16()
    loss = SOFT[name](s, te, temperature=t)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(s.grad.float()).all()
    ref = SOFT[name](s.detach().float(), te.float(), temperature=t)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)


def test_losses_are_sums_over_items():
    s, te = logits(6, 5), logits(6, 5, seed=1)
    whole = soft_kl(s, te, temperature=2.0)
    halves = soft_kl(s[:3], te[:3], temperature=2.0) + soft_kl(s[3:], te[3:], temperature=2.0)
    assert whole.item() == pytest.approx(halves.item(), rel=1e-6)


def test_hard_ce_sums_and_ignores_minus_100():
    s = logits(4, 5)
    labels = torch.tensor([0, 3, -100, 1])
    expected = torch.nn.functional.cross_entropy(s[[0, 1, 3]], labels[[0, 1, 3]], reduction="sum")
    assert hard_ce(s, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_kd_mix_endpoints():
    soft, hard = torch.tensor(2.0), torch.tensor(5.0)
    assert kd_mix(soft, hard, alpha=1.0).item() == 2.0
    assert kd_mix(soft, hard, alpha=0.0).item() == 5.0
    assert kd_mix(soft, hard, alpha=0.25).item() == pytest.approx(0.25 * 2 + 0.75 * 5)


def test_hidden_losses_ignore_padding_and_average_per_sequence():
    h_s, h_t = logits(2, 4, 8), logits(2, 4, 8, seed=1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    # Changing padded positions must not change the loss.
    h_s2 = h_s.clone()
    h_s2[0, 2:] = 100.0
    assert hidden_mse(h_s, h_t, mask=mask).item() == pytest.approx(hidden_mse(h_s2, h_t, mask=mask).item())
    expected = ((h_s[0, :2] - h_t[0, :2]) ** 2).mean() + ((h_s[1] - h_t[1]) ** 2).mean()
    assert hidden_mse(h_s, h_t, mask=mask).item() == pytest.approx(expected.item(), rel=1e-5)
    assert hidden_cosine(h_t, h_t.clone() * 3.0, mask=mask).abs().item() < 1e-5
    assert hidden_cosine(h_t, -h_t, mask=mask).item() == pytest.approx(4.0, rel=1e-5)  # 2 items x distance 2


def test_chunked_kd_mix_bf16_logits_keep_their_dtype_for_the_gradient():
    from distill.losses import chunked_kd_mix

    s = logits(2, 5, 300).bfloat16().requires_grad_(True)
    te = logits(2, 5, 300, seed=1).bfloat16()
    labels = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(2))
    total, soft, _ = chunked_kd_mix(soft_kl, s, te, labels, alpha=1.0, chunk=3, temperature=4.0)
    total.backward()
    assert total.dtype == torch.float32 and s.grad.dtype == torch.bfloat16
    ref = soft_kl(s.detach().float(), te.float(), temperature=4.0)
    assert soft.item() == pytest.approx(ref.item(), rel=1e-4)


@pytest.mark.parametrize("name", list(SOFT))
@pytest.mark.parametrize("chunk", [1, 5, 64, 1000])
def test_chunked_kd_mix_equals_kd_mix_in_value_and_gradient(name, chunk):
    from distill.losses import chunked_kd_mix

    s = logits(3, 8, 40, seed=4).requires_grad_(True)
    te = logits(3, 8, 40, seed=5)
    labels = torch.randint(0, 40, (3, 8), generator=torch.Generator().manual_seed(6))
    labels[0, 5:] = -100
    labels[2, 2:] = -100
    kwargs = {"beta": 0.7} if name == "jsd" else {}
    soft = SOFT[name](s, te, temperature=3.0, mask=labels != -100, **kwargs)
    hard = hard_ce(s, labels)
    whole = kd_mix(soft, hard, alpha=0.4)
    (g_whole,) = torch.autograd.grad(whole * 0.3, s)
    total, soft_c, hard_c = chunked_kd_mix(
        SOFT[name], s, te, labels, alpha=0.4, chunk=chunk, temperature=3.0, **kwargs
    )
    (g_chunk,) = torch.autograd.grad(total * 0.3, s)
    assert total.item() == pytest.approx(whole.item(), rel=1e-5)
    assert soft_c.item() == pytest.approx(soft.item(), rel=1e-5) and hard_c.item() == pytest.approx(
        hard.item(), rel=1e-5
    )
    assert torch.allclose(g_chunk, g_whole, atol=1e-6, rtol=1e-5)
    assert (g_chunk[labels == -100] == 0).all()
