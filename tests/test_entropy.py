"""Entropy bonus: the loss term (token mean over the minibatch), the adaptive coefficient against
trl 1.16's trace (tests/data/peers/entropy_trl.json), settings, resume, and training end to end."""

import json
import math
from pathlib import Path

import pytest
import torch

from grpo.config import GRPOConfig, LossConfig
from grpo.loss import EntropyController, aggregation_denominator, compute_loss

PEER = json.loads((Path(__file__).parent / "data" / "peers" / "entropy_trl.json").read_text())


def _f(x):  # the JSON writes +inf as the string "Infinity"
    return float(x)


def _f32(x: float) -> float:  # trl's entropies pass through float32
    return float(torch.tensor(x, dtype=torch.float32))


# ------------------------------------------------------------------ the controller against trl
@pytest.mark.parametrize("case", ["trace_brief", "trace_clamp_max"])
def test_adaptive_coefficient_reproduces_trl_trace(case):
    """Driven by the entropies trl measured (its float32 token means, recorded as
    last_world_entropy_after_step), the controller gives trl's coefficient before and after
    every step and its gate exactly, and its applied coefficient to trl's float32 loss rounding."""
    p, rows = PEER[case]["params"], PEER[case]["rows"]
    c = EntropyController(p["entropy_coef_init"], target=p["entropy_target"], delta=p["entropy_coef_delta"],
                          coef_min=p["entropy_coef_min"], coef_max=p["entropy_coef_max"])
    for r in rows:
        assert c.coef == r["coef_before_step"]
        assert c.last_entropy == _f(r["last_world_entropy_before_step"])
        # trl's applied coef is recovered from its float32 loss: -loss / entropy (1e-6 rounding)
        assert c.applied == pytest.approx(abs(r["applied_coef"]), abs=1e-8)
        measured = r["last_world_entropy_after_step"]
        assert c.applied * measured == pytest.approx(-r["loss"], abs=1e-9)
        c.update(measured)
        assert c.coef == r["coef_after_step"] == r["logged_entropy_coef"]
        assert c.last_entropy == r["last_world_entropy_after_step"]


def test_static_coefficient_reproduces_trl_trace():
    rows = PEER["trace_static"]["rows"]
    c = EntropyController(PEER["trace_static"]["params"]["entropy_coef"])
    for r in rows:
        assert c.applied == pytest.approx(r["applied_coef"], abs=1e-8)
        c.update(_f32(r["measured_mean_entropy"]))
        assert c.coef == r["coef_after_step"] and c.last_entropy == math.inf


def test_measurement_is_token_weighted_over_micro_batches():
    """trl's grad-accumulation trace: micro-batches of 6 tokens at H = 0.2 and 2 at H = 0.8 are
    measured as (0.2*6 + 0.8*2) / 8 = 0.35 (<= target 0.4: coefficient up), not as the mean of
    the micro-batch means 0.5 (> target: down)."""
    g = PEER["trace_grad_accum"]
    p = g["params"]
    c = EntropyController(p["entropy_coef_init"], target=p["entropy_target"], delta=p["entropy_coef_delta"])
    c.last_entropy = p["last_world_entropy_init"]
    sums = [float((torch.full((r["tokens"],), r["entropy"]) ).sum()) for r in g["rows"]]
    e = c.measure(sum(sums), sum(r["tokens"] for r in g["rows"]))
    assert e == pytest.approx(g["rows"][-1]["last_world_entropy_after"], abs=1e-7)
    c.update(e)
    assert c.coef == g["rows"][-1]["coef_after"] == 0.02
    assert EntropyController.measure(0.0, 0) == 0.0  # no token: max(1, n) as trl


def test_controller_by_hand():
    # target 1.0, delta 0.1, range [0.05, 0.25], start 0.2:
    c = EntropyController(0.2, target=1.0, delta=0.1, coef_min=0.05, coef_max=0.25)
    assert c.applied == 0.0  # first step: last entropy +inf > 1.0
    c.update(1.0)  # 1.0 <= target (ties count as low): 0.2 + 0.1 = 0.3 -> clamped to 0.25
    assert (c.coef, c.applied) == (0.25, 0.25)
    c.update(1.5)  # above: 0.25 - 0.1 = 0.15, and the gate closes
    assert c.coef == pytest.approx(0.15) and c.applied == 0.0
    c.update(2.0)  # above: 0.15 - 0.1 = 0.05 (min)
    c.update(2.0)  # 0.05 - 0.1 -> clamped to 0.05
    assert c.coef == pytest.approx(0.05)
    state = json.loads(json.dumps(c.state_dict()))
    d = EntropyController(0.0, target=1.0)
    d.load_state_dict(state)
    assert d.state_dict() == c.state_dict()
    inf = EntropyController(0.1, target=1.0)
    assert json.loads(json.dumps(inf.state_dict()))["last_entropy"] == math.inf  # "Infinity" round trip


