"""grpo.loss: hand-computed cases, a per-token loop reference, invariances, bad input."""

import math

import pytest
import torch

from grpo.loss import aggregate, kl_k1, kl_k2, kl_k3, policy_loss


def one_token(log_ratio, adv, **kw):
    logp = torch.tensor([[log_ratio]], requires_grad=True)
    out = policy_loss(logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), **kw)
    return out, logp


# ----------------------------------------------------------------------------- by hand
def test_unclipped_ratio_by_hand():
    # ratio = exp(log 1.1) = 1.1 inside [0.8, 1.2]: loss = -1.1 * A = -2.2 for A = 2
    out, _ = one_token(math.log(1.1), 2.0)
    assert out.loss.item() == pytest.approx(-2.2, abs=1e-6)
    assert out.clip_frac_high.item() == 0.0 and out.clip_frac_low.item() == 0.0


def test_positive_advantage_clipped_high_by_hand():
    # ratio 1.5, A = 1: -min(1.5 * 1, 1.2 * 1) = -1.2; the clipped branch has no gradient
    out, logp = one_token(math.log(1.5), 1.0)
    assert out.loss.item() == pytest.approx(-1.2, abs=1e-6)
    assert out.clip_frac_high.item() == 1.0
    out.loss.backward()
    assert logp.grad.item() == 0.0
    # clip-higher (DAPO eps_high = 0.28): -min(1.5, 1.28) = -1.28
    out, _ = one_token(math.log(1.5), 1.0, eps_high=0.28)
    assert out.loss.item() == pytest.approx(-1.28, abs=1e-6)


def test_negative_advantage_clipped_low_by_hand():
    # ratio 0.5, A = -1: -min(0.5 * -1, 0.8 * -1) = -min(-0.5, -0.8) = 0.8
    out, logp = one_token(math.log(0.5), -1.0)
    assert out.loss.item() == pytest.approx(0.8, abs=1e-6)
    assert out.clip_frac_low.item() == 1.0
    out.loss.backward()
    assert logp.grad.item() == 0.0
    # asymmetric: eps_low = 0.6 -> bound 0.4 < 0.5, unclipped: loss 0.5
    out, _ = one_token(math.log(0.5), -1.0, eps_low=0.6)
    assert out.loss.item() == pytest.approx(0.5, abs=1e-6)


def test_dual_clip_by_hand():
    # ratio 5, A = -1: PPO loss -min(-5, -1.2) = 5; dual clip c = 3 caps it at 3 * |A| = 3
    out, _ = one_token(math.log(5.0), -1.0)
    assert out.loss.item() == pytest.approx(5.0, abs=1e-5)
    out, logp = one_token(math.log(5.0), -1.0, dual_clip=3.0)
    assert out.loss.item() == pytest.approx(3.0, abs=1e-6)
    assert out.dual_clip_frac.item() == 1.0
    # dual clip never touches positive advantages: ratio 5, A = +1 -> -1.2
    out, _ = one_token(math.log(5.0), 1.0, dual_clip=3.0)
    assert out.loss.item() == pytest.approx(-1.2, abs=1e-6)


def test_kl_estimators_by_hand():
    # log pi = log 0.5, log pi_ref = log 0.25 -> d = log pi_ref - log pi = -log 2 = -0.693147
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_k1(lp, ref).item() == pytest.approx(0.693147, abs=1e-6)          # -d
    assert kl_k2(lp, ref).item() == pytest.approx(0.5 * 0.693147**2, abs=1e-6)  # d^2/2 = 0.240227
    assert kl_k3(lp, ref).item() == pytest.approx(0.5 + 0.693147 - 1, abs=1e-6)  # e^d - d - 1 = 0.193147


def test_kl_term_enters_loss_with_beta_by_hand():
    # ratio 1 (on-policy), A = 0 -> pg = 0; k3 = 0.193147 (as above); beta = 0.1 -> 0.0193147
    logp = torch.full((1, 1), math.log(0.5))
    out = policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 1),
                      ref_logp=torch.full((1, 1), math.log(0.25)), beta=0.1)
    assert out.loss.item() == pytest.approx(0.0193147, abs=1e-6)
    assert out.kl.item() == pytest.approx(0.193147, abs=1e-6)


def test_tis_weight_by_hand():
    # on-policy ratio 1, A = 1, pg = -1 per token; rollout engine had log pi_rollout lower by
    # log 1.5 on token 1 (w = 1.5) and by log 4 on token 2 (w = min(4, C=2) = 2).
    # token mean: -(1.5 + 2) / 2 = -1.75
    logp = torch.zeros(1, 2)
    rollout = torch.tensor([[-math.log(1.5), -math.log(4.0)]])
    out = policy_loss(logp, logp, torch.ones(1), torch.ones(1, 2), rollout_logp=rollout, is_cap=2.0)
    assert out.loss.item() == pytest.approx(-1.75, abs=1e-6)
    assert out.is_weight_max.item() == pytest.approx(2.0)
    assert out.is_weight_min.item() == pytest.approx(1.5)
    assert out.is_weight_mean.item() == pytest.approx(1.75)


