"""Rejection sampling: the keep rule by hand, then end to end with a real HF generator and rewards."""

import json

import pytest
import torch

from grpo.pipeline import KeepRule, NothingKeptError, rejection_sample
from grpo.pipeline.keep import Sample, select
from grpo.rewards import FormatReward, MathReward
from grpo.rollout import HFGenerator, SamplingConfig

from conftest import CrashAfter


def _s(text="<think>a</think><answer>1</answer>", n_tokens=5, truncated=False, math=1.0, fmt=1.0):
    return Sample(text=text, n_tokens=n_tokens, truncated=truncated, total=None if math is None else math + fmt,
                  components={"math_reward": math, "format_reward": fmt})


def test_keep_rule_reasons_by_hand():
    samples = [
        _s(),                                   # kept
        _s(truncated=True),                     # truncated (before correctness)
        _s(text="b", math=0.0),                 # incorrect
        _s(text="c", math=None),                # unscorable verifier: not correct
        _s(text="d", n_tokens=1),               # too short (min_tokens=2)
        _s(text="e", n_tokens=50),              # too long (max_tokens=20)
        _s(text=" <think>a</think><answer>1</answer>\n"),  # duplicate of the first after whitespace folding
        _s(text="f"),                           # kept (second)
        _s(text="g"),                           # over the limit of 2 per prompt
    ]
    rule = KeepRule(min_tokens=2, max_tokens=20, max_per_prompt=2)
    assert select(samples, rule) == [None, "truncated", "incorrect", "incorrect", "too_short", "too_long",
                                     "duplicate", None, "over_limit"]
    # only the math verifier, with a reward threshold instead of format
    assert select([_s(fmt=0.0), _s(text="x", math=0.0, fmt=1.0)], KeepRule(verifiers=["math_reward"])) == \
        [None, "incorrect"]
    assert select([_s(math=0.5, fmt=0.5), _s(text="y", math=0.5, fmt=0.4)], KeepRule(verifiers=[], min_reward=1.0)) \
        == [None, "incorrect"]
    # truncated samples may be kept on request; dedup may be switched off
    assert select([_s(truncated=True), _s(truncated=True)], KeepRule(drop_truncated=False, dedup=False)) == [None, None]


