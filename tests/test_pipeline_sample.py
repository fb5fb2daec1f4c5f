"""Rejection sampling: the keep rule by hand, then end to end with a real HF generator and rewards."""

import json

import pytest
import torch

from grpo.pipeline import KeepRule, NothingKeptError, rejection_sample
from grpo.pipeline.keep import Sample, is_correct, select
from grpo.pipeline.sample import read_jsonl
from grpo.rewards import FormatReward, MathReward
from grpo.rollout import HFGenerator, SamplingConfig

from conftest import CrashAfter


def _s(text="<think>a</think><answer>1</answer>", n_tokens=5, truncated=False, math=1.0, fmt=1.0,
       math_status=None):
    status = math_status or ("ok" if math is not None else "unscorable")
    applies = status != "n/a"
    total = (fmt if not applies else None) if math is None else math + fmt
    return Sample(text=text, n_tokens=n_tokens, truncated=truncated, total=total,
                  components={"math_reward": math, "format_reward": fmt},
                  statuses={"math_reward": status, "format_reward": "ok"})


def test_keep_rule_reasons_by_hand():
    samples = [
        _s(),                                   # kept
        _s(truncated=True),                     # truncated (before correctness)
        _s(text="b", math=0.0),                 # incorrect
        _s(text="c", math=None),                # unscorable verifier: neither correct nor incorrect
        _s(text="c2", math=None, math_status="n/a"),  # trl's None: the math verifier does not apply
        _s(text="d", n_tokens=1),               # too short (min_tokens=2)
        _s(text="e", n_tokens=50),              # too long (max_tokens=20)
        _s(text=" <think>a</think><answer>1</answer>\n"),  # duplicate of the first after whitespace folding
        _s(text="f"),                           # kept (second)
        _s(text="g"),                           # over the limit of 2 per prompt
    ]
    rule = KeepRule(min_tokens=2, max_tokens=20, max_per_prompt=3)
    assert select(samples, rule) == [None, "truncated", "incorrect", "unscorable", None, "too_short", "too_long",
                                     "duplicate", None, "over_limit"]
    assert [is_correct(s, rule) for s in samples[:5]] == [True, False, False, None, True]
    # a wrong verifier decides even when another could not score; no applicable verifier: unscorable
    assert is_correct(_s(math=None, fmt=0.0), rule) is False
    assert is_correct(_s(math=None, math_status="n/a"), KeepRule(verifiers=["math_reward"])) is None
    assert is_correct(_s(math=None, math_status="n/a", truncated=True), KeepRule(verifiers=["math_reward"])) is None
    # samples stored without statuses (older runs): no value reads as unscorable
    old = Sample(text="o", n_tokens=3, truncated=False, total=None, components={"math_reward": None})
    assert is_correct(old, KeepRule()) is None
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


# ------------------------------------------------------------------ the reward call and n/a verifiers


class ScriptedGenerator:
    """Fixed completions: ``texts[user text][k]`` for sample k; two token ids per character, so that a
    reward can only count tokens from ``completion_ids``; ``truncated`` where the text ends in "..."."""

    def __init__(self, texts):
        self.texts = texts

    def generate(self, prompts, n, sampling):
        from grpo.rollout import Rollout

        out = []
        for p, prompt in enumerate(prompts):
            key = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            for k, text in enumerate(self.texts[key][:n]):
                ids = list(range(2 * len(text)))
                out.append(Rollout(prompt_ids=[0], completion_ids=ids, logprobs=[0.0] * len(ids), text=text,
                                   finish_reason="length" if text.endswith("...") else "stop",
                                   prompt_index=p, sample_index=k))
        return out


def _chat(text):
    return [{"role": "user", "content": text}]


