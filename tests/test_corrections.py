"""Training-inference mismatch corrections (grpo.objectives.corrections): sequence TIS, IcePop,
sequence-level masked IS, the geometric sequence mask.

Peer equality on tests/data/peers/corrections.json: numbers produced by running trl 1.16.0,
SkyRL a9564572 and verl 1dda039b on one grid (provenance inside the file; semantics in
docs/math.md 2.6). The loss references use ``pg_t = -A exp(cur_t - old_t)`` (no clip), which is
grpo's clipped surrogate with a clip range no ratio of the grid reaches.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from grpo.config import LossConfig
from grpo.loss import compute_loss
from grpo.objectives.clip import ClipSettings
from grpo.objectives.corrections import (
    CORRECTIONS,
    GeoMaskSettings,
    IcePopSettings,
    MISSequenceSettings,
    SequenceTISSettings,
    correction_settings,
)

PEERS = json.loads((Path(__file__).parent / "data" / "peers" / "corrections.json").read_text())
NO_CLIP = ClipSettings(eps_low=0.99, eps_high=1e9)  # r = exp(0.1 * randn) never leaves [0.01, 1e9]
T64 = dict(dtype=torch.float64)


def grid(seed):
    rec = PEERS["seeds"][seed]
    x = {k: torch.tensor(v, **T64) for k, v in rec["inputs"].items()}
    x["mask"] = x["mask"].bool()
    x["advantages"] = x["advantages"].reshape(-1)
    return rec, x


def correct(name, settings, x):
    return CORRECTIONS[name].fn(x["old_logp"], x["rollout_logp"], x["mask"], settings)


def loss_and_grad(name, settings, x, aggregation):
    cur = x["cur_logp"].clone().requires_grad_(True)
    out = compute_loss(cur, x["old_logp"], x["advantages"], x["mask"], settings=NO_CLIP,
                       rollout_logp=x["rollout_logp"], correction=name, correction_settings=settings,
                       aggregation=aggregation)
    out.loss.backward()
    return out, cur.grad


def expected_grad(x, eff_w, aggregation):
    """d/dcur of sum_t -A r_t w_t m_t / denominator, r_t = exp(cur - old): -A r_t w_t m_t / denominator."""
    m = x["mask"].to(torch.float64)
    g = -x["advantages"][:, None] * torch.exp(x["cur_logp"] - x["old_logp"]) * eff_w * m
    if aggregation == "token_mean":
        return g / m.sum()
    return g / m.sum(1, keepdim=True).clamp(min=1) / m.shape[0]


# (peer, case, grpo correction, settings, tolerance, {peer loss key: grpo aggregation} where the
# aggregation and the denominator match). SkyRL computes its ratios in float32: rel ~1e-7.
FULL = [
    ("trl", "sequence_truncate/default", "tis_sequence", SequenceTISSettings(cap=3.0), 1e-12,
     {"loss_grpo": "seq_mean_token_mean", "loss_bnpo": "token_mean"}),
    ("trl", "sequence_truncate/min0.5_max2.0", "tis_sequence", SequenceTISSettings(cap=2.0, floor=0.5), 1e-12,
     {"loss_grpo": "seq_mean_token_mean", "loss_bnpo": "token_mean"}),
    ("skyrl", "sequence_tis/default_C5.0", "tis_sequence", SequenceTISSettings(), 1e-6,
     {"loss_token_mean": "token_mean"}),
    ("skyrl", "sequence_tis/C1.05", "tis_sequence", SequenceTISSettings(cap=1.05), 1e-6,
     {"loss_token_mean": "token_mean"}),
    ("verl", "sequence_is/default_2.0", "tis_sequence", SequenceTISSettings(cap=2.0), 1e-7,
     {"loss_token_mean": "token_mean", "loss_seq_mean_token_mean": "seq_mean_token_mean"}),
    ("verl", "sequence_is/1.05", "tis_sequence", SequenceTISSettings(cap=1.05), 1e-7,
     {"loss_token_mean": "token_mean", "loss_seq_mean_token_mean": "seq_mean_token_mean"}),
    ("verl", "token_icepop/preset_0.5_5.0", "icepop", IcePopSettings(), 1e-7,
     {"loss_token_mean": "token_mean", "loss_seq_mean_token_mean": "seq_mean_token_mean"}),
    ("verl", "token_icepop/0.5_2.0", "icepop", IcePopSettings(0.5, 2.0), 1e-7,
     {"loss_token_mean": "token_mean", "loss_seq_mean_token_mean": "seq_mean_token_mean"}),
    ("verl", "token_icepop/0.95_1.05", "icepop", IcePopSettings(0.95, 1.05), 1e-7,
     {"loss_token_mean": "token_mean", "loss_seq_mean_token_mean": "seq_mean_token_mean"}),
    ("trl", "token_mask/min0.5_max2.0", "icepop", IcePopSettings(0.5, 2.0), 1e-12,
     {"loss_grpo": "seq_mean_token_mean", "loss_bnpo": "token_mean"}),
    ("trl", "token_mask/default", "icepop", IcePopSettings(low=None, high=3.0), 1e-12,
     {"loss_grpo": "seq_mean_token_mean", "loss_bnpo": "token_mean"}),
    # SkyRL's in-band weight is 1 (the ratio only with its token TIS on): with TIS C=2 >= high the
    # effective weight is IcePop's r_t
    ("skyrl", "icepop_token_mask+token_tis/0.5_2.0_C2.0", "icepop", IcePopSettings(0.5, 2.0), 1e-6,
     {"loss_token_mean": "token_mean"}),
    ("trl", "sequence_mask/default", "mis_sequence", MISSequenceSettings(), 1e-12,
     {"loss_grpo": "seq_mean_token_mean", "loss_bnpo": "token_mean"}),
    ("trl", "sequence_mask/min0.5_max2.0", "mis_sequence", MISSequenceSettings(low=0.5, high=2.0), 1e-12,
     {"loss_grpo": "seq_mean_token_mean", "loss_bnpo": "token_mean"}),
    ("verl", "sequence_icepop/0.5_2.0", "mis_sequence", MISSequenceSettings(low=0.5, high=2.0), 1e-7,
     {"loss_token_mean": "token_mean", "loss_seq_mean_token_mean": "seq_mean_token_mean"}),
    ("skyrl", "geometric_seq_mask/default_0.99_1.01", "geo_mask", GeoMaskSettings(), 1e-6,
     {"loss_token_mean": "token_mean"}),
    ("skyrl", "geometric_seq_mask/0.98_1.03", "geo_mask", GeoMaskSettings(0.98, 1.03), 1e-6,
     {"loss_token_mean": "token_mean"}),
    ("skyrl", "geometric+token_tis/0.99_1.01_C2.0", "geo_mask", GeoMaskSettings(cap=2.0), 1e-6,
     {"loss_token_mean": "token_mean"}),
    # verl's rs thresholds bound pi_rollout / pi_old: "L_U" is grpo's [1/U, 1/L]; rejected rows
    # leave verl's denominator (checked in test_verl_rejection_leaves_the_denominator)
    ("verl", "geo_rs+token_tis/preset_0.999_1.001+2.0", "geo_mask", GeoMaskSettings(1 / 1.001, 1 / 0.999, 2.0),
     1e-7, {}),
]

# peers whose kept tokens have weight 1 (a 0/1 mask): only the mask is compared
MASK_ONLY = [
    ("skyrl", "icepop_token_mask/doc_0.5_2.0", "icepop", IcePopSettings(0.5, 2.0)),
    ("skyrl", "icepop_token_mask/0.95_1.05", "icepop", IcePopSettings(0.95, 1.05)),
    ("skyrl", "product_seq_mask/default_0.5_2.0", "mis_sequence", MISSequenceSettings(low=0.5, high=2.0)),
    ("skyrl", "product_seq_mask/0.9_1.1", "mis_sequence", MISSequenceSettings(low=0.9, high=1.1)),
    ("verl", "seq_sum_k1_product/0.9_1.1", "mis_sequence", MISSequenceSettings(low=1 / 1.1, high=1 / 0.9)),
    ("verl", "seq_mean_k1_geometric/0.99_1.01", "geo_mask", GeoMaskSettings(1 / 1.01, 1 / 0.99)),
    ("verl", "seq_mean_k1_geometric/0.98_1.03", "geo_mask", GeoMaskSettings(1 / 1.03, 1 / 0.98)),
]

SEEDS = range(len(PEERS["seeds"]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("peer,case,name,settings,tol,losses", FULL, ids=[f"{p}:{c}" for p, c, *_ in FULL])
def test_weights_losses_and_gradients_equal_the_peers(peer, case, name, settings, tol, losses, seed):
    rec, x = grid(seed)
    ref = rec[peer][case]
    m = x["mask"]
    peer_eff = torch.tensor(ref["weight"], **T64) * torch.tensor(ref["keep_mask"], **T64)
    fix = correct(name, settings, x)
    assert not fix.weight.requires_grad
    assert torch.allclose(torch.where(m, fix.weight, 0.0), torch.where(m, peer_eff, 0.0), rtol=tol, atol=tol)
    if "correction_masked_frac" in fix.stats:
        assert torch.equal(fix.stats["correction_masked_frac"], m & (peer_eff == 0))
    for key, aggregation in losses.items():
        out, grad = loss_and_grad(name, settings, x, aggregation)
        assert out.loss.item() == pytest.approx(ref[key], rel=max(tol, 1e-12), abs=tol)
        assert torch.allclose(grad, expected_grad(x, peer_eff, aggregation), rtol=tol, atol=tol)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("peer,case,name,settings", MASK_ONLY, ids=[f"{p}:{c}" for p, c, *_ in MASK_ONLY])
def test_kept_tokens_equal_the_peers_masks(peer, case, name, settings, seed):
    rec, x = grid(seed)
    ref = rec[peer][case]
    m = x["mask"]
    peer_keep = m & (torch.tensor(ref["keep_mask"], **T64) * torch.tensor(ref["weight"], **T64) != 0)
    fix = correct(name, settings, x)
    assert torch.equal(m & (fix.weight != 0), peer_keep)
    assert torch.equal(fix.stats["correction_masked_frac"], m & ~peer_keep)


def test_the_grid_exercises_both_sides():
    """Each mask case rejects something and keeps something on some seed (a test that compares
    all-ones masks could not fail). Three cases are one-sided on this grid and kept for their
    other half: trl's token_mask/default and sequence_mask/default (high 3) reject nothing (the
    largest token ratio is e = 2.718, the largest product 2.966): they check that kept tokens
    carry the ratio; verl's geometric preset 0.999_1.001 rejects every row (noise 0.05)."""
    one_sided = {"token_mask/default", "sequence_mask/default", "geo_rs+token_tis/preset_0.999_1.001+2.0"}
    for peer, case, *_ in [*MASK_ONLY, *(f for f in FULL if f[2] != "tis_sequence")]:
        if case in one_sided:
            continue
        effs = [torch.tensor(s[peer][case]["weight"]) * torch.tensor(s[peer][case]["keep_mask"]) for s in PEERS["seeds"]]
        masks = [torch.tensor(s["inputs"]["mask"]).bool() for s in PEERS["seeds"]]
        assert any((e[m] == 0).any() for e, m in zip(effs, masks)), case
        assert any((e[m] != 0).any() for e, m in zip(effs, masks)), case


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case,settings", [
    ("seq_mean_k1_geometric/0.99_1.01", GeoMaskSettings(1 / 1.01, 1 / 0.99)),
    ("seq_mean_k1_geometric/0.98_1.03", GeoMaskSettings(1 / 1.03, 1 / 0.98)),
])
def test_verl_rejection_leaves_the_denominator(case, settings, seed):
    """verl's rollout_rs drops rejected rows from the loss mask; grpo keeps them in the
    denominator with weight 0 (docs/math.md 2.6): grpo's token mean = verl's x kept / all."""
    rec, x = grid(seed)
    ref = rec["verl"][case]
    kept = torch.tensor(ref["keep_mask"], **T64)[x["mask"]].sum().item()
    out, _ = loss_and_grad("geo_mask", settings, x, "token_mean")
    assert 0 < kept < x["mask"].sum().item()
    assert out.loss.item() == pytest.approx(ref["loss_token_mean"] * kept / x["mask"].sum().item(), rel=1e-7)


