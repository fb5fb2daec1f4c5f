"""The objectives CISPO, SAPO, GMPO and DPPO against their peers' own numbers, by hand, and at
the configuration.

Peer numbers (tests/data/peers/losses_<name>.json) were produced outside the project by running
trl, verl and SkyRL's loss code on a fixed grid (provenance: repository, path and commit in each
file). Each test rebuilds the grid's tensors from the stored lists and compares the loss value
and d loss / d logp. Tolerances: trl and verl are plain float64 and match to ~1e-12 wherever
both divide by the same count; verl's "seq-mean-token-mean" and its GMPO/SAPO token means
divide by ``|o_i| + 1e-8`` where grpo divides by ``|o_i|`` (about 1e-8 relative: rtol 1e-7);
SkyRL computes ratios in float32 (rtol 1e-6).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from grpo.config import GRPOConfig
from grpo.loss import compute_loss
from grpo.objectives import LOSSES
from grpo.objectives.cispo import CISPOSettings
from grpo.objectives.dppo import DPPOSettings
from grpo.objectives.gmpo import GMPOSettings
from grpo.objectives.sapo import SAPOSettings

PEERS = Path(__file__).parent / "data" / "peers"
EXACT = dict(rtol=1e-10, atol=1e-12)
VERL_EPS = dict(rtol=1e-7, atol=1e-10)  # verl's |o_i| + 1e-8 denominators
SKYRL = dict(rtol=1e-6, atol=1e-9)  # SkyRL's float32 ratio


def _load(name: str) -> dict:
    return json.loads((PEERS / f"losses_{name}.json").read_text())


def _results(name: str) -> list[tuple[dict, dict]]:
    """(case, result) pairs of a peer file, for parametrize."""
    data = _load(name)
    cases = {c["name"]: c for c in data["grid"]["cases"]}
    return [(cases[r["case"]], r) for r in data["results"]]


def _ids(pairs):
    return [
        f"{r['peer']}-{r.get('variant', '')}-{r.get('settings_label', r['settings'])}-"
        f"{r['loss_agg'][:40]}-{r['case']}".replace(" ", "_")
        for _, r in pairs
    ]


def _run(case: dict, objective: str, settings, aggregation: str, normalizer=None):
    logp = torch.tensor(case["logp"], dtype=torch.float64, requires_grad=True)
    old = torch.tensor(case["old_logp"], dtype=torch.float64)
    adv = torch.tensor(case["advantages"], dtype=torch.float64)
    mask = torch.tensor(case["mask"], dtype=torch.float64)
    out = compute_loss(
        logp,
        old,
        adv,
        mask,
        objective=objective,
        settings=settings,
        aggregation=aggregation,
        normalizer=normalizer,
    )
    out.loss.backward()
    return out, logp.grad


def _aggregation(result: dict, *, fixed: str | None = None):
    """The grpo aggregation (mode, normalizer) equal to what the peer reduced with, and the
    tolerance. ``fixed``: the peer ignores its loss_agg argument and always uses this verl mode."""
    peer, agg = result["peer"], result["loss_agg"]
    if peer == "skyrl":  # loss = sum(l * m), advantages pre-scaled by SkyRL's reduction
        if "'token_mean'" in agg:
            return "token_mean", None, SKYRL
        if "'sequence_mean'" in agg:  # A / (B * max(L_b, 1))
            return "seq_mean_token_mean", None, SKYRL
        assert agg.startswith("sum(loss*mask) with raw advantages"), agg
        return "token_mean", 1.0, SKYRL  # a plain masked sum
    if peer == "trl":  # both of trl's modes here equal grpo's, denominator for denominator
        return ("seq_mean_token_mean" if agg.startswith("seq-mean") else "token_mean"), None, EXACT
    mode = fixed or agg
    return {
        "token-mean": ("token_mean", None, EXACT),
        "seq-mean-token-mean": ("seq_mean_token_mean", None, VERL_EPS),
        "seq-mean-token-sum-norm": ("seq_sum_max_len", None, EXACT),  # / (B * T), T = width
    }[mode]


def _check(out, grad, result, tol):
    assert out.loss.item() == pytest.approx(result["loss"], rel=tol["rtol"], abs=tol["atol"])
    expected = torch.tensor(result["grad_logp"], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, **tol)


# --------------------------------------------------------------------------------------- CISPO
CISPO = _results("cispo")


def _cispo_settings(result: dict) -> CISPOSettings:
    s = result["settings"]
    if result["peer"] == "trl":  # absolute cap, no lower bound: cap = 1 + eps_high
        return CISPOSettings(eps_low=1.0, eps_high=s["epsilon_high"] - 1.0)
    if result["peer"] == "verl":
        return CISPOSettings(eps_low=s["clip_ratio_low"], eps_high=s["clip_ratio_high"])
    return CISPOSettings(s["cispo"]["cispo_eps_clip_low"], s["cispo"]["cispo_eps_clip_high"])


@pytest.mark.parametrize("case,result", CISPO, ids=_ids(CISPO))
def test_cispo_equals_peers(case, result):
    mode, normalizer, tol = _aggregation(result)
    out, grad = _run(case, "cispo", _cispo_settings(result), mode, normalizer)
    _check(out, grad, result, tol)
    if result["peer"] == "trl":  # cispo_clip_ratio: A > 0 and r above the cap
        assert out.cispo_clip_frac.item() == pytest.approx(
            result["metrics"]["cispo_clip_ratio"][0], abs=1e-7
        )


def test_cispo_peer_grid_exercises_the_cap():
    """The grid must clip somewhere, or the tests above could not tell CISPO from REINFORCE."""
    clipped = [
        r for _, r in CISPO if r["peer"] == "trl" and r["metrics"]["cispo_clip_ratio"][0] > 0
    ]
    assert clipped


def test_cispo_by_hand():
    # ratios 0.5 / 0.05 = 10 and 1; A = 1; defaults cap the weight at 1 + 4 = 5:
    # loss = token mean of -w * A * log p = -(5 + 1) * log(0.5) / 2 = 3 log 2 = 2.0794
    # d loss / d logp = -w * A / 2 = [-2.5, -0.5]; one of two tokens above the cap
    logp = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64)).requires_grad_()
    old = torch.log(torch.tensor([[0.05, 0.5]], dtype=torch.float64))
    out = compute_loss(
        logp,
        old,
        torch.tensor([1.0], dtype=torch.float64),
        torch.ones(1, 2),
        objective="cispo",
        settings=CISPOSettings(),
    )
    out.loss.backward()
    assert out.loss.item() == pytest.approx(3 * math.log(2))
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.5, -0.5]], dtype=torch.float64))
    assert out.cispo_clip_frac.item() == 0.5
    assert out.ratio_max.item() == pytest.approx(10.0)  # the ratio logged is the unclipped one


def test_cispo_lower_bound_and_negative_advantage():
    # eps_low = 0.2: ratio 0.1 is raised to 0.8; A = -2 -> grad = -0.8 * -2 = 1.6 (one token)
    logp = torch.log(torch.tensor([[0.01]], dtype=torch.float64)).requires_grad_()
    old = torch.log(torch.tensor([[0.1]], dtype=torch.float64))
    out = compute_loss(
        logp,
        old,
        torch.tensor([-2.0], dtype=torch.float64),
        torch.ones(1, 1),
        objective="cispo",
        settings=CISPOSettings(eps_low=0.2, eps_high=0.2),
    )
    out.loss.backward()
    assert logp.grad.item() == pytest.approx(1.6)


def test_cispo_clip_frac_counts_positive_advantages_only():
    # both ratios 10 are above the cap 5, but only the A > 0 token counts (trl's cispo_clip_ratio)
    logp = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64)).requires_grad_()
    old = torch.log(torch.tensor([[0.05, 0.05]], dtype=torch.float64))
    adv = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    out = compute_loss(
        logp, old, adv, torch.ones(1, 2), objective="cispo", settings=CISPOSettings()
    )
    assert out.cispo_clip_frac.item() == 0.5


# ---------------------------------------------------------------------------------------- SAPO
SAPO = _results("sapo")


def _f32(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()


def _sapo_settings(result: dict) -> SAPOSettings:
    s = result["settings"]
    if result["peer"] == "trl":
        # trl builds its temperatures with torch.where(A > 0, 1.0, 1.05): Python floats, so the
        # default dtype float32 (1.05 -> 1.0499999523); with those values it matches exactly
        return SAPOSettings(_f32(s["sapo_pos"]), _f32(s["sapo_neg"]))
    if result["peer"] == "verl":
        return SAPOSettings(s["tau_pos"], s["tau_neg"])
    return SAPOSettings(s["sapo"]["tau_pos"], s["sapo"]["tau_neg"])


@pytest.mark.parametrize("case,result", SAPO, ids=_ids(SAPO))
def test_sapo_equals_peers(case, result):
    # verl's SAPO always reduces seq-mean-token-mean, whatever loss_agg_mode it is given
    mode, normalizer, tol = _aggregation(result, fixed="seq-mean-token-mean")
    out, grad = _run(case, "sapo", _sapo_settings(result), mode, normalizer)
    _check(out, grad, result, tol)


def test_sapo_by_hand():
    # two one-token sequences, seq_mean_token_mean = mean of the two token losses
    # seq 0: r = 1, A = +1, tau_pos = 1: gate = sigmoid(0) * 4 / 1 = 2 -> loss -2;
    #        grad = -A * 4 s (1 - s) r = -4 * 0.25 * 1 = -1 (plain policy gradient at r = 1)
    # seq 1: r = 0.4 / 0.2 = 2, A = -1, tau_neg = 2: s = sigmoid(2) = 0.880797
    #        loss = +1 * s * 4 / 2 = 1.761594; grad = +4 s (1 - s) * 2 = 0.839949
    logp = torch.log(torch.tensor([[0.3], [0.4]], dtype=torch.float64)).requires_grad_()
    old = torch.log(torch.tensor([[0.3], [0.2]], dtype=torch.float64))
    out = compute_loss(
        logp,
        old,
        torch.tensor([1.0, -1.0], dtype=torch.float64),
        torch.ones(2, 1),
        objective="sapo",
        settings=SAPOSettings(tau_pos=1.0, tau_neg=2.0),
        aggregation="seq_mean_token_mean",
    )
    out.loss.backward()
    s = 1 / (1 + math.exp(-2.0))
    assert out.loss.item() == pytest.approx((-2.0 + 2 * s) / 2)
    torch.testing.assert_close(
        logp.grad, torch.tensor([[-0.5], [4 * s * (1 - s) * 2 / 2]], dtype=torch.float64)
    )


# ---------------------------------------------------------------------------------------- GMPO
GMPO = _results("gmpo")


@pytest.mark.parametrize("case,result", GMPO, ids=_ids(GMPO))
def test_gmpo_equals_verl(case, result):
    # verl's geo_mean ignores loss_agg_mode: a plain mean over sequences, with |o_i| + 1e-8
    # token means; grpo's seq_mean_token_mean of the broadcast sequence loss, with |o_i|
    s = result["settings"]
    mode, normalizer, tol = _aggregation(result, fixed="seq-mean-token-mean")
    out, grad = _run(
        case, "gmpo", GMPOSettings(s["clip_ratio_low"], s["clip_ratio_high"]), mode, normalizer
    )
    _check(out, grad, result, tol)


def test_gmpo_peer_grid_clips_both_sides():
    """Zero gradients (clipped tokens) on a real token for an A > 0 and an A < 0 sequence."""
    case = {c["name"]: c for c in _load("gmpo")["grid"]["cases"]}["seed0"]
    result = next(r for c, r in GMPO if r["case"] == "seed0")
    adv = case["advantages"]
    zero_signs = {
        math.copysign(1, adv[b])
        for b in range(6)
        for t in range(7)
        if case["mask"][b][t] and result["grad_logp"][b][t] == 0.0
    }
    assert zero_signs == {1.0, -1.0}


def test_gmpo_by_hand():
    # seq 0, A = +1, log-ratios [1.0, -0.2]: the rise is clipped to 0.4 -> R = exp((0.4 - 0.2) / 2)
    #   = e^0.1 = 1.105171; loss_0 = -1.105171; grad = [0 (clipped), -A R / 2 = -0.552585]
    # seq 1, A = -1, log-ratios [-1.0, 0.2]: the fall is clipped to -0.4 -> R = e^-0.1 = 0.904837;
    #   loss_1 = +0.904837; grad = [0, +R / 2 = 0.452419]
    # loss = mean over sequences = (-1.105171 + 0.904837) / 2; gradients / 2; 2 of 4 tokens clipped
    old = torch.zeros(2, 2, dtype=torch.float64) - 1.5
    logp = (old + torch.tensor([[1.0, -0.2], [-1.0, 0.2]], dtype=torch.float64)).requires_grad_()
    out = compute_loss(
        logp,
        old,
        torch.tensor([1.0, -1.0], dtype=torch.float64),
        torch.ones(2, 2),
        objective="gmpo",
        settings=GMPOSettings(),
        aggregation="seq_mean_token_mean",
    )
    out.loss.backward()
    e = math.exp(0.1)
    assert out.loss.item() == pytest.approx((-e + 1 / e) / 2)
    torch.testing.assert_close(
        logp.grad, torch.tensor([[0.0, -e / 4], [0.0, 1 / e / 4]], dtype=torch.float64)
    )
    assert out.gmpo_clip_frac.item() == 0.5


def test_gmpo_sequence_advantage_is_the_token_mean_and_padding_is_ignored():
    # per-token A = [2, 0] on 2 real tokens (+ 1 padding token holding garbage): A_seq = 1;
    # log-ratios [0.1, 0.3]: token 1 has A = 0, so its clipped log-ratio is 0 (s = sign(A) = 0)
    # -> R = exp((0.1 + 0) / 2); loss = -1 * R, one sequence
    old = torch.tensor([[-1.0, -1.0, -1.0]], dtype=torch.float64)
    logp = torch.tensor([[-0.9, -0.7, 50.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[2.0, 0.0, 7.0]], dtype=torch.float64)
    out = compute_loss(
        logp,
        old,
        adv,
        torch.tensor([[1, 1, 0]]),
        objective="gmpo",
        settings=GMPOSettings(),
        aggregation="seq_mean_token_mean",
    )
    assert out.loss.item() == pytest.approx(-math.exp(0.05))


def test_gmpo_refuses_token_mean():
    logp = torch.zeros(1, 2, requires_grad=True)
    with pytest.raises(ValueError, match="seq_mean_token_mean"):
        compute_loss(
            logp,
            logp.detach(),
            torch.ones(1),
            torch.ones(1, 2),
            objective="gmpo",
            aggregation="token_mean",
        )


# ---------------------------------------------------------------------------------------- DPPO
DPPO = _results("dppo")


def _dppo_settings(result: dict) -> DPPOSettings:
    s = result["settings"]
    if result["peer"] == "verl":
        if result["variant"] == "dppo_tv":
            return DPPOSettings(
                "tv",
                delta_low=s["clip_ratio_low"],
                delta_high=s["clip_ratio_high"],
                cap=s["clip_ratio_c"],
            )
        assert s["clip_ratio_low"] == s["clip_ratio_high"]
        return DPPOSettings("kl", delta=s["clip_ratio_high"], cap=s["clip_ratio_c"])
    d = s["dppo"]
    if d["dppo_type"] == "binary_tv":  # SkyRL: no truncation; cap 1e4 is above every ratio here
        return DPPOSettings("tv", delta_low=d["delta_low"], delta_high=d["delta_high"], cap=1e4)
    assert d["delta_low"] == d["delta_high"]
    return DPPOSettings("kl", delta=d["delta_high"], cap=1e4)


@pytest.mark.parametrize("case,result", DPPO, ids=_ids(DPPO))
def test_dppo_equals_peers(case, result):
    mode, normalizer, tol = _aggregation(result)
    out, grad = _run(case, "dppo", _dppo_settings(result), mode, normalizer)
    expected = torch.tensor(result["grad_logp"], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, **tol)
    if result["peer"] == "verl":  # the same loss value, and the same counts
        assert out.loss.item() == pytest.approx(result["loss"], rel=tol["rtol"], abs=tol["atol"])
        metrics = result["metrics"]
        assert out.dppo_masked_frac.item() == pytest.approx(metrics["actor/pg_clipfrac"], abs=1e-6)
        assert out.dppo_capped_frac.item() == pytest.approx(
            metrics["actor/pg_clipfrac_lower"], abs=1e-6
        )
    # SkyRL's surrogate is -r A M: the same gradient (r <= cap), a different value (by design)


def test_dppo_peer_grid_masks_and_caps():
    verl = [r for _, r in DPPO if r["peer"] == "verl"]
    assert any(r["metrics"]["actor/pg_clipfrac"] > 0 for r in verl)
    assert any(r["metrics"]["actor/pg_clipfrac_lower"] > 0 for r in verl)


def test_dppo_tv_by_hand():
    # 4 tokens of one sequence, token_mean; delta 0.2, cap 3
    # t0: A = +1, p 0.2 -> 0.5: p - p_old = 0.3 > 0.2        -> masked, grad 0
    # t1: A = +1, p 0.5 -> 0.6: 0.1 <= 0.2, r = 1.2           -> grad -1.2 / 4
    # t2: A = -1, p 0.5 -> 0.2: -0.3 < -0.2                   -> masked, grad 0
    # t3: A = -1, p 0.1 -> 0.4: 0.3 >= -0.2 (kept), r = 4 -> min(4, 3) = 3 -> grad +3 / 4
    # loss = (-1.2 log 0.6 + 3 log 0.4) / 4
    p_old = torch.tensor([[0.2, 0.5, 0.5, 0.1]], dtype=torch.float64)
    p = torch.tensor([[0.5, 0.6, 0.2, 0.4]], dtype=torch.float64)
    logp = p.log().requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    out = compute_loss(
        logp, p_old.log(), adv, torch.ones(1, 4), objective="dppo", settings=DPPOSettings()
    )
    out.loss.backward()
    assert out.loss.item() == pytest.approx((-1.2 * math.log(0.6) + 3 * math.log(0.4)) / 4)
    torch.testing.assert_close(
        logp.grad, torch.tensor([[0.0, -0.3, 0.0, 0.75]], dtype=torch.float64)
    )
    assert out.dppo_masked_frac.item() == 0.5 and out.dppo_capped_frac.item() == 0.25


def test_dppo_tv_thresholds_per_side():
    # delta_high 0.5 keeps a rise of 0.3 with A > 0; delta_low 0.05 masks a fall of 0.1 with A < 0
    p_old = torch.tensor([[0.2, 0.5]], dtype=torch.float64)
    p = torch.tensor([[0.5, 0.4]], dtype=torch.float64)
    logp = p.log().requires_grad_()
    out = compute_loss(
        logp,
        p_old.log(),
        torch.tensor([[1.0, -1.0]], dtype=torch.float64),
        torch.ones(1, 2),
        objective="dppo",
        settings=DPPOSettings(delta_low=0.05, delta_high=0.5),
    )
    out.loss.backward()
    # t0 kept: r = 2.5 -> grad -A r / 2 = -1.25; t1 masked
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.25, 0.0]], dtype=torch.float64))


def test_dppo_kl_by_hand():
    # A = +1, p 0.5 -> 0.8: D = 0.5 log(0.5 / 0.8) + 0.5 log(0.5 / 0.2) = 0.223144
    # delta 0.2 < D and p rose (the way A pushes) -> masked; delta 0.25 -> kept, grad -r = -1.6
    # a fall with A = +1 (p 0.5 -> 0.1, D large) is always kept: grad -0.2
    p_old = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    p = torch.tensor([[0.8, 0.1]], dtype=torch.float64)
    for delta, grad in ((0.2, [0.0, -0.1]), (0.25, [-0.8, -0.1])):
        logp = p.log().requires_grad_()
        compute_loss(
            logp,
            p_old.log(),
            torch.ones(1, dtype=torch.float64),
            torch.ones(1, 2),
            objective="dppo",
            settings=DPPOSettings("kl", delta=delta),
        ).loss.backward()
        torch.testing.assert_close(logp.grad, torch.tensor([grad], dtype=torch.float64))


# ------------------------------------------------------------------------------ settings, config
@pytest.mark.parametrize(
    "cls,field,value",
    [
        (CISPOSettings, "eps_low", -0.1),
        (CISPOSettings, "eps_high", -1.0),
        (CISPOSettings, "eps_high", float("inf")),
        (SAPOSettings, "tau_pos", 0.0),
        (SAPOSettings, "tau_neg", -1.0),
        (GMPOSettings, "clip_low", 0.0),
        (GMPOSettings, "clip_high", -0.4),
        (DPPOSettings, "divergence", "js"),
        (DPPOSettings, "delta_low", 0.0),
        (DPPOSettings, "delta_high", -0.1),
        (DPPOSettings, "delta", 0.0),
        (DPPOSettings, "cap", 0.0),
        (DPPOSettings, "cap", float("nan")),
    ],
)
def test_settings_refuse_bad_values_by_name(cls, field, value):
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})


def test_objectives_are_registered():
    assert {"cispo", "sapo", "gmpo", "dppo"} <= set(LOSSES)
    assert LOSSES["gmpo"].aggregations == ("seq_mean_token_mean",)
    assert all(LOSSES[n].aggregations is None for n in ("cispo", "sapo", "dppo"))


def test_config_builds_objective_settings():
    cfg = GRPOConfig(loss={"objective": "cispo", "options": {"eps_high": 2.0}})
    assert cfg.loss.objective_settings() == CISPOSettings(eps_low=1.0, eps_high=2.0)
    cfg = GRPOConfig(loss={"objective": "dppo", "options": {"divergence": "kl", "delta": 0.05}})
    assert cfg.loss.objective_settings() == DPPOSettings("kl", delta=0.05)
    cfg = GRPOConfig(loss={"objective": "gmpo", "aggregation": "seq_mean_token_mean"})
    assert cfg.loss.objective_settings() == GMPOSettings()
    cfg = GRPOConfig(
        loss={
            "objective": "sapo",
            "aggregation": "seq_mean_token_mean",
            "options": {"tau_neg": 2.0},
        }
    )
    assert cfg.loss.objective_settings() == SAPOSettings(tau_neg=2.0)


def test_config_refuses_unknown_option_by_name():
    with pytest.raises(ValueError, match="epsilon_high"):
        GRPOConfig(loss={"objective": "cispo", "options": {"epsilon_high": 5.0}})


def test_config_refuses_bad_option_value_by_name():
    with pytest.raises(ValueError, match="tau_pos"):
        GRPOConfig(loss={"objective": "sapo", "options": {"tau_pos": -1.0}})


def test_config_refuses_gmpo_with_token_mean_naming_both():
    with pytest.raises(ValueError) as err:
        GRPOConfig(loss={"objective": "gmpo", "aggregation": "token_mean"})
    assert "loss.objective='gmpo'" in str(err.value) and "loss.aggregation='token_mean'" in str(
        err.value
    )


def test_gmpo_micro_batches_add_up_to_the_batch():
    # the learner splits a batch and passes normalizer = all sequences: the halves' losses and
    # gradients must sum to the full batch's mean over sequences
    case = _load("gmpo")["grid"]["cases"][0]
    full, full_grad = _run(case, "gmpo", GMPOSettings(), "seq_mean_token_mean")
    halves = [
        {k: (v[:3] if i == 0 else v[3:]) if isinstance(v, list) else v for k, v in case.items()}
        for i in range(2)
    ]
    parts = [_run(h, "gmpo", GMPOSettings(), "seq_mean_token_mean", normalizer=6.0) for h in halves]
    assert sum(o.loss.item() for o, _ in parts) == pytest.approx(full.loss.item(), rel=1e-12)
    torch.testing.assert_close(torch.cat([g for _, g in parts]), full_grad)