def test_aggregation_modes_by_hand():
    loss = torch.tensor([[1.0, 3.0, 5.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx((1 + 3 + 5 + 2) / 4)
    assert aggregate(loss, mask, "seq_mean_token_mean").item() == pytest.approx((9 / 3 + 2 / 1) / 2)
    assert aggregate(loss, mask, "seq_sum_max_len").item() == pytest.approx(11 / (2 * 3))
    assert aggregate(loss, mask, "seq_sum_max_len", normalizer=2 * 10).item() == pytest.approx(11 / 20)


# --------------------------------------------------------------------------- gradients
def test_on_policy_gradient_is_reinforce():
    # at ratio 1, d loss / d logp_t = -A_t / (number of tokens) for token_mean
    logp = torch.randn(2, 3, requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    policy_loss(logp, logp.detach(), adv, torch.ones(2, 3)).loss.backward()
    torch.testing.assert_close(logp.grad, -adv[:, None].expand(2, 3) / 6)


def test_raising_logp_of_positive_advantage_token_lowers_loss():
    old = torch.log(torch.tensor([[0.3, 0.2]]))
    adv = torch.tensor([1.0])
    base = policy_loss(old.clone(), old, adv, torch.ones(1, 2)).loss.item()
    up = policy_loss(old + torch.tensor([[0.05, 0.0]]), old, adv, torch.ones(1, 2)).loss.item()
    assert up < base
    down = policy_loss(old + torch.tensor([[0.05, 0.0]]), old, -adv, torch.ones(1, 2)).loss.item()
    assert down > policy_loss(old.clone(), old, -adv, torch.ones(1, 2)).loss.item()


# ------------------------------------------------------------ per-token loop reference
def _reference_loss(logp, old, adv, mask, ref, beta, eps_low, eps_high, est, agg, rollout=None, cap=2.0):
    """DeepSeekMath eq. (3) written token by token with Python floats."""
    b, t = len(logp), len(logp[0])
    per_tok = [[0.0] * t for _ in range(b)]
    for i in range(b):
        for j in range(t):
            if not mask[i][j]:
                continue
            r = math.exp(logp[i][j] - old[i][j])
            pg = -min(r * adv[i], min(max(r, 1 - eps_low), 1 + eps_high) * adv[i])
            # the behaviour weight: the tokens are the rollout engine's, for both terms (math.md 2.9)
            w = 1.0 if rollout is None else min(math.exp(old[i][j] - rollout[i][j]), cap)
            d = ref[i][j] - logp[i][j]
            kl = {"k1": -d, "k2": d * d / 2, "k3": math.exp(d) - d - 1}[est]
            per_tok[i][j] = w * (pg + beta * kl)
    n_tok = sum(sum(row) for row in mask)
    if agg == "token_mean":
        return sum(map(sum, per_tok)) / n_tok
    if agg == "seq_mean_token_mean":
        return sum(sum(per_tok[i]) / sum(mask[i]) for i in range(b)) / b
    return sum(map(sum, per_tok)) / (b * t)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_sum_max_len"])
@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
@pytest.mark.parametrize("use_tis", [False, True])
def test_matches_per_token_reference(agg, est, use_tis):
    g = torch.Generator().manual_seed(0)
    b, t = 4, 6
    logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    old = logp + 0.4 * torch.randn(b, t, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    rollout = old + 0.5 * torch.randn(b, t, generator=g, dtype=torch.float64) if use_tis else None
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 1:] = False
    out = policy_loss(logp, old, adv, mask, ref_logp=ref, beta=0.05, eps_low=0.2, eps_high=0.28,
                      kl_estimator=est, aggregation=agg, rollout_logp=rollout)
    expected = _reference_loss(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), ref.tolist(),
                               0.05, 0.2, 0.28, est, agg,
                               rollout.tolist() if use_tis else None)
    assert out.loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_gspo_sequence_ratio_matches_direct_sequence_objective():
    # GSPO eq. (5): J = 1/G sum_i min(s_i A_i, clip(s_i) A_i), s_i = exp(mean_t log r_t)
    g = torch.Generator().manual_seed(1)
    b, t = 5, 7
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 2
    delta = 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 3:] = False
    mask[2, 5:] = False
    adv = torch.randn(b, generator=g, dtype=torch.float64)

    lp1 = (old + delta).requires_grad_()
    out = policy_loss(lp1, old, adv, mask, ratio_level="sequence", aggregation="seq_mean_token_mean",
                      eps_low=3e-4, eps_high=4e-4)
    out.loss.backward()

    lp2 = (old + delta).requires_grad_()
    s = torch.exp(((lp2 - old) * mask).sum(1) / mask.sum(1))
    direct = -torch.minimum(s * adv, s.clamp(1 - 3e-4, 1 + 4e-4) * adv).mean()
    direct.backward()
    assert out.loss.item() == pytest.approx(direct.item(), rel=1e-10)
    torch.testing.assert_close(lp1.grad, lp2.grad)
    assert out.ratio_mean.item() > 0


# ---------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("agg, norm", [
    ("token_mean", lambda m: m.sum()),
    ("seq_mean_token_mean", lambda m: m.shape[0]),
    ("seq_sum_max_len", lambda m: m.shape[0] * m.shape[1]),
])
def test_shards_with_global_normalizer_reproduce_full_batch(agg, norm):
    """Gradient accumulation / data parallel: summing shard losses (and grads) computed with the
    full batch's normalizer gives the full-batch loss and gradient."""
    g = torch.Generator().manual_seed(2)
    b, t = 6, 5
    logp = (-torch.rand(b, t, generator=g, dtype=torch.float64)).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[:, 0] = True
    full = policy_loss(logp, old, adv, mask, aggregation=agg)
    (grad_full,) = torch.autograd.grad(full.loss, logp)
    total, grad_sum = 0.0, torch.zeros_like(logp)
    for idx in (slice(0, 2), slice(2, 3), slice(3, 6)):
        shard = policy_loss(logp[idx], old[idx], adv[idx], mask[idx], aggregation=agg,
                            normalizer=norm(mask))
        total += shard.loss.item()
        grad_sum += torch.autograd.grad(shard.loss, logp)[0]
    assert total == pytest.approx(full.loss.item(), rel=1e-12)
    torch.testing.assert_close(grad_sum, grad_full)


