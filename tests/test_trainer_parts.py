"""The trainer's parts on their own: config validation, sampler, batch layout, text stats, report."""

import json
from dataclasses import dataclass

import pytest
import torch

from grpo.config import FlatConfigWarning, GRPOConfig
from grpo.data import PromptSampler, reward_columns
from grpo.batch import collate_rollouts
from grpo.policy import completion_logprobs
from grpo.textstats import has_reflection, is_language_mixed


# ------------------------------------------------------------------------------ config
def test_config_defaults_follow_r1():
    cfg = GRPOConfig()
    assert (cfg.rollout.num_generations, cfg.loss.beta, cfg.sampling.temperature) == (16, 0.001, 1.0)
    d = cfg.derived()
    assert d.completions_per_step == 8 * 16 and d.optimizer_steps_per_step == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(rollout=dict(prompts_per_step=3, num_generations=4), optim=dict(minibatch_size=5)),
     "must divide rollout.prompts_per_step x rollout.num_generations"),
    (dict(rollout=dict(advantage_estimator="grpo_std")), "choose one of .*'dr_grpo'"),
    (dict(rollout=dict(num_generations=1)), "num_generations"),
    (dict(loss=dict(beta=-0.1)), "beta"),
    (dict(rollout=dict(dynamic_sampling_max_rounds=0)), "dynamic_sampling_max_rounds"),
    (dict(rollout=dict(backend="sglang")), "backend"),
    (dict(sampling=dict(temperature=0.0)), "temperature > 0"),  # greedy is for evaluation
    (dict(sampling=dict(seed=3)), "set seed instead"),  # the trainer seeds each step
    (dict(lerning_rate=1e-5), "lerning_rate"),  # typos are caught, not ignored
    (dict(optim=dict(lerning_rate=1e-5)), "lerning_rate"),
    (dict(sampling=dict(temprature=0.5)), "temprature"),
    (dict(beta=0.0, loss=dict(beta=0.1)), "both given"),  # a flat key and its section's key
])
def test_config_errors_say_what_to_change(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**kwargs)


def test_config_yaml_round_trip_and_overrides(tmp_path):
    cfg = GRPOConfig(rollout=dict(num_generations=4, prompts_per_step=2), sampling=dict(stop=["</answer>"]),
                     **{"async": dict(timeout=5)})
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert "async:" in path.read_text() and "async_" not in path.read_text()  # keyed as written
    assert GRPOConfig.from_yaml(path) == cfg
    back = GRPOConfig.from_yaml(path, ["loss.beta=0", "loss.eps_high=0.28", "log.report_to=[tensorboard]"])
    want = cfg.to_dict()
    want["loss"].update(beta=0.0, eps_high=0.28)
    want["log"]["report_to"] = ["tensorboard"]
    assert back.to_dict() == want
    with pytest.warns(FlatConfigWarning):  # grpo 0.1's flat override still works
        assert GRPOConfig.from_yaml(path, ["beta=0"]).loss.beta == 0.0
    with pytest.raises(ValueError, match="key=value"):
        GRPOConfig.from_yaml(path, ["loss.beta"])


def test_derived_counts():
    d = GRPOConfig(rollout=dict(prompts_per_step=4, num_generations=4), optim=dict(minibatch_size=8, num_iterations=2),
                   forward=dict(micro_batch_size=2)).derived()
    # 16 completions / 8 per minibatch = 2 minibatches, x mu=2 passes = 4 optimizer steps
    assert (d.minibatches_per_step, d.optimizer_steps_per_step, d.micro_batches_per_minibatch) == (2, 4, 4)


# ------------------------------------------------------------------------------ data
def test_sampler_covers_each_epoch_and_resumes():
    s = PromptSampler(5, seed=3)
    first = s.take(5)
    assert sorted(first) == list(range(5))
    second = s.take(3) + s.take(2)
    assert sorted(second) == list(range(5)) and second != first  # a new permutation each epoch
    s2 = PromptSampler(5, seed=3)
    s2.take(7)
    state = s2.state_dict()
    s3 = PromptSampler(5, seed=3)
    s3.load_state_dict(state)
    assert s3.take(6) == s2.take(6)
    with pytest.raises(ValueError, match="n=5"):
        PromptSampler(6, seed=3).load_state_dict(state)


