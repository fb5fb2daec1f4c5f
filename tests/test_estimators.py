"""MaxRL, GDPO and the pass-rate length penalty (grpo.advantages) against peers' numbers and by hand.

The peer numbers in tests/data/peers/estimators.json were produced outside the project by running
SkyRL (a9564572) and prime-rl (559b4477; PR #2901 merge 16efd8af) functions and trl 1.16's
GRPOTrainer advantage block (and verl 1dda039b, for the documented difference) on the inputs stored
there; provenance is in the file. Groups are contiguous, G = 4.
"""

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from grpo import GRPOConfig, GRPOTrainer
from grpo.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    dr_grpo_advantages,
    gdpo_advantages,
    grpo_advantages,
    length_penalized,
    maxrl_advantages,
    register_advantage_estimator,
)
from grpo.config import FLAT_KEYS
from grpo.rewards import Reward
from grpo.tiny import save_tiny_model
from grpo.tracking import read_jsonl

PEERS = json.loads((Path(__file__).parent / "data" / "peers" / "estimators.json").read_text())
NAN = float("nan")


def t(values) -> torch.Tensor:
    return torch.tensor(
        [NAN if v is None or v == "NaN" else v for v in values], dtype=torch.float64
    )


def comps_of(case) -> torch.Tensor:  # [N, K]
    return torch.stack([t(c) for c in case["components"]], dim=1)


def gdpo_inputs(case, eps=1e-4) -> AdvantageInputs:
    c = comps_of(case)
    w = torch.tensor(case["weights"], dtype=torch.float64)
    return AdvantageInputs(
        torch.nansum(c * w, dim=1), 4, components=c, weights=tuple(case["weights"]), eps=eps
    )


# ------------------------------------------------------------------------------------------ MaxRL
@pytest.mark.parametrize("name", list(PEERS["maxrl"]["cases"]))
def test_maxrl_equals_skyrl_where_the_mean_is_positive_and_prime_rl_everywhere(name):
    case = PEERS["maxrl"]["cases"][name]
    r = t(case["rewards"])
    ours = maxrl_advantages(AdvantageInputs(r, 4)).advantages.double()  # eps 1e-6, SkyRL's
    mean_pos = (r.view(-1, 4).mean(dim=1) > 0).repeat_interleave(4)
    skyrl, prime = t(case["skyrl_float64"]), t(case["prime-rl_float32"])
    # SkyRL: same formula and eps; float32 output -> relative 1e-6
    torch.testing.assert_close(ours[mean_pos], skyrl[mean_pos], rtol=1e-6, atol=1e-6)
    # prime-rl: no eps -> our values are prime-rl's times mean / (mean + 1e-6) (1 - 2e-5 at mean 0.05)
    torch.testing.assert_close(ours, prime, rtol=5e-5, atol=1e-6)
    # mean <= 0: prime-rl's guard (0), not SkyRL's unguarded division
    assert (ours[~mean_pos] == 0).all() and (prime[~mean_pos] == 0).all()


def test_skyrl_flips_the_sign_of_a_negative_mean_group_grpo_does_not():
    case = PEERS["maxrl"]["cases"]["b_continuous"]
    r, skyrl = t(case["rewards"])[8:], t(case["skyrl_float64"])[8:]  # group 2, mean -0.125
    assert r.mean() < 0
    # the best answer (0.5) gets SkyRL's most negative advantage: -0.625 / -0.125 = 5 -> -5
    assert skyrl[r.argmax()] == pytest.approx(-5.0, abs=1e-3)
    assert maxrl_advantages(AdvantageInputs(r, 4)).advantages.tolist() == [0.0] * 4


def test_maxrl_by_hand():
    # group 1: mean 0.25, (1 - 0.25) / 0.25 = 3, (0 - 0.25) / 0.25 = -1
    # group 2: unscorable row out: mean of [1, 0, 0] = 1/3 -> (1 - 1/3) / (1/3) = 2, (0 - 1/3) / (1/3) = -1
    # group 3: all zero (mean 0) -> 0; group 4: all one (no spread) -> 0; group 5: mean -0.25 -> 0
    # group 6: one scorable reward -> no baseline -> 0
    r = [1, 0, 0, 0, 1, NAN, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, -1, 0, 0, 0, 1, NAN, NAN, NAN]
    out = maxrl_advantages(AdvantageInputs(t(r), 4, eps=0.0))
    assert out.advantages.tolist() == [3, -1, -1, -1, 2, 0, -1, -1] + [0] * 16
    assert out.unscorable_frac == pytest.approx(4 / 24)
    # eps enters the denominator only: 3 * 0.25 / (0.25 + 0.01)
    eps = maxrl_advantages(AdvantageInputs(t([1, 0, 0, 0]), 4, eps=0.01)).advantages
    assert eps[0].item() == pytest.approx(0.75 / 0.26, rel=1e-6)
    # a list of rewards works, and through the table
    assert ADVANTAGE_ESTIMATORS["maxrl"](AdvantageInputs.of([1.0, 0.0], 2)).advantages[0] > 0