def test_padding_values_do_not_matter():
    logp = torch.tensor([[-1.0, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    common = dict(ref_logp=torch.tensor([[-1.5, -1.0, 0.0]]), beta=0.1)
    a = policy_loss(logp, logp - 0.1, torch.ones(1), mask, **common)
    garbage = torch.tensor([[-1.0, -2.0, 500.0]])  # exp(500) would be inf
    b = policy_loss(garbage, garbage - torch.tensor([[0.1, 0.1, -300.0]]), torch.ones(1), mask,
                    ref_logp=torch.tensor([[-1.5, -1.0, -900.0]]), beta=0.1)
    assert torch.isfinite(b.loss)
    assert a.loss.item() == pytest.approx(b.loss.item())
    assert b.ratio_max.item() == pytest.approx(math.exp(0.1), rel=1e-6)


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_non_finite_padding_never_reaches_the_gradient(est):
    logp = torch.tensor([[-1.0, float("inf")], [-0.5, -0.7]], requires_grad=True)  # [0, 1] is padding
    old = torch.tensor([[-1.1, 0.0], [-0.4, -0.7]])
    ref = torch.tensor([[-1.0, 0.0], [-0.5, -0.6]])
    out = policy_loss(logp, old, torch.tensor([1.0, -1.0]), torch.tensor([[1, 0], [1, 1]]),
                      ref_logp=ref, beta=0.1, kl_estimator=est)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logp.grad).all()
    assert logp.grad[0, 1].item() == 0.0


def test_permuting_sequences_leaves_loss_unchanged():
    g = torch.Generator().manual_seed(3)
    logp, old = -torch.rand(4, 3, generator=g), -torch.rand(4, 3, generator=g)
    adv, mask = torch.randn(4, generator=g), torch.ones(4, 3)
    perm = torch.tensor([2, 0, 3, 1])
    for agg in ("token_mean", "seq_mean_token_mean", "seq_sum_max_len"):
        a = policy_loss(logp, old, adv, mask, aggregation=agg).loss
        b = policy_loss(logp[perm], old[perm], adv[perm], mask[perm], aggregation=agg).loss
        assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_beta_zero_needs_no_reference():
    out = policy_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2), torch.ones(2, 2))
    assert out.kl.item() == 0.0
    assert set(out.metrics()) >= {"loss/loss", "loss/kl", "loss/clip_frac_high", "loss/ratio_max"}


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(beta=0.1), "needs ref_logp"),
    (dict(beta=-1.0), "beta"),
    (dict(kl_estimator="k4"), "kl_estimator"),
    (dict(aggregation="mean"), "aggregation"),
    (dict(ratio_level="seq"), "ratio_level"),
    (dict(dual_clip=0.5), "dual_clip"),
    (dict(eps_low=1.0), "eps_low"),
    (dict(is_cap=0.0), "is_cap"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2), torch.ones(2, 3), **kwargs)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="old_logp has shape"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="advantages must be"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        policy_loss(torch.zeros(3), torch.zeros(3), torch.ones(3), torch.ones(3))
