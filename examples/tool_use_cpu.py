"""Tool use on a laptop CPU: a tiny model learns by GRPO to call a Python tool for sums it cannot do.

    .venv/bin/python examples/tool_use_cpu.py --seed 0

The task: ``"123*45"`` -> ``<answer>5535</answer>``, products of a 3-digit and a 2-digit number.
A 0.8M-parameter model cannot multiply in its head; it can copy. The Python tool
(``grpo.rollout.tools.python_tool``: every call a fresh sandboxed interpreter, the isolation of
CodeReward) does the multiplying::

    <|user|>123*45<|assistant|><python>123*45</python> | <eos><|tool|>5535<|assistant|> | <answer>5535</answer><eos>
                                sampled (trained on)       appended (loss mask 0)          sampled

1. Build the model and a character tokenizer offline (``grpo.tiny``; ``<python>``, ``</python>``
   and ``<|tool|>`` added as tokens).
2. Warm-up, stated plainly: 900 supervised steps on a *sloppy teacher* that calls the tool only
   ``--tool-p`` (40%) of the time and otherwise guesses a number; the loss skips the tool's
   tokens, as in RL. It teaches the format, not the habit of using it: greedy decoding guesses.
3. GRPO (``MultiTurnGenerator`` on the HF generator, up to 2 turns) with one reward, the exact
   answer: the tool path wins its groups, so the tool-call rate and held-out accuracy rise.
4. Held-out (200 products never trained on) greedy accuracy and tool-call rate, before and after.

Options for measuring (benchmarks/bench_async.py uses them): ``--save-warmup DIR`` keeps the
warm-up model and tokenizer, ``--start-model DIR`` starts GRPO from one (no warm-up);
``--eval-steps N`` evaluates the held-out set through the trainer every N steps (``eval.jsonl``:
greedy accuracy by step, for the time to a target accuracy); ``--async-staleness K`` samples the
next steps in a child process (``grpo.rollout.ProcessGenerator``, the ``MultiTurnGenerator``
wrapped around it with ``wrap_generator=``) while the learner trains, on weights at most K steps
old, so the sandboxed tool calls of step s+1 run while step s trains. The before/after numbers
then come from an in-process ``MultiTurnGenerator`` on the trained weights.

Departures from tool-integrated RL papers (ToRL arXiv:2503.23383, ReTool arXiv:2504.11536), for
the CPU budget: a tiny random model with a warm-up instead of a pretrained one; beta = 0; short
trajectories; one kind of problem.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

TOOL_TOKENS = ["<python>", "</python>"]


def make_problems(split: str, size: int, seed: int = 0) -> list[dict]:
    """``split="test"``: 200 fixed held-out products; ``"train"``: ``size`` others, shuffled by ``seed``."""
    pairs = [(a, b) for a in range(100, 1000) for b in range(10, 100)]
    random.Random(1234).shuffle(pairs)
    chosen = pairs[:200] if split == "test" else random.Random(seed).sample(pairs[200:], size)
    return [{"prompt": [{"role": "user", "content": f"{a}*{b}"}], "answer": str(a * b), "a": a, "b": b}
            for a, b in chosen[:size]]


def exact_answer(completions, answer, **kwargs) -> list[float]:
    """1.0 when the last ``<answer>...</answer>`` of the final message is exactly the gold number."""
    out = []
    for completion, gold in zip(completions, answer):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        found = re.findall(r"<answer>(.*?)</answer>", text)
        out.append(float(bool(found) and found[-1].strip() == gold))
    return out


def build_tokenizer():
    from tokenizers import AddedToken

    from grpo.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.add_tokens(TOOL_TOKENS)
    tok.add_tokens([AddedToken("<|tool|>", special=True, normalized=False)], special_tokens=True)
    return tok


def teacher_pieces(row: dict, rng: random.Random, tool_p: float) -> list[tuple[str, bool]]:
    """A sloppy-teacher trajectory after the prompt, as (text, trained) pieces."""
    if rng.random() < tool_p:
        return [(f"<python>{row['a']}*{row['b']}</python>", True), (f"<eos><|tool|>{row['answer']}<|assistant|>", False),
                (f"<answer>{row['answer']}</answer><eos>", True)]
    return [(f"<answer>{rng.randint(1000, 99999)}</answer><eos>", True)]


def warmup(model, tok, rows, *, steps: int, tool_p: float, seed: int, batch_size: int = 64, lr: float = 5e-3):
    import torch
    import torch.nn.functional as F

    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps))
    model.train()
    for step in range(steps):
        ids, labels = [], []
        for row in (rng.choice(rows) for _ in range(batch_size)):
            prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
            x = tok(prompt, add_special_tokens=False)["input_ids"]
            y = [-100] * len(x)
            for text, trained in teacher_pieces(row, rng, tool_p):
                piece = tok(text, add_special_tokens=False)["input_ids"]
                x, y = x + piece, y + (piece if trained else [-100] * len(piece))
            ids.append(x)
            labels.append(y)
        t = max(map(len, ids))
        x = torch.tensor([s + [tok.pad_token_id] * (t - len(s)) for s in ids])
        y = torch.tensor([s + [-100] * (t - len(s)) for s in labels])
        m = torch.tensor([[1] * len(s) + [0] * (t - len(s)) for s in ids])
        logits = model(input_ids=x, attention_mask=m).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"[warm-up] step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)


def held_out(generator, rows) -> dict:
    """Greedy accuracy and tool-call rate (and what the tool-using answers score)."""
    from grpo.rollout import SamplingConfig
    from grpo.rollout.trajectory import multiturn_metrics

    trajs = generator.generate([r["prompt"] for r in rows], 1, SamplingConfig(temperature=0.0, max_tokens=64))
    acc = exact_answer([t.text for t in trajs], [r["answer"] for r in rows])
    m = multiturn_metrics(trajs, acc)
    return {"accuracy": sum(acc) / len(acc), "tool_call_rate": m["tools/call_rate"],
            "accuracy_with_tool": m.get("tools/reward_calls_1"), "env_token_frac": m["tools/env_token_frac"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-dir", default=None, help="run folder (default runs/tool_use_cpu_seed<N>)")
    ap.add_argument("--steps", type=int, default=60, help="GRPO steps")
    ap.add_argument("--warmup-steps", type=int, default=900)
    ap.add_argument("--tool-p", type=float, default=0.4, help="how often the warm-up teacher calls the tool")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--async-staleness", type=int, default=0,
                    help="asynchronous rollouts: sample (and call the tool) in a generator process on weights "
                         "at most K steps old while the learner trains (0: synchronous)")
    ap.add_argument("--eval-steps", type=int, default=0,
                    help="held-out evaluation through the trainer every N GRPO steps (eval.jsonl); 0: none")
    ap.add_argument("--start-model", default=None,
                    help="skip the warm-up: start GRPO from this saved model and tokenizer (see --save-warmup)")
    ap.add_argument("--save-warmup", default=None, help="save the warm-up model and tokenizer to this folder")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (seconds)")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.warmup_steps, a.eval_prompts = 2, 5, 8

    import torch

    from grpo import GRPOConfig, GRPOTrainer
    from grpo.rollout import HFGenerator
    from grpo.rollout.multiturn import MultiTurnGenerator
    from grpo.rollout.tools import CodeBlockParser, python_tool
    from grpo.tiny import build_tiny_llama

    run = Path(a.output_dir or f"runs/tool_use_cpu_seed{a.seed}")
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    torch.manual_seed(a.seed)
    if a.start_model:  # a saved warm-up (--save-warmup): its model and tokenizer
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(a.start_model)
        model = AutoModelForCausalLM.from_pretrained(a.start_model)
        train, test = make_problems("train", 4000, a.seed), make_problems("test", a.eval_prompts)
    else:
        tok = build_tokenizer()
        model = build_tiny_llama(tok, hidden_size=128, num_layers=2, num_heads=4, head_dim=32, seed=a.seed)
        train, test = make_problems("train", 4000, a.seed), make_problems("test", a.eval_prompts)
        print(f"[build] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
        warmup(model, tok, train, steps=a.warmup_steps, tool_p=a.tool_p, seed=a.seed)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        if a.save_warmup:
            model.save_pretrained(a.save_warmup)
            tok.save_pretrained(a.save_warmup)
    t_warm = time.perf_counter() - t0

    multiturn = dict(tools=[python_tool()], parser=CodeBlockParser(), max_turns=2, max_turn_tokens=32,
                     render_tools=False)
    recording = _recording_generator()
    if a.async_staleness:
        # the trainer samples in a child process (ProcessGenerator) with weights of its own; the
        # tool loop is wrapped around that generator, and the held-out evaluation before and after
        # runs in this process on the model's current weights
        made: list = []

        def wrap(inner):
            made.append(recording(inner, **multiturn))
            return made[-1]

        evaluator = MultiTurnGenerator(HFGenerator(model, tok), **multiturn)
        trainer_generator = {"wrap_generator": wrap}
    else:
        generator = evaluator = recording(HFGenerator(model, tok), **multiturn)
        trainer_generator = {"generator": generator}
    before = held_out(evaluator, test)
    print(f"[before GRPO] {before}", flush=True)
    config = GRPOConfig(
        output_dir=str(run), seed=a.seed, max_steps=a.steps, overwrite_output_dir=True,
        rollout={"num_generations": 8, "prompts_per_step": 8},
        sampling={"max_tokens": 64, "temperature": 1.0}, optim={"learning_rate": a.lr},
        loss={"beta": 0.0, "eps_low": 0.2, "eps_high": 0.28, "aggregation": "token_mean"},
        forward={"micro_batch_size": 64, "torch_threads": a.threads},
        log={"steps": 1, "progress_bar": False}, checkpoint={"final_model": False},
        eval={"steps": a.eval_steps, "samples": 1}, **{"async": {"staleness": a.async_staleness}})
    evals = {"eval_dataset": test, "accuracy_reward": "exact_answer"} if a.eval_steps else {}
    trainer = GRPOTrainer(model, [exact_answer], train, config, tokenizer=tok, **trainer_generator, **evals)
    if a.async_staleness:
        generator = made[0]
    try:
        trainer.train()
        after = held_out(evaluator, test)
    finally:
        trainer.close()
    print(f"[after GRPO] {after}", flush=True)
    summary = {"seed": a.seed, "grpo_steps": a.steps, "warmup_steps": a.warmup_steps, "tool_p": a.tool_p,
               "async_staleness": a.async_staleness, "start_model": a.start_model,
               "held_out_accuracy_before": before["accuracy"], "held_out_accuracy_after": after["accuracy"],
               "gain_points": 100 * (after["accuracy"] - before["accuracy"]),
               "tool_call_rate_before": before["tool_call_rate"], "tool_call_rate_after": after["tool_call_rate"],
               "seconds_warmup": round(t_warm, 1), "seconds_total": round(time.perf_counter() - t0, 1)}
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    (run / "tool_metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in generator.log))
    print(f"\nheld-out greedy accuracy {before['accuracy']:.1%} -> {after['accuracy']:.1%} "
          f"({summary['gain_points']:+.1f} points); tool-call rate {before['tool_call_rate']:.1%} -> "
          f"{after['tool_call_rate']:.1%}; total {summary['seconds_total']:.0f} s")


def _recording_generator():
    from grpo.rollout.multiturn import MultiTurnGenerator
    from grpo.rollout.trajectory import multiturn_metrics

    class Recording(MultiTurnGenerator):
        """Keeps the tool metrics of every training-step call (the trainer does not log them yet)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.log: list[dict] = []

        def generate(self, prompts, n, sampling, rows=None):
            out = super().generate(prompts, n, sampling, rows)
            if sampling.temperature > 0 and n > 1:
                self.log.append(multiturn_metrics(out))
                if len(self.log) % 5 == 0:
                    m = self.log[-1]
                    print(f"[grpo] step {len(self.log)}: tool-call rate {m['tools/call_rate']:.2f}, "
                          f"env token fraction {m['tools/env_token_frac']:.2f}", flush=True)
            return out
    return Recording


if __name__ == "__main__":
    main()