# ------------------------------------------------------------------------------- by hand
def _by_hand(name, settings, old, roll, mask=None):
    old, roll = torch.tensor(old, **T64), torch.tensor(roll, **T64)
    mask = torch.ones_like(old, dtype=torch.bool) if mask is None else torch.tensor(mask)
    return CORRECTIONS[name].fn(old, roll, mask, settings)


def test_sequence_tis_by_hand():
    # row 0: log r = [0.5, 0.5, 0.5] -> product e^1.5 = 4.48 -> min(4.48, 2) = 2 on every token
    # row 1: log r = [0.2, -0.5, 0 (padding, rollout_logp there is garbage)] -> e^-0.3 = 0.7408
    fix = _by_hand("tis_sequence", SequenceTISSettings(cap=2.0),
                   [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[-0.5, -0.5, -0.5], [-0.2, 0.5, 99.0]],
                   [[True, True, True], [True, True, False]])
    assert torch.allclose(fix.weight[0], torch.full((3,), 2.0, **T64))
    assert torch.allclose(fix.weight[1, :2], torch.full((2,), math.exp(-0.3), **T64))
    # capped: all of row 0 (3 tokens), none of row 1
    assert fix.stats["correction_capped_frac"].tolist() == [[True] * 3, [False] * 3]
    # floor 0.8 lifts row 1 to 0.8 (0.7408 < 0.8) and counts its 2 real tokens, not the padding
    fix = _by_hand("tis_sequence", SequenceTISSettings(cap=2.0, floor=0.8), [[0.0, 0.0, 0.0]],
                   [[-0.2, 0.5, 7.0]], [[True, True, False]])
    assert torch.allclose(fix.weight[:, :2], torch.full((1, 2), 0.8, **T64))
    assert fix.stats["correction_capped_frac"].tolist() == [[True, True, False]]
    # the summed log-ratio is clamped to 20: 30 tokens of log r = 1 give e^20, not e^30
    fix = _by_hand("tis_sequence", SequenceTISSettings(cap=1e12), [[0.0] * 30], [[-1.0] * 30])
    assert fix.weight[0, 0].item() == pytest.approx(math.exp(20.0))


