"""Your own GRPO loop from grpo's pieces: R1-Zero on the CPU demo's task, one screen per idea.

    python examples/custom_loop.py            # the full run (warm-up + 150 GRPO steps)
    python examples/custom_loop.py --quick    # smoke test (seconds)

The task, model, warm-up, rewards and settings of ``examples/r1_zero_cpu.py``, but the loop is
written out instead of ``GRPOTrainer``. One step (DeepSeekMath arXiv:2402.03300 Algorithm 1,
fully on-policy, as in DeepSeek-R1 arXiv:2501.12948) is :func:`grpo_step`:

1. prompts: the next P rows of a seeded, resumable sampler (``grpo.data.PromptSampler``);
2. rollout: G completions per prompt from a generator (``grpo.rollout.HFGenerator``), seeded by
   (seed, step, prompt, sample) (``grpo.source.sampling_seed``), with their token ids;
3. score: rule rewards called as trl calls them (``grpo.rewards.CombinedReward`` +
   ``grpo.source.reward_inputs``): math-verify on the ``<answer>`` + 0.1 x the R1-Zero format;
4. advantages: ``(r - mean) / std`` within each group (``grpo.advantages.group_advantages``);
5. loss: the configured objective (``grpo.loss.compute_loss``; the clipped surrogate by default,
   or any name in ``grpo.objectives.LOSSES``: cispo, sapo, ...) on the generator's own tokens
   (``grpo.batch.collate_rollouts``), log-probs recomputed at the sampling temperature
   (``grpo.policy.completion_logprobs``), token mean over the whole step;
6. AdamW step after clipping the gradient norm to 1, then weight sync to the generator.

It computes what ``GRPOTrainer`` computes with the same settings (tests/test_custom_loop.py
checks that both end with the same weights). What it leaves out, and the trainer has: several
processes, mu > 1 or minibatches (then pi_old needs its own frozen log-probs), the KL reference
(beta = 0 here, as in the demo), DAPO dynamic sampling, checkpoints, logs. docs/custom_loop.md
walks through it, with each piece's contract and the mistakes a hand-written loop makes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from grpo.advantages import group_advantages
from grpo.batch import collate_rollouts
from grpo.data import PromptSampler
from grpo.loss import aggregation_denominator, compute_loss
from grpo.objectives import loss_settings
from grpo.objectives.clip import ClipSettings
from grpo.policy import completion_logprobs
from grpo.rewards import CombinedReward, FormatReward, MathReward
from grpo.rollout import HFGenerator, SamplingConfig
from grpo.source import reward_inputs, sampling_seed


@dataclass
class Settings:
    """The demo's GRPO settings (the GRPOConfig fields of the same names in brackets)."""

    seed: int = 0
    steps: int = 150  # [max_steps]
    prompts_per_step: int = 8  # P
    group_size: int = 8  # G [num_generations]
    max_tokens: int = 40  # [max_completion_length]
    temperature: float = 1.0  # sampling AND log-prob temperature: one number, used twice
    lr: float = 1e-4  # [learning_rate]
    objective: str = "grpo"  # [loss.objective]: the clipped surrogate, or cispo, sapo, gmpo, dppo
    eps_low: float = 0.2  # the clip of objective "grpo"
    eps_high: float = 0.28  # DAPO clip-higher
    max_grad_norm: float = 1.0
    micro_batch_size: int = 64  # rows per forward/backward: memory only, the update does not depend on it


def objective_settings(s: Settings):
    """The objective's settings: the clip for "grpo", the registered defaults for another
    (the trainer's ``loss.options``)."""
    return ClipSettings(s.eps_low, s.eps_high) if s.objective == "grpo" else loss_settings(s.objective)


