"""examples/custom_loop.py: it runs as a script, its ``grpo_step`` computes what GRPOTrainer
computes (same weights after 3 steps), the comparison catches the mistakes docs/custom_loop.md
warns about, and the doc's code blocks run."""

import copy
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo import GRPOConfig, GRPOTrainer
from grpo.data import PromptSampler
from grpo.recipes.tiny_task import make_problems
from grpo.rewards import CombinedReward, FormatReward, MathReward, Reward
from grpo.rollout import HFGenerator
from grpo.tiny import build_char_tokenizer, build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3


def load_example():
    spec = importlib.util.spec_from_file_location("custom_loop", ROOT / "examples" / "custom_loop.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through it
    spec.loader.exec_module(module)
    return module


class DigitShare(Reward):
    """Dense reward (share of digits) so that a random tiny model's groups have reward spread."""

    def score(self, completion, **example):
        return sum(ch.isdigit() for ch in completion) / max(len(completion), 1)


def test_example_runs_quick():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_loop.py"), "--quick"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "held-out greedy accuracy" in out.stdout and "[grpo] step 2/2" in out.stdout


# ------------------------------------------------------------------- same weights as the trainer
# Temperature 0.7 (not the demo's 1.0) so that a loop taking log-probs at T=1 is wrong, and a
# micro-batch of 3 rows for 8 completions (3 + 3 + 2, of different token counts) so that a loop
# normalising per micro-batch is wrong too.
SETTINGS = dict(seed=0, steps=STEPS, prompts_per_step=2, group_size=4, max_tokens=8, temperature=0.7,
                lr=1e-3, eps_low=0.2, eps_high=0.28, max_grad_norm=1.0, micro_batch_size=3)


def rewards():
    return [MathReward(), FormatReward(), DigitShare()]


def trainer_run(output_dir, objective: str = "grpo") -> dict:
    """The tiny model, its data, and GRPOTrainer's weights after STEPS steps with SETTINGS."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(tokenizer, hidden_size=64, num_layers=1, num_heads=2, head_dim=32, seed=0)
    data = make_problems(size=16, seed=0)
    s = SETTINGS
    config = GRPOConfig(
        output_dir=str(output_dir), seed=s["seed"], max_steps=STEPS,
        num_generations=s["group_size"], prompts_per_step=s["prompts_per_step"],
        max_completion_length=s["max_tokens"], temperature=s["temperature"], learning_rate=s["lr"],
        max_grad_norm=s["max_grad_norm"], beta=0.0,
        aggregation="token_mean", micro_batch_size=s["micro_batch_size"], reward_weights=[1.0, 0.1, 1.0],
        torch_threads=1, progress_bar=False, save_final_model=False, log_completions=0)
    loss = {"eps_low": s["eps_low"], "eps_high": s["eps_high"]} if objective == "grpo" else {"objective": objective}
    config = config.updated({f"loss.{k}": v for k, v in loss.items()})
    trainer = GRPOTrainer(copy.deepcopy(model), rewards(), data, config, tokenizer=tokenizer)
    try:
        last = trainer.train()
    finally:
        trainer.close()
    return dict(tokenizer=tokenizer, model=model, data=data, trained=_weights(trainer.model), last=last)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    yield trainer_run(tmp_path_factory.mktemp("trainer"))
    torch.set_num_threads(threads)


def _weights(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def run_custom_loop(setup, module, **settings):
    torch.set_num_threads(1)  # what GRPOConfig(torch_threads=1) sets in the trainer
    model = copy.deepcopy(setup["model"])
    for p in model.parameters():  # gradients left by earlier work, as the example's warm-up leaves them
        p.grad = torch.randn_like(p)
    s = module.Settings(**{**SETTINGS, **settings})
    generator = HFGenerator(model, setup["tokenizer"])
    reward = CombinedReward(rewards(), weights=[1.0, 0.1, 1.0])
    sampler = PromptSampler(len(setup["data"]), seed=s.seed)
    optimizer = module.make_optimizer(model, s)
    for step in range(s.steps):
        metrics = module.grpo_step(step, model=model, tokenizer=setup["tokenizer"], generator=generator,
                                   reward=reward, sampler=sampler, data=setup["data"], optimizer=optimizer, s=s)
    return _weights(model), metrics


def update_gap(setup, weights) -> float:
    """|custom update - trainer update| / |trainer update|, over all parameters after STEPS steps.

    Adam's first step is ~lr * sign(g) per element, so float noise in a tiny gradient element
    can move it by 2 lr instead of 0: the gap is then ~2 sqrt(flips / parameters), so GAP_TOL
    tolerates ~2 flips among the model's ~80k parameters. Measured: the example gives exactly 0
    (bit-identical weights); each loop mistake below gives 6 to 165 % (more than 3 x GAP_TOL)."""
    start = _weights(setup["model"])
    return float((weights - setup["trained"]).norm() / (setup["trained"] - start).norm())


GAP_TOL = 1e-2


def test_custom_loop_matches_trainer(setup):
    weights, metrics = run_custom_loop(setup, load_example())
    moved = (setup["trained"] - _weights(setup["model"])).norm()
    assert moved > 10 * SETTINGS["lr"], "the trainer did not move the weights: the comparison would be empty"
    gap = update_gap(setup, weights)
    print(f"custom loop vs trainer: update gap {gap:.2e}")
    assert gap < GAP_TOL
    assert metrics["loss"] == pytest.approx(setup["last"]["loss/loss"], rel=1e-4, abs=1e-7)
    assert metrics["grad_norm"] == pytest.approx(setup["last"]["optim/grad_norm"], rel=1e-4)


def _logprobs_at(temperature, **override):
    from grpo.policy import completion_logprobs

    return lambda model, batch, **kw: completion_logprobs(model, batch, **{**kw, "temperature": temperature,
                                                                            **override})


def _loss_with(**override):
    from grpo.loss import compute_loss

    def loss(logp, old_logp, advantages, mask, **kw):
        kw = {**kw, **override}
        if kw.pop("mask_padding", False):  # the mistake: every column, padding included
            mask = torch.ones_like(mask)
        return compute_loss(logp, old_logp, advantages, mask, **kw)
    return loss


def _without_zero_grad(make_optimizer):
    def make(model, s):
        optimizer = make_optimizer(model, s)
        optimizer.zero_grad = lambda set_to_none=True: None
        return optimizer
    return make


MISTAKES = {  # name -> [(the example's name to replace, the replacement given the module)]
    "logprobs_at_another_temperature": [("completion_logprobs", lambda m: _logprobs_at(1.0))],
    "normalised_per_micro_batch": [("compute_loss", lambda m: _loss_with(normalizer=None))],
    # padded log-probs: the packed forward leaves 0 (no gradient) at padding, which hides this mistake
    "advantages_over_padding": [("completion_logprobs", lambda m: _logprobs_at(SETTINGS["temperature"],
                                                                               padding_free=False)),
                                ("compute_loss", lambda m: _loss_with(mask_padding=True))],
    "sequence_mean_not_token_mean": [("compute_loss", lambda m: _loss_with(aggregation="seq_mean_token_mean",
                                                                          normalizer=2 * 4))],
    "gradients_not_zeroed": [("make_optimizer", lambda m: _without_zero_grad(m.make_optimizer))],
}


def test_custom_loop_matches_trainer_with_another_objective(tmp_path):
    """The loop's compute_loss(objective="cispo") is the trainer's loss.objective="cispo": a
    custom loop reaches every registered objective the same way (issue 24). Fully on-policy
    (ratio 1) CISPO's gradient equals the clip's, so the weights cannot tell them apart; its loss
    *value* (-sg(w) A log pi) can: the loop's loss is the trainer's, and not the clip's."""
    setup = trainer_run(tmp_path, objective="cispo")
    weights, metrics = run_custom_loop(setup, load_example(), objective="cispo")
    assert update_gap(setup, weights) < GAP_TOL
    assert metrics["loss"] == pytest.approx(setup["last"]["loss/loss"], rel=1e-4, abs=1e-7)
    _, clip_metrics = run_custom_loop(setup, load_example())
    assert clip_metrics["loss"] != pytest.approx(setup["last"]["loss/loss"], rel=1e-2)


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_comparison_catches_loop_mistakes(setup, mistake):
    module = load_example()
    for name, wrong in MISTAKES[mistake]:
        setattr(module, name, wrong(module))  # the example's own step, with one piece done wrong
    weights, _ = run_custom_loop(setup, module)
    assert update_gap(setup, weights) > 3 * GAP_TOL, mistake


# ------------------------------------------------------------------- docs/custom_loop.md runs
def test_custom_loop_md_blocks_run():
    text = (ROOT / "docs" / "custom_loop.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(block, namespace)
        except Exception as e:  # noqa: BLE001 -- re-raised with the block that failed
            raise AssertionError(f"docs/custom_loop.md python block {i} failed: {e!r}\n{block}") from e