def test_icepop_by_hand():
    # r = [e^1 = 2.718, e^0.1 = 1.105, e^-1 = 0.368, 0.5 exactly, 2 exactly], band [0.5, 2]:
    # 2.718 > 2 -> 0; 1.105 kept with its ratio; 0.368 < 0.5 -> 0; both bounds are kept
    old = [[0.0, 0.0, 0.0, math.log(0.5), math.log(2.0)]]
    fix = _by_hand("icepop", IcePopSettings(0.5, 2.0), old, [[-1.0, -0.1, 1.0, 0.0, 0.0]])
    assert torch.allclose(fix.weight, torch.tensor([[0.0, math.exp(0.1), 0.0, 0.5, 2.0]], **T64))
    assert fix.stats["correction_masked_frac"].tolist() == [[True, False, True, False, False]]
    # padding is never counted as masked
    fix = _by_hand("icepop", IcePopSettings(0.5, 2.0), [[0.0, 0.0]], [[-1.0, -9.0]], [[True, False]])
    assert fix.stats["correction_masked_frac"].tolist() == [[True, False]]


def test_mis_sequence_by_hand():
    # row 0: log r = [0.6, 0.6] -> product e^1.2 = 3.32 > 3 (trl's default high) -> 0
    # row 1: log r = [0.5, 0.5] -> e^1 = 2.718 <= 3 -> kept with weight 2.718 (not 1)
    # row 2: log r = [-2, -2] -> e^-4 = 0.018: kept without low, dropped with low=0.5
    old = [[0.0, 0.0]] * 3
    roll = [[-0.6, -0.6], [-0.5, -0.5], [2.0, 2.0]]
    fix = _by_hand("mis_sequence", MISSequenceSettings(), old, roll)
    assert torch.allclose(fix.weight, torch.tensor([[0.0, 0.0], [math.e, math.e], [math.exp(-4)] * 2], **T64))
    fix = _by_hand("mis_sequence", MISSequenceSettings(low=0.5), old, roll)
    assert fix.weight[2].tolist() == [0.0, 0.0]
    assert fix.stats["correction_masked_frac"].tolist() == [[True, True], [False, False], [True, True]]