def test_reward_columns_repeat_per_completion():
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]
    assert reward_columns(rows, 3) == {"answer": ["1", "1", "1", "2", "2", "2"]}


# ------------------------------------------------------------------------------ batch layout
@dataclass
class _R:  # the fields of grpo.rollout.Rollout that collation reads
    prompt_ids: list
    completion_ids: list
    logprobs: list
    prompt_index: int = 0
    sample_index: int = 0
    group_id: int | None = None
    policy_version: int = 0


def test_collate_layout_by_hand():
    rs = [_R([5, 6], [7, 8, 9], [-1.0, -2.0, -3.0]), _R([4, 5, 6], [1], [-0.5])]
    b = collate_rollouts(rs, torch.tensor([1.0, -1.0]), pad_id=0)
    assert b.prompt_len == 3
    assert b.input_ids.tolist() == [[0, 5, 6, 7, 8, 9], [4, 5, 6, 1, 0, 0]]
    assert b.attention_mask.tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert b.completion_mask.tolist() == [[True, True, True], [True, False, False]]
    assert b.rollout_logp.tolist() == [[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0]]
    sub = b.select(slice(1, 2))  # trimmed to its own width
    assert sub.input_ids.tolist() == [[4, 5, 6, 1]] and sub.prompt_len == 3


@pytest.mark.parametrize("padding_free", [True, False])
def test_completion_logprobs_match_unpadded_forward(padding_free):
    """Left padding + right padding give the same log-probs as each sequence alone (packed or padded)."""
    from grpo.tiny import build_tiny_llama

    torch.manual_seed(0)
    model = build_tiny_llama(hidden_size=64, num_heads=2, head_dim=32).eval()
    rs = [_R([11, 12], [13, 14, 15], [0.0] * 3), _R([21, 22, 23, 24], [25], [0.0])]
    b = collate_rollouts(rs, None, pad_id=0)
    with torch.no_grad():
        got = completion_logprobs(model, b, temperature=0.8, padding_free=padding_free).logp
        for i, r in enumerate(rs):
            ids = torch.tensor([r.prompt_ids + r.completion_ids])
            logits = model(ids).logits[0, len(r.prompt_ids) - 1:-1] / 0.8
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.completion_ids)[:, None]).squeeze(-1)
            torch.testing.assert_close(got[i, :len(r.completion_ids)], want, atol=1e-5, rtol=1e-5)


