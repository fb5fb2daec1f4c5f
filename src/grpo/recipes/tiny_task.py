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
*think before answering*, and responses grow from ~7 to ~19 tokens, R1's Fig. 3 in miniature.
Honest reading: the arithmetic itself is learned in the warm-up; what GRPO learns is to *choose*
the worked path.

Languages: a worked step is written in one of :data:`STEP_LANGUAGES`, by default ``"symbols"``
(``4+3=7``). The R1 miniature (``examples/r1_pipeline_cpu.py``) gives the teacher two languages
of the same length in tokens, English ``4 plus 3 is 7`` and Chinese ``4加3得7``, each step's
drawn at random: its chains of thought mix languages the way R1-Zero's did (R1 sec. 2.3.2).
Their words are single tokens of the tokenizer built with ``extra_tokens=BILINGUAL_TOKENS``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

N_TERMS = 3
HELD_OUT = 200  # problems kept out of training (disjoint from the train split)
STEP_LANGUAGES = {"symbols": "{a}+{b}={c}", "en": "{a} plus {b} is {c}", "zh": "{a}加{b}得{c}"}
"""How one worked step ``a + b = c`` is written, per language."""
BILINGUAL_TOKENS = (" plus ", " is ", "加", "得")
"""The words of the "en" and "zh" steps, one token each (``grpo.tiny.build_char_tokenizer``)."""


def _space(seed: int = 1234) -> list[tuple[int, ...]]:
    space = list(itertools.product(range(10), repeat=N_TERMS))
    random.Random(seed).shuffle(space)
    return space


def problem_row(xs: Sequence[int]) -> dict:
    return {
        "prompt": [{"role": "user", "content": "+".join(map(str, xs)) + "=?"}],
        "answer": str(sum(xs)),
        "terms": list(xs),
    }


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


def teacher_completion(
    terms: Sequence[int],
    rng: random.Random,
    think_p: float = 0.4,
    noformat_p: float = 0.1,
    languages: Sequence[str] = ("symbols",),
) -> str:
    """One sloppy-teacher completion (see the module docstring); each worked step is written in
    one of ``languages`` (keys of :data:`STEP_LANGUAGES`), drawn uniformly per step. A negative
    term is a subtraction (``9-4=5``; the lab task's, :mod:`grpo.recipes.lab_task`), "symbols"
    only."""
    unknown = sorted(set(languages) - set(STEP_LANGUAGES))
    if unknown or not languages:
        raise ValueError(
            f"languages must be keys of STEP_LANGUAGES {sorted(STEP_LANGUAGES)}, "
            f"got {list(languages)}"
        )
    u = rng.random()
    guess = rng.randint(0, 9 * len(terms))
    if u < noformat_p:
        return str(guess)
    if u < noformat_p + think_p:
        steps, acc = [], terms[0]
        for x in terms[1:]:
            language = languages[0] if len(languages) == 1 else rng.choice(languages)
            if x < 0 and language != "symbols":
                raise ValueError(
                    f"a negative term ({x}) is written as a subtraction only in the 'symbols' "
                    f"language, not {language!r}"
                )
            step = "{a}-{b}={c}" if x < 0 else STEP_LANGUAGES[language]
            steps.append(step.format(a=acc, b=abs(x), c=acc + x))
            acc += x
        return f"<think>{','.join(steps)}</think><answer>{acc}</answer>"
    return f"<think></think><answer>{guess}</answer>"


def teacher_rows(
    rows: Sequence[dict],
    count: int,
    *,
    seed: int = 0,
    think_p: float = 0.4,
    noformat_p: float = 0.1,
    languages: Sequence[str] = ("symbols",),
) -> list[dict]:
    """``count`` SFT rows (prompt + sloppy-teacher completion) drawn with replacement from
    ``rows``."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        row = rng.choice(rows)
        text = teacher_completion(row["terms"], rng, think_p, noformat_p, languages)
        out.append(
            {"prompt": row["prompt"], "completion": [{"role": "assistant", "content": text}]}
        )
    return out


def warmup_sft(
    model,
    tokenizer,
    rows: Sequence[dict],
    *,
    steps: int = 800,
    batch_size: int = 64,
    lr: float = 5e-3,
    seed: int = 0,
    think_p: float = 0.4,
    noformat_p: float = 0.1,
    log_every: int = 100,
    progress: bool = True,
) -> list[float]:
    """Supervised warm-up on sloppy-teacher completions (trains ``model`` in place); returns the
    logged loss curve.

    Progress: a tqdm bar ("warm-up", with the loss) on a terminal when ``progress``; otherwise
    one ``warm-up step i/N: loss x`` line every ``log_every`` steps (never trl's raw dicts).

    A use of :func:`grpo.pipeline.sft` (trl's ``SFTTrainer``, loss on the completion and its
    eos): ``steps x batch_size`` fresh teacher rows, one epoch, AdamW, 20 warm-up steps then
    linear decay, gradient clipping at 1.0.
    """
    import tempfile

    import datasets

    from grpo.sft import sft

    data = teacher_rows(rows, steps * batch_size, seed=seed, think_p=think_p, noformat_p=noformat_p)
    bars = datasets.is_progress_bar_enabled()
    # trl's tokenizing passes over 51k rows: noise in the demo's output
    datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory(prefix="grpo-warmup-") as tmp:
            result = sft(
                model,
                data,
                tmp,
                tokenizer=tokenizer,
                save=False,
                per_device_train_batch_size=batch_size,
                num_train_epochs=1,
                learning_rate=lr,
                lr_scheduler_type="linear",
                warmup_steps=20,
                weight_decay=0.0,
                max_grad_norm=1.0,
                seed=seed,
                logging_steps=log_every or steps,
                disable_tqdm=True,
                callbacks=[_warmup_progress(steps, progress)],
                print_logs=False,
                dataloader_num_workers=0,
                gradient_checkpointing=False,
            )
    finally:
        if bars:
            datasets.enable_progress_bars()
    return [r["loss"] for r in result.log_history if "loss" in r]


def _warmup_progress(steps: int, progress: bool) -> Any:
    """A transformers ``TrainerCallback`` showing :func:`warmup_sft`'s progress: a tqdm bar with
    the loss on a terminal, plain lines elsewhere (tqdm's rule: ``disable=None`` is off when
    the output is not a tty)."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class WarmupProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar = tqdm(
                total=steps, desc="warm-up", unit="step", disable=None if progress else True
            )

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is None:
                return
            if self.bar.disable:
                print(f"warm-up step {state.global_step}/{steps}: loss {loss:.3f}", flush=True)
            else:
                self.bar.set_postfix(loss=f"{loss:.3f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return WarmupProgress()