# ------------------------------------------------------------------ the loss term
def _inputs():
    # two sequences, 3 and 1 trained tokens; entropies 1, 2, 3 | 5 (pad entries are garbage)
    logp = torch.zeros(2, 3, requires_grad=True)
    ent = torch.tensor([[1.0, 2.0, 3.0], [5.0, 100.0, -7.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.zeros(2)
    return logp, ent, mask, adv


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_sum_max_len"])
def test_entropy_term_is_a_token_mean_for_every_aggregation(agg):
    # advantages 0 and pi = pi_old: the policy term is 0, so loss = -c * (1 + 2 + 3 + 5) / 4
    # = -0.1 * 2.75 = -0.275 for every aggregation (the policy term's normaliser would give
    # seq_mean_token_mean: -0.1 * (2 + 5) / 2 = -0.35, seq_sum_max_len: -0.1 * 11 / 6)
    logp, ent, mask, adv = _inputs()
    out = compute_loss(logp, logp.detach(), adv, mask, entropy=ent, entropy_coef=0.1, aggregation=agg)
    assert out.loss.item() == pytest.approx(-0.275)
    assert out.entropy_bonus.item() == pytest.approx(2.75)
    (g,) = torch.autograd.grad(out.loss, ent)
    # dloss/dH = -c / N_tokens on trained tokens, 0 on padding: raising entropy lowers the loss
    torch.testing.assert_close(g, torch.tensor([[-0.025, -0.025, -0.025], [-0.025, 0.0, 0.0]]))


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
def test_micro_batches_with_the_token_normalizer_add_up_to_the_full_batch(agg):
    g = torch.Generator().manual_seed(3)
    logp = (-torch.rand(6, 5, generator=g)).requires_grad_()
    old = logp.detach() + 0.05 * torch.randn(6, 5, generator=g)
    adv = torch.randn(6, generator=g)
    ent = torch.rand(6, 5, generator=g).requires_grad_()
    mask = torch.rand(6, 5, generator=g) > 0.3
    mask[:, 0] = True
    kw = dict(entropy_coef=0.3, aggregation=agg)
    full = compute_loss(logp, old, adv, mask, entropy=ent, **kw)
    gl, ge = torch.autograd.grad(full.loss, (logp, ent))
    norm, ent_norm = aggregation_denominator(mask, agg), aggregation_denominator(mask, "token_mean")
    parts = [compute_loss(logp[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2], entropy=ent[i:i + 2],
                          normalizer=norm, entropy_normalizer=ent_norm, **kw) for i in (0, 2, 4)]
    total = sum(p.loss for p in parts)
    pl, pe = torch.autograd.grad(total, (logp, ent))
    torch.testing.assert_close(total, full.loss)
    torch.testing.assert_close(pl, gl)
    torch.testing.assert_close(pe, ge)
    # without the whole-batch token count each micro-batch would divide by its own
    own = sum(compute_loss(logp[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2], entropy=ent[i:i + 2],
                           normalizer=norm, **kw).loss for i in (0, 2, 4))
    assert abs(own.item() - full.loss.item()) > 1e-3


# ------------------------------------------------------------------ settings
def test_settings():
    lc = LossConfig(entropy_coef=0.01, entropy_target=0.3)
    assert (lc.entropy_coef_delta, lc.entropy_coef_min, lc.entropy_coef_max) == (0.005, 0.0, 1.0)  # trl's
    assert LossConfig().entropy_target is None
    for bad, match in [(dict(entropy_target=0.0), "entropy_target"), (dict(entropy_target=-1.0), "entropy_target"),
                       (dict(entropy_coef=-0.1), "entropy_coef"),
                       (dict(entropy_target=0.3, entropy_coef_delta=-0.1), "entropy_coef_delta"),
                       (dict(entropy_target=0.3, entropy_coef_min=0.5, entropy_coef_max=0.1), "entropy_coef_min"),
                       (dict(entropy_coef_delta=0.01), "entropy_target")]:
        with pytest.raises(ValueError, match=match):
            LossConfig(**bad)
    with pytest.raises(ValueError, match="loss.entropy_target"):  # new in 0.2: no flat key
        GRPOConfig(entropy_target=0.3)
