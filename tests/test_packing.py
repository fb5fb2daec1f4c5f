"""The padding-free (packed) forward against the padded one and against plain unpadded forwards."""

import warnings
from dataclasses import dataclass

import pytest
import torch

from grpo.batch import collate_rollouts
from grpo.packing import pack_batch
from grpo.policy import completion_logprobs


@dataclass
class _R:
    prompt_ids: list
    completion_ids: list
    logprobs: list
    loss_mask: list | None = None
    group_id: int = 0
    sample_index: int = 0
    policy_version: int = 0


def _rollouts(prompt_lens, g, seed=1, vocab=90):
    gen = torch.Generator().manual_seed(seed)
    rs = []
    for n_p in prompt_lens:
        prompt = torch.randint(3, vocab, (n_p,), generator=gen).tolist()
        for _ in range(g):
            n_c = int(torch.randint(1, 9, (1,), generator=gen))
            rs.append(_R(prompt, torch.randint(3, vocab, (n_c,), generator=gen).tolist(), [0.0] * n_c))
    return rs


def _llama():
    from grpo.tiny import build_tiny_llama

    torch.manual_seed(0)
    return build_tiny_llama(hidden_size=64, num_heads=2, head_dim=32)


def _qwen2_gqa():
    """Grouped-query attention (4 query heads share 2 key/value heads) and q/k/v biases."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                        attn_implementation="sdpa"))


def _lora():
    from peft import LoraConfig, get_peft_model

    return get_peft_model(_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))


def _run(model, batch, **kw):
    model.zero_grad(set_to_none=True)
    lp = completion_logprobs(model, batch, temperature=0.9, with_entropy=True, **kw)
    (lp.logp * batch.completion_mask * torch.linspace(0.5, 1.5, batch.width)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return lp.logp.detach(), lp.entropy.detach(), grads


@pytest.mark.parametrize("build", [_llama, _qwen2_gqa, _lora], ids=["llama", "qwen2-gqa", "llama-lora"])
@pytest.mark.parametrize("share", [True, False])
def test_packed_matches_padded(build, share):
    """Log-probs, entropies and every parameter gradient agree with the padded forward (float
    rounding apart), for groups of ragged completions (1 to 8 tokens) behind prompts of 2-9 tokens."""
    model = build()
    b = collate_rollouts(_rollouts([5, 9, 2], g=4), None, pad_id=0)
    packed = _run(model, b, share_prompts=share, padding_free=True)
    padded = _run(model, b, share_prompts=share, padding_free=False)
    m = b.completion_mask
    torch.testing.assert_close(packed[0][m], padded[0][m], atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[1][m], padded[1][m], atol=1e-5, rtol=0)
    assert (packed[0][~m] == 0).all() and (packed[1][~m] == 0).all()
    assert all(g.abs().sum() > 0 for g in padded[2])
    for got, want in zip(packed[2], padded[2]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_packed_entropy_keeps_its_graph():
    """The entropy scattered back from the packed row (masked_scatter) carries its gradient: an
    entropy-only loss gives the padded forward's parameter gradients, and they are not zero."""
    model = _llama()
    b = collate_rollouts(_rollouts([4, 6], g=3, seed=2), None, pad_id=0)
    grads = {}
    for free in (True, False):
        model.zero_grad(set_to_none=True)
        lp = completion_logprobs(model, b, temperature=0.9, with_entropy=True, padding_free=free)
        assert lp.entropy.requires_grad
        (lp.entropy * b.completion_mask * torch.linspace(0.5, 1.5, b.width)).sum().backward()
        grads[free] = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    assert all(g.abs().sum() > 0 for g in grads[True])
    for got, want in zip(grads[True], grads[False]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_packed_matches_unpadded_forwards():
    """Each row's log-probs equal a plain forward of that row alone, with no padding anywhere:
    an independent reference (transformers' own forward and log-softmax)."""
    model = _qwen2_gqa().eval()
    rs = _rollouts([3, 7], g=3, seed=4)
    b = collate_rollouts(rs, None, pad_id=0)
    with torch.no_grad():
        got = completion_logprobs(model, b, temperature=0.7).logp
        for i, r in enumerate(rs):
            logits = model(torch.tensor([r.prompt_ids + r.completion_ids])).logits[0, len(r.prompt_ids) - 1:-1] / 0.7
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r.completion_ids)[:, None]).squeeze(-1)
            torch.testing.assert_close(got[i, :len(r.completion_ids)], want, atol=1e-5, rtol=1e-5)