def test_geo_mask_by_hand():
    # row 0: log r = [0.02, 0.0] -> geometric mean e^0.01 = 1.01005 > 1.01 -> rejected
    # row 1: log r = [0.02, -0.02, 0.0] -> e^0 = 1 -> kept, weight 1 (no cap)
    # row 2: log r = [0.005, 9.0 at padding] -> mean over the 1 real token e^0.005 = 1.005 -> kept
    # (the product of row 0, e^0.02, is what tis_sequence/mis_sequence would see)
    old = [[0.0, 0.0, 0.0]] * 3
    roll = [[-0.02, 0.0, 0.0], [-0.02, 0.02, 0.0], [-0.005, -9.0, 0.0]]
    mask = [[True, True, False], [True, True, True], [True, False, False]]
    fix = _by_hand("geo_mask", GeoMaskSettings(), old, roll, mask)
    assert fix.weight[0].tolist() == [0.0] * 3
    assert fix.weight[1].tolist() == [1.0] * 3 and fix.weight[2, 0].item() == 1.0
    assert fix.stats["correction_masked_frac"].tolist() == [[True, True, False], [False] * 3, [False] * 3]
    # with cap=1.01 the kept row 1 carries min(r_t, 1.01) = [1.01 (e^0.02 = 1.0202 capped), e^-0.02, 1]
    fix = _by_hand("geo_mask", GeoMaskSettings(cap=1.01), old, roll, mask)
    assert torch.allclose(fix.weight[1], torch.tensor([1.01, math.exp(-0.02), 1.0], **T64))
    # a wider band keeps row 0: e^0.01 <= 1.02
    assert _by_hand("geo_mask", GeoMaskSettings(high=1.02), old, roll, mask).weight[0, :2].tolist() == [1.0, 1.0]