# ------------------------------------------------------------------------------------------- GDPO
@pytest.mark.parametrize("name", list(PEERS["gdpo"]["cases"]))
def test_gdpo_equals_trl_normalize_then_sum(name):
    case = PEERS["gdpo"]["cases"][name]
    ours = gdpo_advantages(gdpo_inputs(case)).advantages.double()  # trl's eps 1e-4
    torch.testing.assert_close(ours, t(case["trl_normalize_then_sum"]), rtol=1e-5, atol=1e-6)


def test_gdpo_differs_from_trl_sum_then_normalize_when_spreads_differ():
    case = PEERS["gdpo"]["cases"]["c_two_component"]
    ours = gdpo_advantages(gdpo_inputs(case)).advantages.double()
    assert (ours - t(case["trl_sum_then_normalize_scale_group"])).abs().max() > 0.1


def test_verl_whitens_over_tokens_grpo_over_completions():
    case = PEERS["gdpo"]["cases"]["a_binary"]
    ours = gdpo_advantages(gdpo_inputs(case)).advantages.double()
    verl = t(case["verl_gdpo_unequal_lengths"])
    # groups 1, 2 (all 0, all 1) have no spread: 0 here, 0.2 in verl with unequal lengths
    assert ours[4:].abs().max() < 1e-6 and verl[4:].min() > 0.19
    # equal lengths L = 4: only the Bessel count differs (N L = 48 tokens vs N = 12 completions)
    eq = PEERS["gdpo"]["cases"]["c_two_component"]
    ratio = gdpo_advantages(gdpo_inputs(eq, eps=0.0)).advantages.double() / t(
        eq["verl_gdpo_equal_lengths"]
    )
    ratio = ratio[ratio.isfinite() & (t(eq["verl_gdpo_equal_lengths"]).abs() > 1e-3)]
    torch.testing.assert_close(
        ratio, torch.full_like(ratio, math.sqrt((48 / 47) / (12 / 11))), rtol=1e-5, atol=0
    )


def test_gdpo_by_hand():
    # accuracy and format, weights (1, 0.5), two groups of 2 (the docs/math.md 1.9 example).
    # group 1: accuracy [1, 0]: mean 0.5, Bessel std 0.7071 -> z = +-0.7071; format [1, 1] -> 0
    # group 2: accuracy [1, 1] -> 0; format [1, 0] -> z = +-0.7071, weighted 0.5 -> +-0.3536
    # s = [0.7071, -0.7071, 0.3536, -0.3536]: mean 0, Bessel std sqrt(2 * (0.5 + 0.125) / 3) = 0.6455
    comps = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    x = AdvantageInputs(
        comps @ torch.tensor([1.0, 0.5], dtype=torch.float64),
        2,
        components=comps,
        weights=(1.0, 0.5),
        eps=0.0,
    )
    s = torch.tensor([0.5**0.5, -(0.5**0.5), 0.5**0.5 / 2, -(0.5**0.5) / 2], dtype=torch.float64)
    expected = s / math.sqrt(2 * (0.5 + 0.125) / 3)
    torch.testing.assert_close(
        gdpo_advantages(x).advantages.double(), expected, rtol=1e-6, atol=1e-6
    )
    # GRPO on the weighted total [1.5, 0.5, 1.5, 1.0] ranks group 2 by the format reward with the
    # same magnitude as group 1's accuracy (each group's z is +-0.7071): gdpo keeps the weight
    g, a = grpo_advantages(x).advantages.tolist(), gdpo_advantages(x).advantages.tolist()
    assert g[2] == pytest.approx(g[0], rel=1e-5)
    assert a[2] == pytest.approx(a[0] / 2, rel=1e-5)


def test_gdpo_all_unscorable_rows_get_zero_and_stay_out_of_the_batch_statistics():
    # group 1: [1, 0] -> z = +-0.7071; group 2: every component None -> 0 and not in the batch:
    # batch s = [0.7071, -0.7071] (mean 0, Bessel std 1) -> A = [0.7071, -0.7071, 0, 0]
    comps = torch.tensor([[1.0, NAN], [0.0, NAN], [NAN, NAN], [NAN, NAN]], dtype=torch.float64)
    x = AdvantageInputs(
        torch.tensor([1.0, 0.0, NAN, NAN], dtype=torch.float64),
        2,
        components=comps,
        weights=(1.0, 1.0),
        eps=0.0,
    )
    out = gdpo_advantages(x).advantages
    torch.testing.assert_close(
        out.double(), torch.tensor([0.5**0.5, -(0.5**0.5), 0, 0], dtype=torch.float64)
    )
    assert out[2:].tolist() == [0.0, 0.0]  # exactly
    # a whole batch unscorable: zeros, no NaN
    none = AdvantageInputs(
        t([NAN] * 4), 2, components=torch.full((4, 2), NAN, dtype=torch.float64), weights=(1.0, 1.0)
    )
    assert gdpo_advantages(none).advantages.tolist() == [0.0] * 4


