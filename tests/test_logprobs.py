"""grpo.logprobs: chunked vs naive (values, gradients), a hand case, a real model, bad input."""

import subprocess
import sys

import pytest
import torch

from grpo.logprobs import naive_token_logprobs, token_logprobs, token_logprobs_and_entropy


def make(b, t, h, v, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, dtype=dtype).requires_grad_()
    weight = (0.3 * torch.randn(v, h, generator=g, dtype=dtype)).requires_grad_()
    targets = torch.randint(0, v, (b, t), generator=g)
    return hidden, weight, targets


def test_two_token_vocab_by_hand():
    # h = [1], W = [[2], [0]]: logits [2, 0]; log p(0) = 2 - log(e^2 + 1) = -0.126928,
    # log p(1) = -log(e^2 + 1) = -2.126928. At temperature 2: logits [1, 0] -> -0.313262, -1.313262
    hidden = torch.ones(1, 2, 1)
    weight = torch.tensor([[2.0], [0.0]])
    targets = torch.tensor([[0, 1]])
    got = token_logprobs(hidden, weight, targets, chunk_size=1)
    torch.testing.assert_close(got, torch.tensor([[-0.126928, -2.126928]]))
    got = token_logprobs(hidden, weight, targets, temperature=2.0)
    torch.testing.assert_close(got, torch.tensor([[-0.313262, -1.313262]]))
    # entropy of p = [0.880797, 0.119203] (temperature 1): -(p0 log p0 + p1 log p1)
    # = 0.880797 * 0.126928 + 0.119203 * 2.126928 = 0.111798 + 0.253536 = 0.365334 nats
    ent = token_logprobs_and_entropy(hidden, weight, targets).entropy
    torch.testing.assert_close(ent, torch.full((1, 2), 0.365334))


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, None])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_matches_naive_values_and_grads(chunk, temperature):
    hidden, weight, targets = make(3, 11, 16, 97)  # odd sizes: chunks do not divide B*T
    upstream = torch.randn(3, 11, generator=torch.Generator().manual_seed(9))
    got = token_logprobs(hidden, weight, targets, temperature=temperature, chunk_size=chunk)
    gh, gw = torch.autograd.grad((got * upstream).sum(), (hidden, weight))
    ref = naive_token_logprobs(hidden, weight, targets, temperature=temperature)
    rh, rw = torch.autograd.grad((ref * upstream).sum(), (hidden, weight))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gh, rh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw, rw, atol=1e-5, rtol=1e-5)


def test_entropy_matches_naive():
    hidden, weight, targets = make(2, 5, 8, 33, seed=4)
    ent = token_logprobs_and_entropy(hidden, weight, targets, temperature=0.8, chunk_size=3).entropy
    logp_all = torch.log_softmax((hidden @ weight.T) / 0.8, dim=-1)
    expected = -(logp_all.exp() * logp_all).sum(-1)
    torch.testing.assert_close(ent, expected.detach(), atol=1e-5, rtol=1e-5)
    assert not ent.requires_grad


def test_grad_only_to_what_requires_it():
    hidden, weight, targets = make(2, 3, 4, 9)
    frozen = weight.detach()  # LoRA-style frozen head: no weight gradient computed
    out = token_logprobs(hidden, frozen, targets, chunk_size=2)
    (gh,) = torch.autograd.grad(out.sum(), hidden)
    (rh,) = torch.autograd.grad(naive_token_logprobs(hidden, frozen, targets).sum(), hidden)
    torch.testing.assert_close(gh, rh, atol=1e-5, rtol=1e-5)


def test_rows_are_independent_of_padding_targets():
    hidden, weight, targets = make(2, 4, 8, 20, seed=5)
    other = targets.clone()
    other[1, 2:] = 0  # e.g. pad positions filled with id 0
    a = token_logprobs(hidden, weight, targets, chunk_size=3)
    b = token_logprobs(hidden, weight, other, chunk_size=3)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1, :2], b[1, :2])


def test_bf16_inputs_are_close_to_float32():
    hidden, weight, targets = make(2, 6, 32, 50, seed=6)
    ref = naive_token_logprobs(hidden, weight, targets)
    got = token_logprobs(hidden.bfloat16(), weight.bfloat16(), targets, chunk_size=5)
    assert got.dtype == torch.float32
    # bf16 keeps 8 mantissa bits: logits of size ~5 are off by ~0.02
    torch.testing.assert_close(got, ref.detach(), atol=0.1, rtol=0.05)


def test_agrees_with_a_real_causal_lm_forward():
    from grpo.tiny import build_tiny_llama

    model = build_tiny_llama(hidden_size=64, num_heads=2, head_dim=32, seed=1).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits[:, :-1]
        hidden = model.model(ids).last_hidden_state[:, :-1]  # after the final RMSNorm
    expected = torch.log_softmax(logits.float() / 0.9, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    got = token_logprobs(hidden, model.lm_head.weight, ids[:, 1:], temperature=0.9, chunk_size=4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(2, 3), torch.zeros(5, 3), torch.zeros(2, 3, dtype=torch.long)), r"\[B, T, H\]"),
    ((torch.zeros(2, 3, 4), torch.zeros(5, 3), torch.zeros(2, 3, dtype=torch.long)), r"\[V, H\]"),
    ((torch.zeros(2, 3, 4), torch.zeros(5, 4), torch.zeros(2, 4, dtype=torch.long)), "targets must be"),
    ((torch.zeros(2, 3, 4), torch.zeros(5, 4), torch.full((2, 3), 5)), "outside"),
])
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        token_logprobs(*args)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(torch.zeros(1, 1, 2), torch.zeros(3, 2), torch.zeros(1, 1, dtype=torch.long),
                       temperature=0.0)


def test_math_modules_do_not_import_vllm_or_transformers():
    code = ("import sys, time; t = time.perf_counter(); "
            "import grpo.advantages, grpo.loss, grpo.logprobs; "
            "bad = [m for m in ('vllm', 'transformers', 'trl', 'grpo.trainer') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
