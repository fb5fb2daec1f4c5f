"""The CPU R1-Zero demo's task: sums of three one-digit numbers, and its warm-up ("cold start").

Prompt ``"4+3+9=?"``; gold answer ``"16"``. The completion format is R1-Zero's
``<think>...</think><answer>...</answer>``.

A randomly initialised 0.5M-parameter model knows nothing, and pure RL from nothing would need
far more than the demo's 10 minutes, so the demo starts like DeepSeek-R1's cold start
(arXiv:2501.12948 sec. 2.3.1) with a short supervised warm-up, on purpose on a *sloppy teacher*:

* with probability ``think_p`` (40%) it writes the running sum step by step, then the right
  answer: ``<think>4+3=7,7+9=16</think><answer>16</answer>``;
* with probability ``noformat_p`` (10%) it drops the tags and prints only a blind guess;
* otherwise (50%) it answers at once with an empty ``<think></think>`` and a blind guess.

After the warm-up, greedy decoding imitates the majority (guessing: held-out accuracy ~1-6%),
while sampling at temperature 1 takes the worked path ~40% of the time (pass@8 ~0.9-1.0). GRPO with
the rule rewards (exact answer + format) then turns pass@k into pass@1: the policy learns to
*think before answering*, and responses grow from ~7 to ~19 tokens, R1's Fig. 3 in miniature. Honest reading: the arithmetic
itself is learned in the warm-up; what GRPO learns is to *choose* the worked path.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

N_TERMS = 3
HELD_OUT = 200  # problems kept out of training (disjoint from the train split)


def _space(seed: int = 1234) -> list[tuple[int, ...]]:
    space = list(itertools.product(range(10), repeat=N_TERMS))
    random.Random(seed).shuffle(space)
    return space


def problem_row(xs: Sequence[int]) -> dict:
    return {"prompt": [{"role": "user", "content": "+".join(map(str, xs)) + "=?"}],
            "answer": str(sum(xs)), "terms": list(xs)}


def make_problems(size: int | None = None, seed: int = 0, split: str = "train") -> list[dict]:
    """Rows of ``split``: "test" = the 200 held-out problems (fixed), "train" = the other 800,
    shuffled with ``seed``. ``size`` caps the number of rows."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    space = _space()
    chosen = space[:HELD_OUT] if split == "test" else space[HELD_OUT:]
    if split == "train":
        random.Random(seed).shuffle(chosen)
    return [problem_row(xs) for xs in chosen[:size]]


def teacher_completion(terms: Sequence[int], rng: random.Random, think_p: float = 0.4,
                       noformat_p: float = 0.1) -> str:
    """One sloppy-teacher completion (see the module docstring)."""
    u = rng.random()
    guess = rng.randint(0, 9 * len(terms))
    if u < noformat_p:
        return str(guess)
    if u < noformat_p + think_p:
        steps, acc = [], terms[0]
        for x in terms[1:]:
            steps.append(f"{acc}+{x}={acc + x}")
            acc += x
        return f"<think>{','.join(steps)}</think><answer>{acc}</answer>"
    return f"<think></think><answer>{guess}</answer>"


def _sft_batch(tokenizer, rows: Sequence[dict], completions: Sequence[str]):
    ids, labels = [], []
    for row, c in zip(rows, completions):
        p = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(p_ids + c_ids)
        labels.append([-100] * len(p_ids) + c_ids)  # loss on the completion (and its eos) only
    t = max(map(len, ids))
    pad = tokenizer.pad_token_id
    x = torch.tensor([s + [pad] * (t - len(s)) for s in ids])
    y = torch.tensor([s + [-100] * (t - len(s)) for s in labels])
    m = torch.tensor([[1] * len(s) + [0] * (t - len(s)) for s in ids])
    return x, y, m


def warmup_sft(model, tokenizer, rows: Sequence[dict], *, steps: int = 800, batch_size: int = 64,
               lr: float = 5e-3, seed: int = 0, think_p: float = 0.4, noformat_p: float = 0.1,
               log_every: int = 100) -> list[float]:
    """Supervised warm-up on sloppy-teacher completions; returns the loss curve.

    Plain next-token cross-entropy on the completion tokens, AdamW with 20 warm-up steps and
    linear decay. For real models use trl's ``SFTTrainer`` on real long chain-of-thought data.
    """
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps))
    model.train()
    losses = []
    for step in range(steps):
        batch = [rng.choice(rows) for _ in range(batch_size)]
        comps = [teacher_completion(r["terms"], rng, think_p, noformat_p) for r in batch]
        x, y, m = _sft_batch(tokenizer, batch, comps)
        logits = model(input_ids=x, attention_mask=m).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"[warm-up] step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)
    return losses
