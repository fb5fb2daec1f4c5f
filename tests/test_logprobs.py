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
    assert ent.requires_grad  # differentiable when asked for (test_entropy_gradient_...)
    assert not token_logprobs_and_entropy(hidden, weight, targets, with_entropy=False).entropy.requires_grad


def _naive_logp_and_entropy(hidden, weight, targets, temperature):
    logp_all = torch.log_softmax((hidden @ weight.T) / temperature, dim=-1)
    return logp_all.gather(-1, targets[..., None]).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


@pytest.mark.parametrize("chunk", [1, 4, None])
@pytest.mark.parametrize("with_logp_grad", [True, False])
def test_entropy_gradient_matches_autograd_float64(chunk, with_logp_grad):
    """dH/dz_v = -p_v (log p_v + H), added in backward's chunk loop: hidden and weight gradients
    equal autograd through the naive softmax in float64, at temperature 0.7, with the log-prob's
    and the entropy's upstream gradients flowing together (or the entropy's alone), and padding
    rows whose upstream gradients are 0."""
    hidden, weight, targets = make(3, 5, 8, 23, seed=11, dtype=torch.float64)
    gen = torch.Generator().manual_seed(12)
    up_logp = torch.randn(3, 5, generator=gen, dtype=torch.float64) if with_logp_grad else 0.0
    up_ent = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    pad = torch.ones(3, 5, dtype=torch.float64)
    pad[1, 3:] = 0  # padding rows: no gradient from either output
    pad[2, 1:] = 0
    got = token_logprobs_and_entropy(hidden, weight, targets, temperature=0.7, chunk_size=chunk)
    assert got.logp.dtype == got.entropy.dtype == torch.float64
    loss = ((got.logp * up_logp + got.entropy * up_ent) * pad).sum()
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    ref_logp, ref_ent = _naive_logp_and_entropy(hidden, weight, targets, 0.7)
    ref_loss = ((ref_logp * up_logp + ref_ent * up_ent) * pad).sum()
    rh, rw = torch.autograd.grad(ref_loss, (hidden, weight), retain_graph=True)
    torch.testing.assert_close(got.entropy, ref_ent, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(gh, rh, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(gw, rw, atol=1e-12, rtol=1e-10)
    assert gh[2, 1:].abs().max() == 0  # padded rows get no hidden gradient
    # the entropy term matters: without it the gradient is the log-prob's alone
    lh = torch.zeros_like(rh)
    if with_logp_grad:
        (lh,) = torch.autograd.grad((ref_logp * up_logp * pad).sum(), hidden)
    assert (gh - lh).abs().max() > 1e-3


def test_entropy_gradient_float32_and_unused_entropy():
    """Float32 (the training dtype) agrees with autograd to float32 precision; an entropy that is
    computed but not used in the loss leaves the log-prob gradient as it was."""
    hidden, weight, targets = make(2, 7, 16, 41, seed=13)
    up = torch.randn(2, 7, generator=torch.Generator().manual_seed(14))
    got = token_logprobs_and_entropy(hidden, weight, targets, temperature=1.3, chunk_size=5)
    gh, gw = torch.autograd.grad((got.logp * up - 0.1 * got.entropy).sum(), (hidden, weight))
    ref_logp, ref_ent = _naive_logp_and_entropy(hidden, weight, targets, 1.3)
    rh, rw = torch.autograd.grad((ref_logp * up - 0.1 * ref_ent).sum(), (hidden, weight))
    torch.testing.assert_close(gh, rh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw, rw, atol=1e-5, rtol=1e-5)
    got = token_logprobs_and_entropy(hidden, weight, targets, temperature=1.3, chunk_size=5)
    only = torch.autograd.grad((got.logp * up).sum(), (hidden, weight))
    plain = token_logprobs(hidden, weight, targets, temperature=1.3, chunk_size=5)
    for a, b in zip(only, torch.autograd.grad((plain * up).sum(), (hidden, weight))):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


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
