"""grpo.advantages: hand-computed numbers, a loop reference, invariances, bad input."""

import math
import statistics

import numpy as np
import pytest
import torch

from grpo.advantages import compute_group_advantages, group_advantages


def approx(values, expected, tol=1e-4):
    assert len(values) == len(expected)
    for v, e in zip(values, expected):
        assert v == pytest.approx(e, abs=tol), (values, expected)


# ------------------------------------------------------------------ numbers worked by hand
def test_group_scale_by_hand():
    # r = [1, 2, 3, 6]: mean 3, deviations [-2, -1, 0, 3]
    # Bessel variance (4 + 1 + 0 + 9) / 3 = 14/3, std = 2.16025
    # A = [-2, -1, 0, 3] / 2.16025 = [-0.92582, -0.46291, 0, 1.38873]
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), 4)
    approx(adv.tolist(), [-0.92582, -0.46291, 0.0, 1.38873])


def test_two_groups_are_independent_by_hand():
    # group 1: [1, 0] mean 0.5, Bessel std sqrt(0.5) = 0.70711 -> [0.70711, -0.70711]
    # group 2: [5, 7] mean 6, std sqrt(2) = 1.41421 -> [-0.70711, 0.70711]
    adv = group_advantages(torch.tensor([1.0, 0.0, 5.0, 7.0]), 2)
    approx(adv.tolist(), [0.70711, -0.70711, -0.70711, 0.70711])


def test_dr_grpo_none_scale_by_hand():
    # no std division: r - group mean; [1, 2, 3, 6] -> [-2, -1, 0, 3]
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), 4, scale="none")
    approx(adv.tolist(), [-2.0, -1.0, 0.0, 3.0])


def test_batch_scale_by_hand():
    # groups [1, 0] and [3, 3]; group deviations [0.5, -0.5, 0, 0]
    # batch [1, 0, 3, 3]: mean 1.75, squared devs .5625 + 3.0625 + 1.5625 + 1.5625 = 6.75,
    # Bessel variance 6.75 / 3 = 2.25, std 1.5 -> A = [0.33333, -0.33333, 0, 0]
    adv = group_advantages(torch.tensor([1.0, 0.0, 3.0, 3.0]), 2, scale="batch")
    approx(adv.tolist(), [1 / 3, -1 / 3, 0.0, 0.0])


def test_rloo_by_hand():
    # r = [1, 2, 3, 6], baseline = mean of the other three:
    # 1 - (2+3+6)/3 = -8/3; 2 - (1+3+6)/3 = -4/3; 3 - (1+2+6)/3 = 0; 6 - (1+2+3)/3 = 4
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), 4, scale="none", leave_one_out=True)
    approx(adv.tolist(), [-8 / 3, -4 / 3, 0.0, 4.0])


def test_zero_variance_groups_get_zero_and_are_counted():
    out = compute_group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 2.0]), 2)
    # groups: [1,1] dead, [1,0] live, [1,0] live, [2,2] dead
    approx(out.advantages.tolist(), [0, 0, 0.70711, -0.70711, 0.70711, -0.70711, 0, 0])
    assert out.zero_std_frac == pytest.approx(0.5)
    assert out.unscorable_frac == 0.0


def test_unscorable_rewards_are_excluded_and_get_zero():
    # group [1, None, 0, 0]: scorable [1, 0, 0], mean 1/3, devs [2/3, -1/3, -1/3]
    # Bessel var (4/9 + 1/9 + 1/9) / 2 = 1/3, std 0.57735 -> [1.1547, 0, -0.57735, -0.57735]
    out = compute_group_advantages([1.0, None, 0.0, 0.0, None, 3.0, None, None], 4)
    approx(out.advantages.tolist(), [1.1547, 0.0, -0.57735, -0.57735, 0.0, 0.0, 0.0, 0.0])
    assert out.unscorable_frac == pytest.approx(4 / 8)
    # second group has a single scorable reward: no baseline -> counted as zero-signal
    assert out.zero_std_frac == pytest.approx(0.5)
    assert math.isclose(out.group_mean[1].item(), 3.0)
    nan_tensor = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    approx(group_advantages(nan_tensor, 4).tolist(), [1.1547, 0.0, -0.57735, -0.57735])


