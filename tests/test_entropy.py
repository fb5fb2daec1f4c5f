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


# ------------------------------------------------------------------ end to end (tiny model)
def _rows(n):
    return [{"prompt": f"Say sevens {i}"} for i in range(n)]


def _cfg(tmp_path, name="run", loss=None, save_steps=0, **kw):
    base = dict(output_dir=str(tmp_path / name), max_steps=2, seed=0, rollout={"num_generations": 4, "prompts_per_step": 2},
                sampling={"max_tokens": 8}, optim={"learning_rate": 1e-2}, forward={"micro_batch_size": 8},
                log={"progress_bar": False}, checkpoint={"final_model": False, "steps": save_steps})
    return GRPOConfig(**{**base, **kw}, loss={"beta": 0.0, **(loss or {})})


def _metrics(config):
    from grpo.tracking import read_jsonl

    return read_jsonl(Path(config.output_dir) / "metrics.jsonl")


def test_static_bonus_trains_with_finite_metrics(tiny_dir, tmp_path):
    from grpo import GRPOTrainer

    from conftest import Checksum

    config = _cfg(tmp_path, loss={"entropy_coef": 0.01})
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], _rows(4), config)
    trainer.train()
    trainer.close()
    ms = _metrics(config)
    assert [m["step"] for m in ms] == [1, 2]
    for m in ms:
        assert m["loss/entropy_coef"] == 0.01
        assert m["loss/entropy_bonus"] == pytest.approx(m["policy/entropy"], rel=1e-5)
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), m


def _scored_batch(trainer):
    from grpo.batch import collate_rollouts, join_scores

    scored = trainer.source.collect(0).result()
    batch = collate_rollouts([r.rollout for r in scored], None, trainer.tokenizer.pad_token_id)
    return join_scores(trainer.learner.frozen_logprobs(batch), scored)


def _learner(trainer, config, optimizer=None, **loss):
    from grpo.learner import Learner

    return Learner(trainer.model, trainer.ref_model, optimizer or trainer.optimizer, trainer.scheduler,
                   trainer.parallel,
                   trainer.accelerator.autocast, loss=config.loss.model_copy(update=loss), optim=config.optim,
                   forward=config.forward, temperature=config.sampling.temperature,
                   max_tokens=config.sampling.max_tokens,
                   minibatches_per_step=config.derived().minibatches_per_step)


def _entropy_of(trainer, batch, temperature=1.0):
    from grpo.metrics import masked_mean
    from grpo.policy import completion_logprobs

    with torch.no_grad():
        lp = completion_logprobs(trainer.model, batch, temperature=temperature, with_entropy=True)
    return masked_mean(lp.entropy, batch.loss_mask)


def test_bonus_raises_the_entropy_and_zero_leaves_it(tiny_dir, tmp_path):
    """With zero advantages only the entropy term moves the model: one plain gradient step (SGD:
    Adam's first step ~ lr * sign(g) overshoots near the uniform distribution) with coefficient 0
    changes nothing; with 1.0 the entropy on the same completions rises (a sign flip of the term
    would lower it), by more than float noise."""
    from grpo import GRPOTrainer

    from conftest import Checksum

    config = _cfg(tmp_path)
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], _rows(4), config)
    batch = _scored_batch(trainer)
    batch = batch.with_advantages(torch.zeros(len(batch)))
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    h0 = _entropy_of(trainer, batch)
    after = {}
    for coef in (0.0, 1.0):
        with torch.no_grad():
            for n, p in trainer.model.named_parameters():
                p.copy_(start[n])
        sgd = torch.optim.SGD([p for p in trainer.model.parameters() if p.requires_grad], lr=1.0)
        _learner(trainer, config, sgd, entropy_coef=coef).update(batch)
        after[coef] = _entropy_of(trainer, batch)
    trainer.close()
    assert after[0.0] == pytest.approx(h0, abs=1e-6)
    assert after[1.0] > h0 + 1e-3, (h0, after)


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "seq_sum_max_len"])
def test_micro_batches_give_the_full_batch_entropy_gradient(tiny_dir, tmp_path, aggregation):
    """The entropy term's denominator is the minibatch's token count, not the micro-batch's:
    micro-batches of 8, 1 and 3 (+1 +... ) give the same gradient, for an aggregation whose own
    denominator counts sequences."""
    from grpo import GRPOTrainer

    from conftest import Checksum

    config = _cfg(tmp_path, loss={"aggregation": aggregation})
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], _rows(4), config)
    batch = _scored_batch(trainer)

    def grads(micro):
        learner = _learner(trainer, config, entropy_coef=0.3)
        learner.forward = config.forward.model_copy(update={"micro_batch_size": micro})
        seen = []
        learner.optimizer.step = lambda: seen.append([p.grad.clone() for p in learner.params])
        learner.update(batch)
        return seen[0]

    whole, single, ragged = grads(8), grads(1), grads(3)
    for x, y, z in zip(whole, single, ragged):
        torch.testing.assert_close(y, x, atol=1e-7, rtol=1e-4)
        torch.testing.assert_close(z, x, atol=1e-7, rtol=1e-4)
    trainer.close()