def test_gdpo_with_one_reward_is_grpo_rescaled_to_unit_batch_std():
    r = t([0.2, 0.7, 0.4, 0.9, 0.0, 0.05, 0.0, 0.15, 1, NAN, 0, 0])
    x = AdvantageInputs(r, 4, components=r[:, None], names=("r",), weights=(1.0,), eps=1e-4)
    g, a = grpo_advantages(x).advantages.double(), gdpo_advantages(x).advantages.double()
    scored = ~r.isnan()
    c = 1 / (g[scored].std() + 1e-4)  # one batch-wide constant (the batch mean of g is 0)
    assert abs(g[scored].mean()) < 1e-6
    torch.testing.assert_close(a, g * c, rtol=1e-5, atol=1e-6)
    assert a[scored].std().item() == pytest.approx(1.0, abs=1e-3)
    # no components (a plain reward list): the total is the one component
    torch.testing.assert_close(
        gdpo_advantages(AdvantageInputs(r, 4, eps=1e-4)).advantages.double(), a
    )


def test_gdpo_rejects_weights_that_do_not_match_the_components():
    x = AdvantageInputs(
        t([1, 0]), 2, components=torch.zeros(2, 2, dtype=torch.float64), weights=(1.0,)
    )
    with pytest.raises(ValueError, match="len\\(weights\\)"):
        gdpo_advantages(x)


# --------------------------------------------------------------------------------- length penalty
@pytest.mark.parametrize("name", list(PEERS["length_penalty"]["cases"]))
def test_length_penalty_with_dr_grpo_equals_prime_rl(name):
    """prime-rl: shaped r'_i = r_i - p * (0.25 out_i / max out + 0.1 in_i / max in + 0.1 turns_i / max turns),
    A = r' - mean r'. grpo models the output term only (coef 0.25): with equal prompt lengths and one
    turn the input and turn terms are the same for every member of a group, a constant that the
    baseline removes, so grpo equals prime-rl's defaults there; where they vary it equals prime-rl
    with the output term only. Here the reward is the accuracy, so both pass rates agree."""
    case = PEERS["length_penalty"]["cases"][name]
    r = t(case["rewards"])
    x = AdvantageInputs(r, 4, lengths=t(case["completion_lengths"]), metric=r)
    ours = dr_grpo_advantages(length_penalized(x, 0.25)).advantages.double()
    torch.testing.assert_close(ours, t(case["prime-rl_output_only_0.25"]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dr_grpo_advantages(x).advantages.double(), t(case["prime-rl_off"]))
    in_and_turns_constant = all(
        len(set(case[k][i : i + 4])) == 1
        for k in ("input_tokens", "turns")
        for i in range(0, len(r), 4)
    )
    defaults = t(case["prime-rl_defaults_0.25_0.1_0.1"])
    assert torch.allclose(ours, defaults, atol=1e-6) == in_and_turns_constant


def test_length_penalty_by_hand():
    # group 1: accuracy [1, 1, 0, 0] -> p = 0.5; lengths [100, 50, 100, 25] / 100;
    # r' = r - 0.2 * 0.5 * frac = [1 - 0.1, 1 - 0.05, 0 - 0.1, 0 - 0.025]
    # group 2: accuracy all 0 -> p = 0: unchanged although the total (format 0.5) is not 0
    # group 3: a NaN reward stays NaN; p = mean of scorable accuracy [1, 1, 1] = 1; max length 8 -> 1
    acc = t([1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, NAN])
    total = acc + 0.5 * t([0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0])
    lengths = t([100, 50, 100, 25, 10, 20, 30, 40, 8, 4, 2, 1])
    x = AdvantageInputs(total, 4, lengths=lengths, metric=acc)
    got = length_penalized(x, 0.2).rewards
    expected = t([0.9, 0.95, -0.1, -0.025, 0.5, 0, 0.5, 0, 1 - 0.2, 1 - 0.1, 1 - 0.05, NAN])
    torch.testing.assert_close(got, expected, equal_nan=True)
    assert length_penalized(x, 0.0) is x
    # the pass rate is the metric's mean, not the total's: a metric-free input uses the total
    no_metric = length_penalized(AdvantageInputs(total, 4, lengths=lengths), 0.2).rewards
    assert no_metric[4].item() == pytest.approx(0.5 - 0.2 * 0.25 * 10 / 40)
    # a group whose metric scored nothing falls back to the total's mean: 0.5 * 1 / 2 = 0.25
    m = acc.clone()
    m[4:8] = NAN
    fallback = length_penalized(AdvantageInputs(total, 4, lengths=lengths, metric=m), 0.2).rewards
    assert fallback[4].item() == pytest.approx(0.5 - 0.2 * 0.25 * 10 / 40)
    # lengths all 0: max(1, 0) guards the division
    zero = AdvantageInputs(t([1, 0]), 2, lengths=t([0, 0]), metric=t([1, 0]))
    assert length_penalized(zero, 0.25).rewards.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="lengths"):
        length_penalized(AdvantageInputs(t([1, 0]), 2), 0.25)


