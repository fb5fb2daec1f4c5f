"""grpo.evaluation: the pass@k estimator (by hand, by brute force, at large n) and evaluate()'s
greedy / mean@k / pass@k / per-column numbers worked out by hand.

evaluate() is fed by a scripted generator (fixed completions per prompt) so that every expected
number can be written down; the rewards are the real MathReward and FormatReward. That the CLI's
evaluation of a checkpoint reproduces the trainer's is tested in tests/test_cli.py with a real model.
"""

import itertools
import math
from fractions import Fraction

import pytest

from grpo.evaluation import (
    R1_EVAL_SAMPLES,
    AnswerVoter,
    consensus_score,
    eval_sampling,
    evaluate,
    majority_vote,
    pass_at_k,
    r1_eval_sampling,
)
from grpo.rewards import CombinedReward, FormatReward, MathReward, Reward
from grpo.rollout import Rollout, SamplingConfig

# ------------------------------------------------------------------------------ pass@k


def test_pass_at_k_by_hand():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)
    # k=1 is the fraction correct: 3/10
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)
    # n=6, c=1, k=3: 1 - C(5,3)/C(6,3) = 1 - 10/20 = 0.5
    assert pass_at_k(6, 1, 3) == pytest.approx(0.5, abs=1e-15)
    # no correct sample: 0; fewer wrong samples than k: every k-subset holds a correct one
    assert pass_at_k(8, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0 and pass_at_k(5, 3, 3) == 1.0


def test_pass_at_k_equals_brute_force_enumeration():
    """The probability that a uniformly random k-subset of the n samples holds a correct one,
    counted over every subset."""
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                hits = sum(any(samples[i] for i in s) for s in subsets)
                assert pass_at_k(n, c, k) == pytest.approx(hits / len(subsets), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_binomials_overflow_floats():
    # C(2000, 1000) ~ 2e600 is far beyond float range; compare with exact rational arithmetic
    n, c, k = 2000, 7, 1000
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# ------------------------------------------------------------------------------ evaluate()


class ScriptedGenerator:
    """Returns fixed texts: greedy[p] for n=1 at temperature 0, sampled[p][s] otherwise."""

    def __init__(self, greedy: dict[str, str], sampled: dict[str, list[str]]):
        self.greedy, self.sampled = greedy, sampled
        self.calls: list[tuple[int, float]] = []

    def generate(self, prompts, n, sampling):
        self.calls.append((n, sampling.temperature))
        out = []
        for p, prompt in enumerate(prompts):
            texts = [self.greedy[prompt]] if sampling.temperature == 0 else self.sampled[prompt][:n]
            for s, text in enumerate(texts):
                ids = list(range(len(text)))  # one "token" per character
                out.append(Rollout(prompt_ids=[0], completion_ids=ids, logprobs=[0.0] * len(ids), text=text,
                                   finish_reason="stop", prompt_index=p, sample_index=s))
        return out


def ok(answer: str) -> str:
    return f"<think>x</think><answer>{answer}</answer>"


ROWS = [
    {"prompt": "1+1=?", "answer": "2", "difficulty": "easy"},
    {"prompt": "2+5=?", "answer": "7", "difficulty": "hard"},
    {"prompt": "3+3=?", "answer": "6", "difficulty": "hard"},
]
GEN = ScriptedGenerator(
    greedy={"1+1=?": ok("2"), "2+5=?": "7", "3+3=?": ok("5")},
    sampled={"1+1=?": [ok("2"), ok("2"), ok("3"), "2"],        # 2 correct of 4 ("2" untagged: no answer)
             "2+5=?": [ok("7"), ok("1"), ok("1"), ok("1")],    # 1 correct
             "3+3=?": [ok("1"), ok("1"), ok("1"), ok("1")]})   # 0 correct


def run_eval(**kw):
    reward = CombinedReward([MathReward(parallel=False), FormatReward()], missing="propagate")
    return evaluate(GEN, ROWS, reward, accuracy="math_reward", format_name="format_reward", k=4,
                    sampling=SamplingConfig(temperature=1.0, max_tokens=8, seed=3), **kw)


def test_evaluate_greedy_mean_and_pass_at_k_by_hand():
    out = run_eval(pass_ks=[1, 2, 4], by=["difficulty"])
    # greedy: prompt 0 right (tagged); prompt 1 "7" has no <answer> -> 0; prompt 2 wrong -> 1/3
    assert out["eval/greedy_accuracy"] == pytest.approx(1 / 3)
    assert out["eval/greedy_format_rate"] == pytest.approx(2 / 3)
    # mean@4: (2 + 1 + 0) / 12
    assert out["eval/mean@4_accuracy"] == pytest.approx(3 / 12)
    assert out["eval/mean@4_format_rate"] == pytest.approx(11 / 12)
    # pass@1 = mean of c/n = (2/4 + 1/4 + 0) / 3
    assert out["eval/pass@1"] == pytest.approx(1 / 4)
    # pass@2: prompt 0 (n=4, c=2): 1 - C(2,2)/C(4,2) = 5/6; prompt 1 (c=1): 1 - C(3,2)/C(4,2) = 1/2;
    # prompt 2: 0  -> (5/6 + 1/2 + 0) / 3 = 4/9
    assert out["eval/pass@2"] == pytest.approx(4 / 9)
    # pass@4: any correct among all 4: 1, 1, 0
    assert out["eval/pass@4"] == pytest.approx(2 / 3)
    # lengths in characters (the scripted "tokens"): len("<think>x</think><answer>2</answer>") = 34
    assert out["eval/greedy_length"] == pytest.approx((34 + 1 + 34) / 3)
    # breakdown: easy = prompt 0 only, hard = prompts 1 and 2
    assert out["eval/greedy_accuracy/difficulty=easy"] == 1.0
    assert out["eval/greedy_accuracy/difficulty=hard"] == 0.0
    assert out["eval/mean@4_accuracy/difficulty=easy"] == pytest.approx(2 / 4)
    assert out["eval/mean@4_accuracy/difficulty=hard"] == pytest.approx(1 / 8)
    assert out["eval/pass@2/difficulty=hard"] == pytest.approx(0.25)
    assert out["eval/pass@4/difficulty=easy"] == 1.0
    assert out["eval/num_prompts/difficulty=hard"] == 2.0
    # greedy asked for one sample at temperature 0, then k=4 at the given temperature
    assert GEN.calls[-2:] == [(1, 0.0), (4, 1.0)]


def test_evaluate_defaults_keep_the_trainers_keys_and_add_pass_and_cons_at_k():
    out = run_eval()
    assert set(out) == {"eval/greedy_accuracy", "eval/greedy_format_rate", "eval/greedy_length",
                        "eval/mean@4_accuracy", "eval/mean@4_format_rate", "eval/mean@4_length", "eval/pass@4",
                        "eval/cons@4"}
    # majority of 4: prompt 0 votes {2: 2, 3: 1} (untagged "2" does not vote) -> right; prompt 1
    # {7: 1, 1: 3} -> wrong; prompt 2 {1: 4} -> wrong
    assert out["eval/cons@4"] == pytest.approx(1 / 3)


class HalfUnscorable(Reward):
    """1.0 for a right <answer>, None (unscorable) for answers '1', else 0.0."""

    def score(self, completion, **example):
        got = completion.split("<answer>")[-1].split("</answer>")[0]
        return None if got == "1" else float(got == example["answer"])


def test_unscorable_samples_are_left_out_of_means_and_pass_at_k():
    reward = CombinedReward([HalfUnscorable()], missing="propagate")
    out = evaluate(GEN, ROWS, reward, accuracy="half_unscorable", format_name=None, k=4,
                   sampling=SamplingConfig(temperature=1.0), pass_ks=[2, 4])
    # scored samples: prompt 0 = [1, 1, 0, 1] (this reward reads the untagged "2" as 2);
    # prompt 1 = [1] (three None); prompt 2 = [] (all None)  -> mean over the 5 scored = 4/5
    assert out["eval/mean@4_accuracy"] == pytest.approx(4 / 5)
    # pass@2 over prompts with >= 2 scored: only prompt 0 (n=4, c=3) -> 1.0
    assert out["eval/pass@2"] == 1.0
    assert out["eval/pass@4"] == 1.0
    assert "eval/mean@4_format_rate" not in out


def test_evaluate_errors_name_the_culprit():
    with pytest.raises(KeyError, match="'source' is missing from eval row 0"):
        run_eval(by=["source"])
    with pytest.raises(ValueError, match="between 1 and k=4"):
        run_eval(pass_ks=[8])


def test_module_doctests():
    import doctest

    import grpo.evaluation

    assert doctest.testmod(grpo.evaluation).failed == 0


# ------------------------------------------------------------------------------ cons@k (majority vote)


def vote_eval(sampled: dict[str, list[str]], rows, k, **kw):
    gen = ScriptedGenerator(greedy={r["prompt"]: ok("0") for r in rows}, sampled=sampled)
    reward = CombinedReward([MathReward(parallel=False), FormatReward()], missing="propagate")
    return evaluate(gen, rows, reward, accuracy="math_reward", format_name="format_reward", k=k,
                    sampling=SamplingConfig(temperature=1.0, seed=3), **kw)


def test_majority_vote_groups_by_the_verifiers_equivalence_not_by_string():
    """Two right answers written alike against three wrong ones written three ways that
    math-verify finds equal: the majority is wrong although pass@5 is 1 and mean@5 is 2/5; and
    a right answer written two ways outvotes three different wrong ones although mean@5 < 1/2."""
    rows = [{"prompt": "a", "answer": "3"}, {"prompt": "b", "answer": "0.5"}]
    sampled = {"a": [ok("3"), ok("3"), ok("1/2"), ok("0.5"), ok(r"\frac{1}{2}")],
               "b": [ok("7"), ok("1/2"), ok(r"\dfrac{1}{2}"), ok("8"), ok("9")]}
    out = vote_eval(sampled, rows, 5, pass_ks=[1, 5], by=[])
    assert out["eval/mean@5_accuracy"] == pytest.approx((2 / 5 + 2 / 5) / 2)
    assert out["eval/pass@5"] == 1.0 and out["eval/pass@1"] == pytest.approx(2 / 5)
    assert out["eval/cons@5"] == pytest.approx(1 / 2)  # a: majority 1/2 (3 votes) wrong; b: right
    one = vote_eval({"a": sampled["a"]}, rows[:1], 5)
    assert one["eval/cons@5"] == 0.0 and one["eval/pass@5"] == 1.0
    one = vote_eval({"b": sampled["b"]}, rows[1:], 5)
    assert one["eval/cons@5"] == 1.0 and one["eval/mean@5_accuracy"] == pytest.approx(2 / 5)


def test_majority_vote_ties_go_to_the_answer_seen_first():
    rows = [{"prompt": "a", "answer": "4"}, {"prompt": "b", "answer": "4"}]
    sampled = {"a": [ok("4"), ok("5"), ok("5"), ok("4.0")],   # 2-2: "4" came first -> right
               "b": [ok("5"), ok("4"), ok("4"), ok("5")]}     # 2-2: "5" came first -> wrong
    out = vote_eval(sampled, rows, 4)
    assert out["eval/cons@4"] == pytest.approx(1 / 2)
    assert majority_vote(["5", "4", "4", "5"], str.__eq__) == [0, 3]
    assert majority_vote(["4", "5", "4.0", "5"], MathReward().same_answer) == [0, 2]


def test_unparseable_answers_do_not_vote():
    rows = [{"prompt": "a", "answer": "2"}, {"prompt": "b", "answer": "2"}, {"prompt": "c", "answer": "2"}]
    sampled = {"a": ["no answer", ok("???"), ok("???"), ok("2")],  # one vote: "2" -> right
               "b": ["no answer", ok("???"), "x", ok("3")],        # one vote: "3" -> wrong
               "c": ["no answer", ok("???"), ok("@"), ok("")]}     # no vote at all -> wrong (0.0)
    out = vote_eval(sampled, rows, 4, by=[])
    assert out["eval/cons@4"] == pytest.approx(1 / 3)
    voter = MathReward()
    assert voter.vote_answer(ok("???")) is None and voter.vote_answer("no answer") is None
    assert voter.vote_answer(ok(" 1 /  2 ")) == "1 / 2"


def test_cons_at_j_votes_in_blocks_of_j_and_per_column():
    rows = [{"prompt": "a", "answer": "1", "level": "x"}, {"prompt": "b", "answer": "1", "level": "y"}]
    sampled = {"a": [ok("1"), ok("1"), ok("2"), ok("2")],   # blocks [1, 1] right, [2, 2] wrong
               "b": [ok("2"), ok("1"), ok("1"), ok("1")]}   # [2, 1]: tie -> 2 wrong; [1, 1] right
    out = vote_eval(sampled, rows, 4, cons_ks=[1, 2, 4], by=["level"])
    assert out["eval/cons@2"] == pytest.approx(1 / 2)
    assert out["eval/cons@1"] == pytest.approx(out["eval/mean@4_accuracy"])  # one sample: itself
    assert out["eval/cons@4"] == 1.0  # a: 2-2 tie -> "1" came first, right; b: "1" 3-1, right
    assert out["eval/cons@4/level=y"] == 1.0 and out["eval/cons@2/level=x"] == pytest.approx(1 / 2)


def test_consensus_score_unscorable_and_empty():
    same = str.__eq__
    assert consensus_score(["1", "1", "2"], [None, 1.0, 0.0], same) == 1.0  # first scored member
    assert consensus_score([None, None], [0.0, 0.0], same) == 0.0          # nobody voted
    assert consensus_score([None, None], [None, None], same) is None       # nothing scorable
    assert consensus_score(["1", "2"], [None, 0.0], same) is None          # majority unscorable


def test_cons_is_absent_for_rewards_that_cannot_vote_and_refused_when_asked():
    reward = CombinedReward([HalfUnscorable()], missing="propagate")
    out = evaluate(GEN, ROWS, reward, accuracy="half_unscorable", format_name=None, k=4,
                   sampling=SamplingConfig(temperature=1.0))
    assert not any(key.startswith("eval/cons@") for key in out)
    with pytest.raises(ValueError, match="'half_unscorable' cannot"):
        evaluate(GEN, ROWS, reward, accuracy="half_unscorable", format_name=None, k=4,
                 sampling=SamplingConfig(temperature=1.0), cons_ks=[4])
    with pytest.raises(ValueError, match="cons_ks=\\[5\\]: each must be between 1 and k=4"):
        run_eval(cons_ks=[5])
    assert isinstance(MathReward(), AnswerVoter) and not isinstance(HalfUnscorable(), AnswerVoter)


def test_r1_eval_sampling_preset():
    base = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=64, stop=["</answer>"])
    r1 = r1_eval_sampling(base, seed=1)
    assert (r1.temperature, r1.top_p, r1.max_tokens, r1.stop) == (0.6, 0.95, 64, base.stop)
    assert r1.seed == eval_sampling(base, 1).seed and R1_EVAL_SAMPLES == 64


def test_grpo_eval_reports_cons_at_k_on_the_tiny_model(tmp_path, monkeypatch, capsys):
    """End to end: ``grpo eval --cons-k 2 4 --preset r1`` on the tiny model reports cons@2 and
    cons@4, samples at R1's settings, and refuses impossible --cons-k values before generating."""
    import json
    import textwrap

    import grpo.evaluation
    from grpo import cli

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        model: tiny
        tiny: {{warmup_steps: 0}}
        dataset: {{name: tiny_arithmetic, split: train, limit: 4}}
        eval_dataset: {{name: tiny_arithmetic, split: test, limit: 3}}
        rewards: [{{name: math}}, {{name: format, weight: 0.1}}]
        trainer: {{output_dir: {tmp_path / "run"}, sampling: {{max_tokens: 8}}, eval: {{samples: 4}}}}
        """))
    seen = []
    real = grpo.evaluation.evaluate

    def spy(*args, **kw):
        seen.append(kw["sampling"])
        return real(*args, **kw)

    monkeypatch.setattr(grpo.evaluation, "evaluate", spy)
    dump = tmp_path / "out.json"
    assert cli.main(["eval", str(recipe), "--cons-k", "2", "4", "--preset", "r1", "--output", str(dump)]) == 0
    got = json.loads(dump.read_text())
    assert {"eval/cons@2", "eval/cons@4", "eval/pass@4", "eval/mean@4_accuracy"} <= set(got)
    assert all(0.0 <= got[key] <= 1.0 for key in ("eval/cons@2", "eval/cons@4"))
    assert (seen[0].temperature, seen[0].top_p) == (0.6, 0.95)
    capsys.readouterr()
    assert cli.main(["eval", str(recipe), "--cons-k", "8"]) == 2
    assert "--cons-k 8: cons@K needs 1 <= K <= trainer.eval.samples=4" in capsys.readouterr().err