def test_learner_measures_the_token_weighted_minibatch_entropy(tiny_dir, tmp_path):
    """The adaptive controller's measurement is the minibatch's token-weighted mean entropy
    (before the step's update), whatever the micro-batching: not a mean of micro-batch means."""
    from grpo import GRPOTrainer

    from conftest import Checksum

    config = _cfg(tmp_path, loss={"entropy_coef": 0.01, "entropy_target": 100.0})
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], _rows(4), config)
    batch = _scored_batch(trainer)
    want = _entropy_of(trainer, batch, config.sampling.temperature)
    lengths = batch.loss_mask.sum(1)
    assert lengths.min() < lengths.max()  # ragged: a mean of micro-batch means would differ
    for micro in (8, 3, 1):
        learner = _learner(trainer, config)
        learner.forward = config.forward.model_copy(update={"micro_batch_size": micro})
        learner.optimizer.step = lambda: None  # measure on the same weights every time
        learner.update(batch)
        assert learner.entropy.last_entropy == pytest.approx(want, rel=1e-5)
        assert learner.entropy.coef == pytest.approx(0.015)  # 0.01 + trl's default delta
    trainer.close()


def test_adaptive_coefficient_survives_resume(tiny_dir, tmp_path):
    """Adaptive, target far above the tiny model's entropy (so every step measures <= target):
    applied coefficients 0 (first step), 0.01 + 0.02, + 0.03, + 0.04 (steps 1-4). A run killed
    after step 2 and resumed continues that trace (a resume that forgot the controller would
    apply 0 again at step 3) and ends with the same weights as the uninterrupted run."""
    from grpo import GRPOTrainer

    from conftest import Checksum

    loss = {"entropy_coef": 0.01, "entropy_target": 100.0, "entropy_coef_delta": 0.01}
    common = dict(max_steps=4, loss=loss)

    def run(name, **kw):
        config = _cfg(tmp_path, name, **{**common, **kw})
        trainer = GRPOTrainer(str(tiny_dir), [Checksum()], _rows(8), config)
        trainer.train()
        trainer.close()
        return trainer, config

    full, full_cfg = run("full")
    run("part", max_steps=2, save_steps=2)
    resumed, part_cfg = run("part", save_steps=2, resume_from="latest")
    want = [0.0, 0.02, 0.03, 0.04]
    assert [m["loss/entropy_coef"] for m in _metrics(full_cfg)] == pytest.approx(want)
    assert [m["loss/entropy_coef"] for m in _metrics(part_cfg)] == pytest.approx(want)
    a = {n: p.detach() for n, p in full.model.named_parameters()}
    for n, p in resumed.model.named_parameters():
        torch.testing.assert_close(p.detach(), a[n], rtol=0, atol=1e-6, msg=n)
    assert resumed.learner.entropy.state_dict() == full.learner.entropy.state_dict()