# ------------------------------------------------------------------------------------------ config
def test_length_penalty_config():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = GRPOConfig(output_dir="/tmp/unused", rollout={"length_penalty": 0.25})
        assert c.rollout.length_penalty == 0.25
        assert GRPOConfig(output_dir="/tmp/unused").rollout.length_penalty == 0.0
        with pytest.raises(ValueError, match="length_penalty"):
            GRPOConfig(output_dir="/tmp/unused", rollout={"length_penalty": -0.1})
        with pytest.raises(ValueError, match="gdpo"):
            GRPOConfig(
                output_dir="/tmp/unused",
                rollout={"length_penalty": 0.25, "advantage_estimator": "gdpo"},
            )
    assert "length_penalty" not in FLAT_KEYS


# --------------------------------------------------------------------------- through the trainer
class CountSevens(Reward):
    def score(self, completion, **example):
        return completion.count("7") / max(len(completion), 1)


class Checksum(Reward):
    def score(self, completion, **example):
        return sum(map(ord, completion)) % 13 / 13


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny") / "model", hidden_size=64, num_heads=2, head_dim=32
    )


def rows(n):
    return [
        {"prompt": [{"role": "user", "content": f"Say sevens {i}"}], "answer": "7"}
        for i in range(n)
    ]


def run_cfg(tmp_path, reward=None, **rollout):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GRPOConfig(
            reward=reward or {},
            output_dir=str(tmp_path / "run"),
            num_generations=4,
            prompts_per_step=2,
            max_steps=2,
            max_completion_length=8,
            learning_rate=1e-3,
            beta=0.0,
            micro_batch_size=4,
            progress_bar=False,
            save_final_model=False,
            seed=0,
            rollout=rollout,
        )


def test_gdpo_trains_with_two_rewards(tiny_dir, tmp_path):
    c = run_cfg(tmp_path, advantage_estimator="gdpo")
    GRPOTrainer(str(tiny_dir), [CountSevens(), Checksum()], rows(4), c).train()
    metrics = read_jsonl(Path(c.output_dir) / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("adv/mean", "adv/std", "adv/max", "optim/grad_norm"):
            assert math.isfinite(m[key]), (key, m)
        assert m["adv/std"] > 0  # the checksum reward spreads every group


def test_source_passes_lengths_metric_and_shaped_rewards(tiny_dir, tmp_path):
    seen: list[AdvantageInputs] = []

    @register_advantage_estimator("_record_inputs")
    def record(x: AdvantageInputs):
        seen.append(x)
        return grpo_advantages(x)

    try:
        # weights (1, 2): the total (checksum x 2 + sevens) differs from the metric (checksum)
        c = run_cfg(
            tmp_path,
            {"weights": [1.0, 2.0]},
            advantage_estimator="_record_inputs",
            length_penalty=0.5,
            dynamic_sampling_metric="checksum",
        )
        trainer = GRPOTrainer(str(tiny_dir), [CountSevens(), Checksum()], rows(4), c)
        trainer.train()
    finally:
        del ADVANTAGE_ESTIMATORS["_record_inputs"]
    assert len(seen) == 2
    x = seen[0]
    assert x.names == ("count_sevens", "checksum") and x.weights == (1.0, 2.0)
    assert x.lengths is not None and ((x.lengths >= 1) & (x.lengths <= 8)).all()
    torch.testing.assert_close(x.metric, x.components[:, 1])  # the chosen metric column
    # the rewards are the total, shaped by the penalty with p = the checksum's group mean
    total = x.components @ torch.tensor([1.0, 2.0], dtype=x.components.dtype)
    unshaped = AdvantageInputs(
        total, 4, components=x.components, lengths=x.lengths, metric=x.metric
    )
    torch.testing.assert_close(x.rewards, length_penalized(unshaped, 0.5).rewards)
    assert not torch.equal(x.rewards, total)
    assert not torch.allclose(x.metric, total)