def test_language_filter():
    rule = KeepRule(language="en", min_language_share=0.9)
    mixed = _s(text="<think>We add 2 and 2, 得到 4</think><answer>4</answer>")  # 3 Latin words of 5: 0.6
    english = _s(text="<think>We add two and two</think><answer>4</answer>")
    symbols = _s(text="<think>2+2=4</think><answer>4</answer>")  # no words: nothing to mix, kept
    assert select([mixed, english, symbols], rule) == ["language", None, None]
    assert select([mixed], KeepRule(language="en", min_language_share=0.5)) == [None]
    with pytest.raises(ValueError, match="unknown target language"):
        KeepRule(language="klingon")
    with pytest.raises(ValueError, match="max_tokens=2 < min_tokens=3"):
        KeepRule(min_tokens=3, max_tokens=2)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A tiny model after a short SFT on the sloppy teacher: it writes <think>..</think><answer>..</answer>."""
    from grpo.pipeline import sft
    from grpo.recipes.tiny_task import make_problems, teacher_rows
    from grpo.tiny import build_char_tokenizer, build_tiny_llama

    torch.manual_seed(0)
    tok = build_char_tokenizer()
    model = build_tiny_llama(tok, hidden_size=64, num_heads=2, head_dim=32)
    sft(model, teacher_rows(make_problems(), 32 * 100, think_p=0.8), tmp_path_factory.mktemp("warm"), tokenizer=tok,
        save=False, per_device_train_batch_size=32, num_train_epochs=1, learning_rate=1e-2, warmup_steps=10,
        disable_tqdm=True, gradient_checkpointing=False)
    return model, tok, make_problems(size=12, seed=1)


def _run(gen, rows, out, **kw):
    return rejection_sample(gen, rows, [MathReward(parallel=False), FormatReward()], output_dir=out, n=4,
                            sampling=SamplingConfig(temperature=1.0, max_tokens=24), batch_size=4, seed=3,
                            progress=False, **kw)


def test_end_to_end_rows_pass_rates_and_rl_prompts(warm, tmp_path):
    model, tok, rows = warm
    res = _run(HFGenerator(model, tok), rows, tmp_path / "a", keep=KeepRule(verifiers=["format_reward"]),
               rl_pass_rate=(0.2, 0.8))
    records = [json.loads(line) for line in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(12)) and all(len(r["samples"]) == 4 for r in records)
    # pass rate = share of samples whose format verifier passed and that were not truncated
    for rec, rate in zip(records, res.pass_rates):
        ok = [s["components"]["format_reward"] == 1.0 and not s["truncated"] for s in rec["samples"]]
        assert rate == sum(ok) / 4
    assert 0 < res.counts["kept"] < 48 and sum(res.counts.values()) == 48
    ds = res.dataset
    assert len(ds) == res.counts["kept"] and set(ds.column_names) >= {"prompt", "completion"}
    row = ds[0]
    assert row["prompt"] == rows[row["source_index"]]["prompt"]
    assert row["completion"][0]["role"] == "assistant"
    assert row["completion"][0]["content"].startswith("<think>")  # the trace is kept
    rl = [json.loads(line) for line in res.rl_prompts_path.read_text().splitlines()]
    assert rl == [r for r, p in zip(rows, res.pass_rates) if 0.2 < p < 0.8] and 0 < len(rl) < 12


def test_resumed_run_equals_uninterrupted_run(warm, tmp_path):
    model, tok, rows = warm
    _run(HFGenerator(model, tok), rows, tmp_path / "full")
    crashing = CrashAfter(HFGenerator(model, tok), k=1)
    with pytest.raises(KeyboardInterrupt):
        _run(crashing, rows, tmp_path / "resumed")
    with open(tmp_path / "resumed" / "samples.jsonl", "a") as f:
        f.write('{"index": 4, "row": {"prom')  # a line cut by the interruption
    resuming = CrashAfter(HFGenerator(model, tok), k=99)
    _run(resuming, rows, tmp_path / "resumed")
    assert resuming.calls == 2  # 3 chunks of 4 prompts; the first was not redone
    for name in ("samples.jsonl", "sft.jsonl", "pass_rates.jsonl", "summary.json"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    # other sampling settings in the same folder: refused, not mixed in
    with pytest.raises(ValueError, match="other settings.*n"):
        rejection_sample(HFGenerator(model, tok), rows, [FormatReward()], output_dir=tmp_path / "full", n=2,
                         batch_size=4, seed=3, progress=False)


def test_nothing_kept_is_loud_and_refiltering_needs_no_generation(warm, tmp_path):
    model, tok, rows = warm
    gen = HFGenerator(model, tok)
    with pytest.raises(NothingKeptError, match=r"kept NO rows out of 48 samples \(truncated: \d+, "
                       r"incorrect: \d+\)\. Mean pass rate 0.000; prompts never solved: 12/12; first pass rates"):
        rejection_sample(gen, rows, [MathReward(parallel=False)], output_dir=tmp_path, n=4, progress=False,
                         sampling=SamplingConfig(max_tokens=3), batch_size=4)
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 12
    gen.close()  # a closed generator raises if asked to generate: the stored samples must suffice
    res = rejection_sample(gen, rows, [MathReward(parallel=False)], output_dir=tmp_path, n=4, progress=False,
                           sampling=SamplingConfig(max_tokens=3), batch_size=4,
                           keep=KeepRule(verifiers=[], drop_truncated=False))
    assert res.counts["kept"] > 0


def test_bad_inputs(warm, tmp_path):
    model, tok, rows = warm
    gen = HFGenerator(model, tok)
    with pytest.raises(ValueError, match=r"verifiers \['math'\] are not among the rewards \['format_reward'\]"):
        rejection_sample(gen, rows, [FormatReward()], output_dir=tmp_path, keep=KeepRule(verifiers=["math"]))
    with pytest.raises(KeyError, match="row 0 has no 'prompt'"):
        rejection_sample(gen, [{"question": "1+1"}], [FormatReward()], output_dir=tmp_path)