def _grouped_rollouts(prompt_lens, g, seed=1):
    gen = torch.Generator().manual_seed(seed)
    rs = []
    for n_p in prompt_lens:
        prompt = torch.randint(3, 90, (n_p,), generator=gen).tolist()
        for _ in range(g):
            n_c = int(torch.randint(1, 8, (1,), generator=gen))
            rs.append(_R(prompt, torch.randint(3, 90, (n_c,), generator=gen).tolist(), [0.0] * n_c))
    return rs


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_forward_matches_the_one_pass_forward(lora):
    """Each distinct prompt once + its cache indexed out to its rows gives the one-pass forward's
    log-probs, entropies and parameter gradients (float rounding apart), and really runs the
    prompts once: the decoder's first call sees 3 rows, not 12."""
    from grpo.tiny import build_tiny_llama

    torch.manual_seed(0)
    model = build_tiny_llama(hidden_size=64, num_heads=2, head_dim=32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    b = collate_rollouts(_grouped_rollouts([5, 9, 3], g=4), None, pad_id=0)
    decoder = (model.get_base_model() if lora else model).model
    seen = []
    hook = decoder.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["input_ids"].shape)),
                                             with_kwargs=True)
    out = {}
    for share in (False, True):
        seen.clear()
        model.zero_grad()
        lp = completion_logprobs(model, b, temperature=0.9, with_entropy=True, share_prompts=share,
                                 padding_free=False)
        (lp.logp * b.completion_mask).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        out[share] = (lp.logp.detach(), lp.entropy.detach(), grads, list(seen))
    hook.remove()
    m = b.completion_mask
    assert out[False][3] == [(12, b.input_ids.shape[1])]
    assert out[True][3] == [(3, b.prompt_len), (12, b.completion_ids.shape[1] - 1)]
    torch.testing.assert_close(out[True][0][m], out[False][0][m], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[True][1][m], out[False][1][m], atol=1e-5, rtol=0)
    assert all(g.abs().sum() > 0 for g in out[False][2])
    for got, want in zip(out[True][2], out[False][2]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_shared_prompt_forward_edge_cases():
    """Distinct prompts only: one plain pass. One-token completions: no second call at all."""
    from grpo.tiny import build_tiny_llama

    torch.manual_seed(0)
    model = build_tiny_llama(hidden_size=64, num_heads=2, head_dim=32).eval()
    calls = []
    model.model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape[0]), with_kwargs=True)
    distinct = collate_rollouts(_grouped_rollouts([4, 6, 5], g=1), None, pad_id=0)
    one_token = collate_rollouts([_R([7, 8, 9], [c], [0.0]) for c in (10, 11, 12)], None, pad_id=0)
    with torch.no_grad():
        for b, want_calls in ((distinct, [3]), (one_token, [1])):
            calls.clear()
            shared = completion_logprobs(model, b, share_prompts=True, padding_free=False).logp
            assert calls == want_calls
            plain = completion_logprobs(model, b, share_prompts=False, padding_free=False).logp
            torch.testing.assert_close(shared[b.completion_mask], plain[b.completion_mask], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ text stats, report
def test_text_stats():
    assert has_reflection("so 12. Wait, let me re-check that") and not has_reflection("12 is waiting")
    assert is_language_mixed("answer 答案") and not is_language_mixed("答案")
    # tags are not words: a CoT wholly in one script is not mixed, whatever the template adds
    assert not is_language_mixed("<think>4加3得7,7加9得16</think><answer>16</answer>")
    assert not is_language_mixed("<think>4 plus 3 is 7</think><answer>7</answer>")
    assert is_language_mixed("<think>4 plus 3 is 7,7加9得16</think><answer>16</answer>")
    # only the chain of thought counts when there is one
    assert not is_language_mixed("<think>4 plus 3 is 7</think><answer>七</answer>")


def test_report_draws_curves_from_a_run_folder(tmp_path):
    from grpo.report import write_report

    with open(tmp_path / "metrics.jsonl", "w") as f:
        for s in range(1, 6):
            f.write(json.dumps({"step": s, "reward/total/mean": s / 5, "train/accuracy": s / 10,
                                "completions/mean_length": 10 + s, "completions/reflection_rate": 0.1 * s,
                                "loss/kl": 0.01 * s}) + "\n")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"step": 0, "eval/greedy_accuracy": 0.2}) + "\n"
                                         + json.dumps({"step": 5, "eval/greedy_accuracy": 0.6}) + "\n")
    page = write_report(tmp_path)
    text = page.read_text()
    assert "reward_accuracy.png" in text and "response_length.png" in text and "reflection.png" in text
    assert (tmp_path / "report" / "reward_accuracy.png").stat().st_size > 1000
    assert "format.png" not in text  # no data, no panel
    with pytest.raises(FileNotFoundError, match="no metrics"):
        write_report(tmp_path / "missing")


def test_run_logs_never_mix_two_runs(tmp_path):
    """A fresh run empties the run folder's logs; a resumed one drops what the interrupted run
    logged after its checkpoint (no step appears twice)."""
    from grpo.tracking import RunLogger, read_jsonl

    def run(start, steps):
        log = RunLogger(tmp_path, start_step=start, progress_bar=False)
        for s in steps:
            log.log_metrics(s, {"x": float(s)})
            log.log_eval(s, {"eval/acc": 0.5})
        log.close()

    run(0, [1, 2, 3, 4])  # the interrupted run got to step 4, its last checkpoint was step 2
    run(2, [3, 4, 5])
    assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert [m["step"] for m in read_jsonl(tmp_path / "eval.jsonl")] == [1, 2, 3, 4, 5]
    run(0, [1])  # a new run in the same folder
    assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == [1]