def test_masked_tokens_stay_in_the_denominator():
    # two tokens, A = 1, r = 1 (logp = old): pg = [-1, -1]; icepop zeroes token 1 (r_roll = e^2):
    # token mean = (-1 * 1 + -1 * 0) / 2 = -0.5 (verl's rollout_rs would give -1 / 1)
    old = torch.zeros(1, 2, **T64)
    out = compute_loss(old.clone().requires_grad_(True), old, torch.ones(1, **T64), torch.ones(1, 2),
                       rollout_logp=torch.tensor([[0.0, -2.0]], **T64), correction="icepop",
                       correction_settings=IcePopSettings(0.5, 2.0))
    assert out.loss.item() == pytest.approx(-0.5)
    assert out.stats["correction_masked_frac"].item() == pytest.approx(0.5)
    assert out.metrics()["loss/correction_masked_frac"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------- settings
@pytest.mark.parametrize("cls,kwargs,field", [
    (SequenceTISSettings, dict(cap=0.0), "cap"),
    (SequenceTISSettings, dict(cap=2.0, floor=3.0), "floor"),
    (SequenceTISSettings, dict(floor=0.0), "floor"),
    (IcePopSettings, dict(low=-0.1), "low"),
    (IcePopSettings, dict(low=2.0, high=1.0), "low <= high"),
    (IcePopSettings, dict(high=0.0), "high"),
    (MISSequenceSettings, dict(high=-1.0), "high"),
    (MISSequenceSettings, dict(low=4.0), "low <= high"),
    (GeoMaskSettings, dict(low=None), "low"),
    (GeoMaskSettings, dict(low=1.02), "low <= high"),
    (GeoMaskSettings, dict(cap=0.0), "cap"),
])
def test_settings_refuse_bad_values_by_name(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_defaults_are_the_peers():
    assert SequenceTISSettings() == SequenceTISSettings(cap=5.0, floor=None)  # SkyRL
    assert IcePopSettings() == IcePopSettings(low=0.5, high=5.0)  # verl decoupled_token_icepop
    assert MISSequenceSettings() == MISSequenceSettings(high=3.0, low=None)  # trl
    assert GeoMaskSettings() == GeoMaskSettings(low=0.99, high=1.01, cap=None)  # SkyRL


@pytest.mark.parametrize("name", ["tis_sequence", "icepop", "mis_sequence", "geo_mask"])
def test_config_selects_and_checks_each_correction(name):
    assert type(LossConfig(correction=name).correction_settings()) is CORRECTIONS[name].settings
    with pytest.raises(ValueError, match=r"loss.correction_options has \['bogus'\].*" + name):
        LossConfig(correction=name, correction_options={"bogus": 1.0})
    with pytest.raises(ValueError, match="loss.is_cap"):
        LossConfig(correction=name, is_cap=3.0)


def test_config_passes_options_and_names_the_bad_one():
    s = LossConfig(correction="geo_mask", correction_options={"low": 0.98, "cap": 2.0}).correction_settings()
    assert s == GeoMaskSettings(low=0.98, high=1.01, cap=2.0)
    with pytest.raises(ValueError, match=r"loss.correction_options for correction 'icepop': .*low"):
        LossConfig(correction="icepop", correction_options={"low": -1.0})
    with pytest.raises(ValueError, match=r"loss.correction_options for correction 'mis_sequence'"):
        correction_settings("mis_sequence", {"high": 0.0})


# ------------------------------------------------------------------------------ end to end
def test_async_run_trains_with_a_correction(tiny_dir, tmp_path):
    """With asynchronous rollouts the learner weights the policy term with loss.correction
    (the sampler's log-probs are the behaviour policy): geo_mask trains 2 steps with finite
    metrics and logs its masked fraction. The band (0.98, 1.02) is such that the one-version-old
    sampler of step 2 gets some rows rejected (the statistic is then > 0: the correction ran)."""
    from grpo import GRPOConfig, GRPOTrainer
    from grpo.tracking import read_jsonl

    from conftest import Checksum

    cfg = GRPOConfig(
        output_dir=str(tmp_path / "run"), seed=0, max_steps=2, log={"progress_bar": False},
        checkpoint={"final_model": False},
        rollout={"num_generations": 4, "prompts_per_step": 2}, sampling={"max_tokens": 8},
        optim={"learning_rate": 1e-2}, **{"async": {"staleness": 1}},
        loss={"beta": 0.0, "correction": "geo_mask", "correction_options": {"low": 0.98, "high": 1.02}},
    )
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], [{"prompt": f"Say {i}"} for i in range(8)], cfg)
    assert trainer.learner.behaviour_correction
    trainer.train()
    trainer.close()
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), m
        assert 0.0 <= m["loss/correction_masked_frac"] <= 1.0
    assert metrics[1]["async/staleness_max"] == 1
    # step 1 is sampled by the learner's own weights (only numerics differ: nothing rejected);
    # step 2 by weights one update old: rows leave the band (0.75 of the tokens on this seed)
    assert metrics[0]["loss/correction_masked_frac"] == 0.0
    assert metrics[1]["loss/correction_masked_frac"] > 0


def test_a_correction_that_would_do_nothing_is_refused(tmp_path):
    """Without use_tis or asynchronous rollouts the sampler's log-probs are not used, so a
    non-default correction would silently be ignored: refused by name."""
    from grpo import GRPOConfig

    with pytest.raises(ValueError, match=r"loss.correction='icepop'.*loss.use_tis=true.*async.staleness"):
        GRPOConfig(output_dir=str(tmp_path), loss={"correction": "icepop"})
    assert GRPOConfig(output_dir=str(tmp_path), loss={"correction": "icepop"}, **{"async": {"staleness": 1}})
    assert GRPOConfig(output_dir=str(tmp_path)).loss.correction == "tis"