def test_all_unscorable_group():
    out = compute_group_advantages([None, None, 1.0, 0.0], 2)
    approx(out.advantages.tolist(), [0.0, 0.0, 0.70711, -0.70711])
    assert math.isnan(out.group_mean[0].item())


# ------------------------------------------------------- loop reference vs vectorised code
def _reference(rewards, g, scale, loo, eps=1e-6):
    """Straight from the formulas, one group at a time, with Python's statistics module."""
    out, batch = [], [r for r in rewards if r is not None]
    batch_std = statistics.stdev(batch) if len(batch) > 1 else 0.0
    for p in range(len(rewards) // g):
        grp = rewards[p * g:(p + 1) * g]
        ok = [r for r in grp if r is not None]
        if len(ok) < 2 or max(ok) == min(ok):
            out += [0.0] * g
            continue
        mean, std = statistics.mean(ok), statistics.stdev(ok)
        for r in grp:
            if r is None:
                out.append(0.0)
                continue
            dev = r - (sum(ok) - r) / (len(ok) - 1) if loo else r - mean
            out.append(dev / (std + eps) if scale == "group" else
                       dev / (batch_std + eps) if scale == "batch" else dev)
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("loo", [False, True])
def test_matches_loop_reference(scale, loo):
    rng = np.random.default_rng(0)
    for g in (2, 3, 8):
        rewards = [None if rng.random() < 0.15 else float(rng.integers(0, 3)) for _ in range(g * 7)]
        approx(group_advantages(rewards, g, scale=scale, leave_one_out=loo).tolist(),
               _reference(rewards, g, scale, loo), tol=1e-5)


def test_group_scale_matches_numpy_std_ddof1():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(5, 16))
    expected = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)
    got = group_advantages(torch.tensor(r.reshape(-1)), 16).numpy().reshape(5, 16)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- invariances
def test_permuting_groups_permutes_advantages():
    rng = np.random.default_rng(2)
    r = torch.tensor(rng.normal(size=24))
    adv = group_advantages(r, 4).view(6, 4)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    adv_perm = group_advantages(r.view(6, 4)[perm].reshape(-1), 4).view(6, 4)
    torch.testing.assert_close(adv_perm, adv[perm])
    inner = torch.tensor([2, 0, 3, 1])  # permuting inside a group permutes its advantages
    torch.testing.assert_close(group_advantages(r.view(6, 4)[:, inner].reshape(-1), 4).view(6, 4),
                               adv[:, inner])


def test_affine_reward_invariance_of_group_scale_and_linearity_of_none():
    r = torch.tensor([0.0, 1.0, 1.0, 0.0, 2.0, 5.0])
    torch.testing.assert_close(group_advantages(3.0 * r + 7.0, 3), group_advantages(r, 3),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(group_advantages(3.0 * r + 7.0, 3, scale="none"),
                               3.0 * group_advantages(r, 3, scale="none"))


def test_advantages_sum_to_zero_in_each_live_group():
    r = torch.tensor(np.random.default_rng(3).normal(size=32))
    for kw in ({}, {"scale": "none"}, {"leave_one_out": True}):
        assert group_advantages(r, 8, **kw).view(4, 8).sum(1).abs().max() < 1e-5


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("rewards, g, match", [
    (torch.zeros(6), 4, "multiple of group_size"),
    (torch.zeros(4), 1, "group_size must be >= 2"),
    (torch.zeros(0), 2, "positive multiple"),
    (torch.zeros(2, 2), 2, "1-D"),
    (torch.tensor([1.0, float("inf")]), 2, "inf"),
])
def test_bad_input_raises_clear_error(rewards, g, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, g)


def test_bad_scale_and_group_type():
    with pytest.raises(ValueError, match="scale must be one of"):
        group_advantages(torch.zeros(4), 2, scale="std")
    with pytest.raises(TypeError):
        group_advantages(torch.zeros(4), 2.0)
