"""Rejection sampling (DeepSeek-R1, arXiv:2501.12948 sec. 2.3.3) and pass-rate prompt selection.

"We curate reasoning prompts and generate reasoning trajectories by performing rejection
sampling from the checkpoint from the above RL training ... we only retain the correct ones."
:func:`rejection_sample` does that with any :class:`grpo.rollout.Generator` (HF or vLLM):

1. prompts are taken in fixed chunks of ``batch_size``; each chunk's ``n`` samples per prompt
   are generated with seed ``seed + first_prompt_index * n`` (so sample ``k`` of prompt ``i``
   always draws from the stream ``seed + i*n + k``, whatever was run before);
2. the rewards score every sample (:meth:`grpo.rewards.CombinedReward.breakdown`), called
   exactly as the trainer calls them (:func:`grpo.data.reward_inputs`: trl's keywords, chat
   completions for chat prompts, ``completion_ids``, ``truncated``, the dataset columns);
3. the chunk's raw samples, scores, statuses and reasons are appended to ``samples.jsonl`` in
   one write;
4. at the end the :class:`~grpo.pipeline.keep.KeepRule` selects rows from the stored samples.

The run folder::

    manifest.json      what was sampled (model, data fingerprint, n, sampling, rewards)
    samples.jsonl      one record per prompt: every sample, its scores, kept or why dropped
    sft.jsonl          the kept rows, SFT-ready (prompt + completion messages, <think> kept)
    pass_rates.jsonl   per prompt: pass rate (share of correct among scorable samples), kept rows
    rl_prompts.jsonl   with ``rl_pass_rate=(low, high)``: the prompts with low < pass rate < high
    summary.json       counts: kept, and dropped per reason

Resuming: run again with the same folder and settings; finished chunks are read back, not
redone (a chunk cut short is redone whole, so the output equals an uninterrupted run's).
Settings that change what was sampled (``manifest.json``) raise ValueError; a different keep
rule does not (it is applied to the stored samples). Selecting RL prompts by pass rate, as
open-r1's ``scripts/pass_rate_filtering`` does (0.2-0.8 with 8 samples on OpenR1-Math), keeps
prompts the policy neither always nor never solves: only those give GRPO a non-zero advantage.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from grpo.data import reward_inputs
from grpo.pipeline.keep import REASONS, KeepRule, Sample, check_verifiers, is_correct, select
from grpo.rewards import CombinedReward, Reward
from grpo.rollout import SamplingConfig


class NothingKeptError(ValueError):
    """The keep rule dropped every sample; the message has the counts and pass rates."""


class OtherSamplesError(ValueError):
    """The output folder holds samples made with other settings (its ``manifest.json``)."""


@dataclass
class SampleResult:
    """What :func:`rejection_sample` produced (files in ``output_dir``)."""

    output_dir: Path
    sft_path: Path
    pass_rates_path: Path
    rl_prompts_path: Path | None
    pass_rates: list[float | None]
    """Per prompt, in dataset order: correct / scorable samples (None if none is scorable)."""
    counts: dict[str, int]
    """``kept`` and the number of samples dropped for each reason."""

    @property
    def dataset(self):
        """The kept rows as a ``datasets.Dataset``."""
        from datasets import Dataset

        return Dataset.from_list(read_jsonl(self.sft_path))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def rejection_sample(
    generator: Any,
    dataset: Sequence[dict],
    rewards: CombinedReward | Sequence[Reward],
    *,
    output_dir: str | Path,
    n: int = 8,
    sampling: SamplingConfig | None = None,
    keep: KeepRule | None = None,
    seed: int = 0,
    batch_size: int = 16,
    rl_pass_rate: tuple[float, float] | None = None,
    prompt_key: str = "prompt",
    progress: bool = True,
    model_name: str | None = None,
) -> SampleResult:
    """Sample ``n`` completions per prompt, score, keep by ``keep``; write SFT rows and pass rates.

    Args:
        generator: a :class:`grpo.rollout.Generator` (``HFGenerator``, ``VLLMGenerator``, ...).
        dataset: rows with ``prompt_key`` (text or chat messages) and the reward columns.
        rewards: a CombinedReward, or rewards to sum with weight 1.
        n: samples per prompt. ``sampling``: how (default: temperature 1, 256 tokens);
            its ``seed`` is replaced by ``seed`` (see the module docstring).
        keep: the keep rule (default :class:`KeepRule()`: every verifier passes, finished,
            deduplicated).
        batch_size: prompts per ``generate`` call (the resume unit).
        rl_pass_rate: ``(low, high)``: also write the prompts with ``low < pass rate < high``.
        model_name: recorded in the manifest, so a resume with another model is refused.

    Raises NothingKeptError (after writing the samples and pass rates) if no row is kept.
    """
    from tqdm.auto import tqdm

    keep = keep or KeepRule()
    reward = rewards if isinstance(rewards, CombinedReward) else CombinedReward(list(rewards))
    check_verifiers(keep, [r.name for r in reward.rewards])
    sampling = replace(sampling or SamplingConfig(), seed=seed)
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    if rl_pass_rate is not None and not 0 <= rl_pass_rate[0] < rl_pass_rate[1] <= 1:
        raise ValueError(
            f"rl_pass_rate must be (low, high) with 0 <= low < high <= 1, got {rl_pass_rate}"
        )
    rows = [dict(dataset[i]) for i in range(len(dataset))]
    if not rows:
        raise ValueError("the prompt dataset is empty")
    for i, row in enumerate(rows):
        if prompt_key not in row:
            raise KeyError(f"row {i} has no {prompt_key!r} field (fields: {sorted(row)})")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "model": model_name,
        "data_sha256": _fingerprint(rows),
        "n": n,
        "batch_size": batch_size,
        "sampling": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(sampling).items()
        },
        "rewards": reward.weights,
    }
    _check_manifest(out / "manifest.json", manifest)

    records = _finished_records(out / "samples.jsonl", len(rows), batch_size)
    chunks = range(len(records) // batch_size * batch_size, len(rows), batch_size)
    bar = tqdm(
        total=len(rows),
        initial=len(records),
        desc="rejection sampling",
        unit="prompt",
        disable=not progress,
    )
    rates = [r for rec in records if (r := _pass_rate(rec, keep)) is not None]
    with open(out / "samples.jsonl", "a", encoding="utf-8") as f:
        for start in chunks:
            chunk = rows[start : start + batch_size]
            new = _sample_chunk(generator, reward, chunk, start, n, sampling, prompt_key)
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new))
            f.flush()
            os.fsync(f.fileno())
            records += new
            rates += [r for rec in new if (r := _pass_rate(rec, keep)) is not None]
            bar.update(len(chunk))
            bar.set_postfix(mean_pass_rate=f"{sum(rates) / max(len(rates), 1):.2f}")
    bar.close()
    return _select_and_write(out, records, keep, rl_pass_rate, prompt_key)


def _sample_chunk(
    generator,
    reward: CombinedReward,
    rows: list[dict],
    start: int,
    n: int,
    sampling: SamplingConfig,
    prompt_key: str,
) -> list[dict]:
    prompts = [r[prompt_key] for r in rows]
    assert sampling.seed is not None
    rollouts = generator.generate(prompts, n, replace(sampling, seed=sampling.seed + start * n))
    scores = reward.breakdown(**reward_inputs(rollouts, prompts, rows, prompt_key))
    records = []
    for p, row in enumerate(rows):
        samples = []
        for k in range(p * n, (p + 1) * n):
            ro = rollouts[k]
            samples.append(
                {
                    "text": ro.text,
                    "n_tokens": len(ro.completion_ids),
                    "truncated": ro.truncated,
                    "total": scores.total[k].value,
                    "components": {name: rs[k].value for name, rs in scores.components.items()},
                    "reasons": {name: rs[k].reason for name, rs in scores.components.items()},
                    "statuses": {name: rs[k].status for name, rs in scores.components.items()},
                }
            )
        records.append({"index": start + p, "row": row, "samples": samples})
    return records


def _select_and_write(
    out: Path, records: list[dict], keep: KeepRule, rl_pass_rate, prompt_key: str
) -> SampleResult:
    counts: Counter[str] = Counter({"kept": 0, **dict.fromkeys(REASONS, 0)})
    sft_rows, pass_rows, pass_rates = [], [], []
    for rec in records:
        samples = [Sample(**s) for s in rec["samples"]]
        decisions = select(samples, keep)
        rate = _pass_rate(rec, keep)
        pass_rates.append(rate)
        kept = 0
        for s, why in zip(samples, decisions, strict=True):
            counts[why or "kept"] += 1
            if why is None:
                kept += 1
                sft_rows.append(_sft_row(rec["row"][prompt_key], s, rec["index"]))
        pass_rows.append(
            {"index": rec["index"], "pass_rate": rate, "n": len(samples), "kept": kept}
        )
    _write_jsonl(out / "sft.jsonl", sft_rows)
    _write_jsonl(out / "pass_rates.jsonl", pass_rows)
    rl_path = None
    if rl_pass_rate is not None:
        low, high = rl_pass_rate
        rl_path = out / "rl_prompts.jsonl"
        _write_jsonl(
            rl_path,
            [
                rec["row"]
                for rec, r in zip(records, pass_rates, strict=True)
                if r is not None and low < r < high
            ],
        )
    (out / "summary.json").write_text(
        json.dumps(
            {
                "counts": dict(counts),
                "prompts": len(records),
                "keep_rule": keep.model_dump(),
                "rl_pass_rate": rl_pass_rate,
            },
            indent=1,
        )
    )
    if not sft_rows:
        raise NothingKeptError(_nothing_kept_message(counts, pass_rates, out))
    return SampleResult(
        out, out / "sft.jsonl", out / "pass_rates.jsonl", rl_path, pass_rates, dict(counts)
    )


def _sft_row(prompt: Any, s: Sample, index: int) -> dict:
    completion = s.text if isinstance(prompt, str) else [{"role": "assistant", "content": s.text}]
    return {"prompt": prompt, "completion": completion, "source_index": index, "reward": s.total}


def _pass_rate(record: dict, keep: KeepRule) -> float | None:
    """Correct / scorable samples, as evaluation's accuracy: unscorable samples are left out;
    None if none is scorable (e.g. no gold answer, or no verifier applies): not "never solved"."""
    verdicts = [v for s in record["samples"] if (v := is_correct(Sample(**s), keep)) is not None]
    return sum(verdicts) / len(verdicts) if verdicts else None


def _nothing_kept_message(counts: Counter, pass_rates: list[float | None], out: Path) -> str:
    scored = [r for r in pass_rates if r is not None]
    dropped = ", ".join(f"{k}: {v}" for k, v in counts.items() if k != "kept" and v)
    rates = ", ".join("n/a" if r is None else f"{r:.2f}" for r in pass_rates[:10])
    mean = f"{sum(scored) / len(scored):.3f}" if scored else "n/a (nothing scorable)"
    return (
        f"rejection sampling kept NO rows out of {sum(counts.values())} samples ({dropped}). "
        f"Mean pass rate {mean}; prompts never solved: "
        f"{sum(r == 0 for r in scored)}/{len(pass_rates)}; first pass rates: [{rates}]. "
        f"The samples are in {out / 'samples.jsonl'}: loosen the keep rule "
        "(it is re-applied without sampling again) or sample more (n, max_tokens)."
    )


def _fingerprint(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def _check_manifest(path: Path, manifest: dict) -> None:
    manifest = json.loads(json.dumps(manifest))  # normalise tuples etc. as they are stored
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
        if diff:
            raise OtherSamplesError(
                f"{path.parent} holds samples made with other settings ({', '.join(diff)} differ: "
                f"{ {k: old.get(k) for k in diff} } vs { {k: manifest.get(k) for k in diff} }); "
                "use a new output folder, or delete this one to start over"
            )
    else:
        path.write_text(json.dumps(manifest, indent=1))


def _finished_records(path: Path, n_rows: int, batch_size: int) -> list[dict]:
    """Records of the chunks finished before an interruption; the file is cut back to them."""
    if not path.exists():
        return []
    records, lines = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            lines += 1
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by the interruption
                break
    done = len(records) if len(records) == n_rows else len(records) // batch_size * batch_size
    records = records[:done]
    if [r["index"] for r in records] != list(range(done)):
        raise ValueError(f"{path} is not a sample file of this run (prompt indices out of order)")
    if done != lines:  # drop the unfinished chunk's lines
        _write_jsonl(path, records)
    return records