def test_trl_accuracy_reward_on_chat_prompts_is_called_as_the_trainer_calls_it(tmp_path):
    """trl's accuracy_reward reads ``completion[0]["content"]``: with plain strings it raised on every
    sample and rejection sampling kept nothing (issue #23)."""
    from trl.rewards import accuracy_reward

    rows = [{"prompt": _chat("1+1=?"), "solution": "$2$"}, {"prompt": _chat("2+5=?"), "solution": "$7$"}]
    gen = ScriptedGenerator({"1+1=?": [r"so \boxed{2}", r"so \boxed{3}", r"so \boxed{2}!"],
                             "2+5=?": [r"so \boxed{6}", r"so \boxed{7}", r"so \boxed{8}"]})
    res = rejection_sample(gen, rows, [accuracy_reward], output_dir=tmp_path, n=3, batch_size=2,
                           progress=False)
    assert res.pass_rates == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
    assert res.counts["kept"] == 3 and res.counts["incorrect"] == 3 and res.counts["unscorable"] == 0
    assert [(r["source_index"], r["completion"]) for r in res.dataset] == [
        (0, [{"role": "assistant", "content": r"so \boxed{2}"}]),
        (0, [{"role": "assistant", "content": r"so \boxed{2}!"}]),
        (1, [{"role": "assistant", "content": r"so \boxed{7}"}]),
    ]


def test_length_rewards_get_completion_ids_and_truncated(tmp_path):
    """OverlongPenalty counts tokens from ``completion_ids`` (it has no tokenizer here) and reads
    ``truncated``; without them every sample was unscorable and dropped."""
    from grpo.rewards import OverlongPenalty

    gen = ScriptedGenerator({"q": ["abcd", "abcdefgh", "abcdefghij", "ab..."]})
    penalty = OverlongPenalty(max_length=20, cache_length=10)  # 2 tokens per character
    res = rejection_sample(gen, [{"prompt": "q"}], [penalty], output_dir=tmp_path, n=4, progress=False,
                           keep=KeepRule(verifiers=[], min_reward=-0.5, drop_truncated=False))
    samples = read_jsonl(tmp_path / "samples.jsonl")[0]["samples"]
    assert [s["components"]["overlong_penalty"] for s in samples] == [0.0, -0.6, -1.0, -1.0]
    assert [s["statuses"]["overlong_penalty"] for s in samples] == ["ok"] * 4
    assert [r["completion"] for r in res.dataset] == ["abcd"] and res.pass_rates == [0.25]


def test_verifiers_that_do_not_apply_are_skipped_and_pass_rates_count_scorable_samples(tmp_path):
    """Two tasks, each with a verifier that returns trl's None off its task: every sample passed the
    verifier that applied to it, so rows are kept (was: "kept NO rows ... pass rates [0.00, 0.00]")."""

    def math_check(completions, task, answer, **kw):
        return [None if t != "math" else float(c.strip() == a) for c, t, a in zip(completions, task, answer)]

    def echo_check(completions, task, answer, **kw):  # None on "?" too: that sample has no verifier
        return [None if t != "echo" else None if c == "?" else float(c == a)
                for c, t, a in zip(completions, task, answer)]

    rows = [{"prompt": "1+1", "task": "math", "answer": "2"}, {"prompt": "say hi", "task": "echo", "answer": "hi"},
            {"prompt": "draw", "task": "art", "answer": ""}]
    gen = ScriptedGenerator({"1+1": ["2", "2 ", "3", "2"], "say hi": ["hi", "hi!", "?", "hi"],
                             "draw": ["a", "b", "c", "d"]})
    res = rejection_sample(gen, rows, [math_check, echo_check],
                           output_dir=tmp_path, n=4, progress=False, keep=KeepRule(dedup=False))
    assert res.pass_rates == [0.75, pytest.approx(2 / 3), None]  # "?" and art: no verifier applies
    assert [r["completion"] for r in res.dataset] == ["2", "2 ", "2", "hi", "hi"]
    assert res.counts == {"kept": 5, "truncated": 0, "incorrect": 2, "unscorable": 5, "language": 0,
                          "too_short": 0, "too_long": 0, "duplicate": 0, "over_limit": 0}
    stored = read_jsonl(tmp_path / "samples.jsonl")
    assert stored[0]["samples"][0]["statuses"] == {"math_check": "ok", "echo_check": "n/a"}
    assert stored[1]["samples"][2]["statuses"] == {"math_check": "n/a", "echo_check": "n/a"}