def test_one_forward_over_real_tokens_only():
    """The decoder runs once, on one row holding each distinct prompt once and every completion
    token but the last of each row; no padding column reaches it."""
    model = _llama()
    rs = _rollouts([5, 9, 2], g=4)
    b = collate_rollouts(rs, None, pad_id=0)
    seen = []
    hook = model.model.register_forward_pre_hook(lambda mod, a, kw: seen.append(tuple(kw["input_ids"].shape)),
                                                 with_kwargs=True)
    with torch.no_grad():
        completion_logprobs(model, b, share_prompts=True)
        completion_logprobs(model, b, share_prompts=False)
    hook.remove()
    completions = sum(len(r.completion_ids) - 1 for r in rs)
    assert seen == [(1, 5 + 9 + 2 + completions), (1, 4 * (5 + 9 + 2) + completions)]
    assert b.input_ids.numel() > seen[1][1]  # the padded batch is larger still
    assert model.config._attn_implementation == "sdpa"  # the packed attention was selected only for the call


def test_layout_positions_and_predictors():
    """Hand-built: prompts [7 8 9] (rows 0, 1) and [5] (row 2); completions of 3, 1 and 2 tokens."""
    rs = [_R([7, 8, 9], [10, 11, 12], [0.0] * 3), _R([7, 8, 9], [20], [0.0]), _R([5], [30, 31], [0.0] * 2)]
    b = collate_rollouts(rs, None, pad_id=0)
    p = pack_batch(b, share_prompts=True)
    assert p.input_ids.tolist() == [[5, 7, 8, 9, 10, 11, 30]]  # unique() orders prompt [0 0 5] before [7 8 9]
    assert p.position_ids.tolist() == [[0, 0, 1, 2, 3, 4, 1]]
    assert p.layout.prompts == ((0, 1), (1, 3)) and p.layout.rows == ((1, 4, 2), (1, 6, 0), (0, 6, 1))
    # token 0 of a row is predicted by its prompt's last token, token t by completion token t-1
    assert p.predictor.tolist() == [3, 4, 5, 3, 0, 6]
    # attention rows [prompt; completion], right-padded: row 0 = 7 8 9 10 11, row 1 = 7 8 9, row 2 = 5 30
    assert p.layout.gather.tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 0, 0], [0, 6, 0, 0, 0]]
    # outputs: prompt [5] from row 2, prompt [7 8 9] from row 0 (the first holding each), completions from their rows
    assert p.layout.scatter.tolist() == [10, 0, 1, 2, 3, 4, 11]


def test_attention_implementation_restored_after_an_error():
    model = _llama()
    b = collate_rollouts(_rollouts([4], g=2), None, pad_id=0)
    model.model.layers[0].mlp.register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        completion_logprobs(model, b)
    assert model.config._attn_implementation == "sdpa"


def test_gradient_checkpointing_runs_padded():
    """Checkpointing recomputes layers in backward, after the packed attention was deselected:
    that forward runs padded (one call over the whole padded batch), with the same gradients."""
    model = _llama()
    b = collate_rollouts(_rollouts([6, 3], g=3), None, pad_id=0)
    plain = _run(model, b)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    seen = []
    model.model.register_forward_pre_hook(lambda mod, a, kw: seen.append(tuple(kw["input_ids"].shape)),
                                          with_kwargs=True)
    ckpt = _run(model, b)
    assert seen == [tuple(b.input_ids.shape)]
    for got, want in zip(ckpt[2], plain[2]):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_unsupported_model_warns_once_and_runs_padded():
    """A sliding attention window is not modelled by the packed attention: the padded forward
    runs, and the warning says why and how to silence it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                         sliding_window=3, max_window_layers=0))
    b = collate_rollouts(_rollouts([5], g=2), None, pad_id=0)
    with pytest.warns(UserWarning, match=r"sliding attention window \(3\).*padding_free=False"):
        got = completion_logprobs(model, b).logp
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        completion_logprobs(model, b)  # once per reason
        want = completion_logprobs(model, b, padding_free=False).logp
    torch.testing.assert_close(got, want)