def make_optimizer(model: torch.nn.Module, s: Settings) -> torch.optim.Optimizer:
    """AdamW as the trainer builds it (betas 0.9 / 0.99, no weight decay, constant lr)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr,
                             betas=(0.9, 0.99), weight_decay=0.0)


def grpo_step(step: int, *, model, tokenizer, generator, reward: CombinedReward, sampler: PromptSampler,
              data: list[dict], optimizer: torch.optim.Optimizer, s: Settings) -> dict[str, float]:
    """One GRPO step, sampled with the weights of optimizer step ``step``; returns metrics."""
    # 1. prompts: each row keeps its dataset columns ("answer", ...) for the rewards
    rows = [data[i] for i in sampler.take(s.prompts_per_step)]
    prompts = [r["prompt"] for r in rows]

    # 2. rollout: P*G records, prompt-major (sample j of prompt p at p*G + j), each with its
    #    prompt_ids / completion_ids exactly as sampled; sample j of prompt p is seeded
    #    sampling_seed(...) + p*G + j, so a step's samples do not depend on the batching
    seed = sampling_seed(s.seed, step, 0, s.group_size)
    sampling = SamplingConfig(temperature=s.temperature, max_tokens=s.max_tokens, seed=seed)
    rollouts = generator.generate(prompts, s.group_size, sampling)

    # 3. score: trl's keywords (prompts, completions as assistant messages, completion_ids,
    #    every dataset column repeated per completion); None where a reward could not decide
    scores = reward.breakdown(**reward_inputs(rollouts, prompts, rows))

    # 4. group-relative advantages over contiguous groups; unscorable completions get 0
    adv_N = group_advantages(scores.values, s.group_size)  # [N] = [P*G]

    # 5. the policy loss on the sampled tokens: prompts left-padded, completions right-padded,
    #    loss_mask False on padding; normalised by the tokens of the *whole step*, so that
    #    micro-batches add up to the full-batch loss
    batch = collate_rollouts(rollouts, adv_N, tokenizer.pad_token_id)
    normalizer = aggregation_denominator(batch.loss_mask, "token_mean")
    model.train()
    optimizer.zero_grad(set_to_none=True)  # backward adds to .grad: start from nothing (the warm-up left some)
    loss_sum, entropy_sum = 0.0, 0.0
    # rows by completion length, so that each micro-batch pads to a similar length (as the trainer)
    order = batch.completion_mask.sum(1).argsort(stable=True)
    for start in range(0, len(batch), s.micro_batch_size):
        mb = batch.select(order[start:start + s.micro_batch_size])
        lp = completion_logprobs(model, mb, temperature=s.temperature, with_entropy=True)  # [B, T]
        out = compute_loss(lp.logp, lp.logp.detach(),  # on-policy: pi_old = pi_theta, ratio 1
                           mb.advantages, mb.loss_mask, objective=s.objective,
                           settings=objective_settings(s), aggregation="token_mean", normalizer=normalizer)
        out.loss.backward()
        loss_sum += out.loss.item()
        entropy_sum += lp.entropy[mb.loss_mask].sum().item()

    # 6. optimizer step, then the generator samples the next step with the new weights
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
    optimizer.step()
    generator.sync_weights(model)  # a no-op for HFGenerator; a vLLM engine copies the weights here

    total = [v for v in scores.values if v is not None]  # means over the scored completions
    right = [v for v in scores.component_values("math_reward") if v is not None]
    return {"reward": sum(total) / max(len(total), 1), "accuracy": sum(right) / max(len(right), 1),
            "loss": loss_sum, "grad_norm": float(grad_norm),
            "entropy": entropy_sum / max(normalizer, 1.0),
            "length": sum(len(r.completion_ids) for r in rollouts) / len(rollouts)}


def greedy_accuracy(generator, reward: CombinedReward, rows: list[dict], max_tokens: int) -> tuple[float, float]:
    """Held-out accuracy of greedy decoding (the mean of math_reward over the scored rows) and
    the mean completion length, as the trainer's evaluation reports them."""
    prompts = [r["prompt"] for r in rows]
    rollouts = generator.generate(prompts, 1, SamplingConfig(temperature=0.0, max_tokens=max_tokens))
    right = [v for v in reward.breakdown(**reward_inputs(rollouts, prompts, rows)).component_values(
        "math_reward") if v is not None]
    return sum(right) / max(len(right), 1), sum(len(r.completion_ids) for r in rollouts) / len(rollouts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150, help="GRPO steps")
    ap.add_argument("--warmup-steps", type=int, default=800)
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1, as the demo)")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.warmup_steps, a.eval_prompts = 2, 5, 8

    from grpo.recipes.tiny_task import make_problems, warmup_sft
    from grpo.tiny import build_char_tokenizer, build_tiny_llama

    t0 = time.perf_counter()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    s = Settings(seed=a.seed, steps=a.steps)
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(tokenizer, hidden_size=128, num_layers=2, num_heads=4, head_dim=32, seed=a.seed)
    train, held_out = make_problems(seed=a.seed, split="train"), make_problems(split="test")[:a.eval_prompts]
    warmup_sft(model, tokenizer, train, steps=a.warmup_steps, seed=a.seed)  # the demo's cold start

    generator = HFGenerator(model, tokenizer)  # samples with the trained model itself
    reward = CombinedReward([MathReward(), FormatReward()], weights=[1.0, 0.1])
    sampler = PromptSampler(len(train), seed=s.seed)
    optimizer = make_optimizer(model, s)
    acc0, len0 = greedy_accuracy(generator, reward, held_out, s.max_tokens)
    print(f"[grpo] before: held-out greedy accuracy {acc0:.1%}, length {len0:.1f} tokens", flush=True)
    t1 = time.perf_counter()
    for step in range(s.steps):
        m = grpo_step(step, model=model, tokenizer=tokenizer, generator=generator, reward=reward,
                      sampler=sampler, data=train, optimizer=optimizer, s=s)
        if step % 10 == 0 or step == s.steps - 1:
            print(f"[grpo] step {step + 1}/{s.steps} " + " ".join(f"{k} {v:.3f}" for k, v in m.items()), flush=True)
    t_grpo = time.perf_counter() - t1
    acc1, len1 = greedy_accuracy(generator, reward, held_out, s.max_tokens)
    print(f"\nheld-out greedy accuracy: {acc0:.1%} before GRPO -> {acc1:.1%} after "
          f"({100 * (acc1 - acc0):+.1f} points); response length {len0:.1f} -> {len1:.1f} tokens")
    print(f"GRPO {s.steps} steps {t_grpo:.0f} s; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
