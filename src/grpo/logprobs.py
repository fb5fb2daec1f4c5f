"""Per-token log-probs (and entropy) of sampled tokens, without the full float32 logits.

A GRPO step needs ``log pi(o_t | o_<t)`` for every completion token, i.e. one entry per row of
``logits = hidden @ W^T / temperature`` (``[B, T, V]``). With Qwen2.5's vocabulary
(V = 151,936) and 8 x 1,024 tokens those logits alone are 5 GB in float32, and autograd
keeps them (and the log-softmax) for backward. :func:`token_logprobs` instead walks the
``B*T`` rows in chunks, keeps only one ``[chunk, V]`` block (two when the entropy is wanted),
reused by every chunk, and saves only the per-row log-sum-exp ``[B*T]`` for backward, where
each chunk's logits are recomputed (the technique of Liger-Kernel's fused linear cross-entropy,
arXiv:2410.10989, and of Cut Your Losses, arXiv:2411.09009). Extra peak memory is
O(chunk x V), independent of B*T.

Math, for one row with hidden ``h`` [H], target ``y``, ``z = W h / tau`` [V]::

    logp   = z_y - logsumexp(z)
    dlogp/dz = onehot(y) - softmax(z)
    dL/dh  = g * (onehot(y) - p) @ W / tau         dL/dW += g * outer(onehot(y) - p, h) / tau
    H(p)   = logsumexp(z) - sum_v p_v z_v          (entropy)
    dH/dz_v = -p_v (log p_v + H)                   (its gradient, when the entropy is asked for)

With ``with_entropy`` the entropy is differentiable: backward adds the upstream entropy
gradient's ``-gH * p * (log p + H)`` to the logits gradient in the same chunk loop (one more
``[chunk, V]`` block, only when the entropy does receive a gradient), so the ``1/tau`` and the
two matmuls are shared. Without it nothing changes: no extra block, no extra saved tensor.

Sampling temperature ``tau`` must match the rollout's: the sampler drew from ``softmax(z / tau)``
(vLLM reports log-probs after temperature scaling), so the ratio compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# float32 bytes of one [chunk, V] logits block: 441 rows at V = 151,936. Smaller chunks cost time
# on CPU: each chunk re-reads the [V, H] weight and the weight gradient (benchmarks/README.md).
DEFAULT_CHUNK_BYTES = 256 * 2**20


def _auto_chunk_rows(vocab_size: int) -> int:
    return max(16, DEFAULT_CHUNK_BYTES // (4 * vocab_size))


def _chunk_logits(
    out_CV: torch.Tensor, h_CH: torch.Tensor, weight_VH: torch.Tensor, temperature: float
) -> torch.Tensor:
    # z = h W^T / tau written into a float32 workspace reused by every chunk: on CPU a fresh
    # [chunk, V] block per chunk costs page faults (blocks this big bypass malloc's free lists).
    # Matmul in the input dtype (bf16 on GPUs), softmax statistics in float32.
    if h_CH.dtype == out_CV.dtype and weight_VH.dtype == out_CV.dtype:
        torch.mm(h_CH, weight_VH.T, out=out_CV)
    else:
        out_CV.copy_(h_CH @ weight_VH.T)
    if temperature != 1.0:
        out_CV.div_(temperature)
    return out_CV


def _logsumexp_rows(z_CV: torch.Tensor, scratch_CV: torch.Tensor) -> torch.Tensor:
    # torch.logsumexp(z_CV, -1), same ops in the same order (so the same rounding), with its
    # [C, V] temporary exp(z - max) written into scratch_CV; if that is z_CV, z is overwritten.
    m_C1 = z_CV.amax(dim=-1, keepdim=True)
    m_C1.masked_fill_(m_C1.abs() == float("inf"), 0.0)
    if scratch_CV.data_ptr() == z_CV.data_ptr():
        t_CV = z_CV.sub_(m_C1)
    else:
        t_CV = torch.sub(z_CV, m_C1, out=scratch_CV)
    return t_CV.exp_().sum(dim=-1).log_().add_(m_C1.squeeze(1))


def _stat_dtype(hidden_NH: torch.Tensor, weight_VH: torch.Tensor) -> torch.dtype:
    # softmax statistics in float32, or float64 when both inputs are (exact gradient checks)
    both64 = hidden_NH.dtype == torch.float64 and weight_VH.dtype == torch.float64
    return torch.float64 if both64 else torch.float32


class _ChunkedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, targets_N, temperature, chunk_rows, want_entropy):
        n = hidden_NH.shape[0]
        acc = _stat_dtype(hidden_NH, weight_VH)
        logp_N = torch.empty(n, dtype=acc, device=hidden_NH.device)
        lse_N = torch.empty(n, dtype=acc, device=hidden_NH.device)
        entropy_N = torch.empty(n if want_entropy else 0, dtype=acc, device=hidden_NH.device)
        # One [chunk, V] workspace for the logits, plus one scratch block for the entropy.
        work_CV = torch.empty(
            min(chunk_rows, n), weight_VH.shape[0], dtype=acc, device=hidden_NH.device
        )
        scratch_CV = torch.empty_like(work_CV) if want_entropy else work_CV
        for s in range(0, n, chunk_rows):
            e = min(s + chunk_rows, n)
            z_CV = _chunk_logits(work_CV[: e - s], hidden_NH[s:e], weight_VH, temperature)
            z_y_C = z_CV.gather(1, targets_N[s:e, None]).squeeze(1)
            # without entropy the logits are not needed after this: overwrite them in place
            lse_C = _logsumexp_rows(z_CV, scratch_CV[: e - s])
            lse_N[s:e] = lse_C
            logp_N[s:e] = z_y_C - lse_C
            if want_entropy:  # H = lse - sum_v p_v z_v with p = exp(z - lse), in the scratch block
                p_CV = torch.sub(z_CV, lse_C[:, None], out=scratch_CV[: e - s]).exp_()
                entropy_N[s:e] = lse_C - p_CV.mul_(z_CV).sum(dim=-1)
        if want_entropy:  # [N] more: backward's dH/dz needs H per row
            ctx.save_for_backward(hidden_NH, weight_VH, targets_N, lse_N, entropy_N)
        else:
            ctx.save_for_backward(hidden_NH, weight_VH, targets_N, lse_N)
            ctx.mark_non_differentiable(entropy_N)
        ctx.temperature = temperature
        ctx.chunk_rows = chunk_rows
        # an output nobody differentiates gets None, not a zero tensor: the entropy term of
        # backward (and its second [chunk, V] block) then costs nothing
        ctx.set_materialize_grads(False)
        return logp_N, entropy_N

    @staticmethod
    def backward(ctx, grad_logp_N, grad_entropy_N):
        hidden_NH, weight_VH, targets_N, lse_N, *rest = ctx.saved_tensors
        entropy_N = rest[0] if rest else None
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_entropy_N is not None and entropy_N is None:
            grad_entropy_N = None  # non-differentiable (empty) entropy output
        if grad_logp_N is None and grad_entropy_N is None:
            return None, None, None, None, None, None
        acc = lse_N.dtype
        grad_h = torch.zeros_like(hidden_NH) if need_h else None
        grad_w = (
            torch.zeros(weight_VH.shape, dtype=acc, device=weight_VH.device) if need_w else None
        )
        # float32 weight: accumulate dL/dW inside the GEMM (addmm_), not via a [V, H] temporary
        # per chunk. Lower precision: matmul in that dtype, accumulate in float32 (as before).
        fp32 = hidden_NH.dtype == acc and weight_VH.dtype == acc
        tau, n = ctx.temperature, hidden_NH.shape[0]
        work_CV = torch.empty(
            min(ctx.chunk_rows, n), weight_VH.shape[0], dtype=acc, device=hidden_NH.device
        )
        p_CV = torch.empty_like(work_CV) if grad_entropy_N is not None else None
        for s in range(0, n, ctx.chunk_rows):
            e = min(s + ctx.chunk_rows, n)
            h_CH = hidden_NH[s:e]
            g_C1 = (
                grad_logp_N[s:e, None].to(acc)
                if grad_logp_N is not None
                else torch.zeros(e - s, 1, dtype=acc, device=hidden_NH.device)
            )
            z_CV = _chunk_logits(work_CV[: e - s], h_CH, weight_VH, tau)
            if grad_entropy_N is None:
                # dlogp/dz = onehot - softmax, scaled by upstream grad g and 1/tau: [C, V], in place
                gz_CV = z_CV.sub_(lse_N[s:e, None]).exp_().mul_(-g_C1)
            else:
                # dH/dz_v = -p_v (log p_v + H); with dlogp/dz: gz = p * (-g - gH (log p + H))
                # (+ g at the target, below). log p in the workspace, p in the second block.
                logp_CV = z_CV.sub_(lse_N[s:e, None])
                pc_CV = torch.exp(logp_CV, out=p_CV[: e - s])
                gh_C1 = grad_entropy_N[s:e, None].to(acc)
                gz_CV = logp_CV.add_(entropy_N[s:e, None]).mul_(-gh_C1).sub_(g_C1).mul_(pc_CV)
            gz_CV.scatter_add_(1, targets_N[s:e, None], g_C1)
            if tau != 1.0:
                gz_CV.div_(tau)
            if not fp32:
                gz_CV = gz_CV.to(weight_VH.dtype)
            if need_h:
                grad_h[s:e] = gz_CV @ weight_VH
            if need_w:
                if fp32:
                    grad_w.addmm_(gz_CV.T, h_CH)
                else:
                    grad_w.add_(gz_CV.T @ h_CH)
        return grad_h, (grad_w.to(weight_VH.dtype) if need_w else None), None, None, None, None


@dataclass(frozen=True)
class TokenLogprobs:
    """``logp`` [B, T] and ``entropy`` [B, T] (nats; zeros unless asked for), both
    differentiable."""

    logp: torch.Tensor
    entropy: torch.Tensor


def _check(hidden, lm_head_weight, targets, temperature, chunk_size):
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H], got shape {tuple(hidden.shape)}")
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden.shape[2]:
        raise ValueError(
            f"lm_head_weight must be [V, H] with H={hidden.shape[2]}, got "
            f"{tuple(lm_head_weight.shape)}"
        )
    if targets.shape != hidden.shape[:2]:
        raise ValueError(
            f"targets must be [B, T]={tuple(hidden.shape[:2])}, got {tuple(targets.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None (auto), got {chunk_size}")


def token_logprobs_and_entropy(
    hidden: torch.Tensor,  # [B, T, H] final hidden states (after the final norm)
    lm_head_weight: torch.Tensor,  # [V, H]
    targets: torch.Tensor,  # [B, T] token ids whose log-prob is wanted
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    with_entropy: bool = True,
) -> TokenLogprobs:
    """Chunked log-probs of ``targets`` and the sampling distribution's entropy.

    ``chunk_size`` is the number of ``B*T`` rows whose logits exist at once (None: as many as
    fit in 256 MB of float32 logits). Padding positions may hold any valid token id.
    """
    _check(hidden, lm_head_weight, targets, temperature, chunk_size)
    b, t, h = hidden.shape
    v = lm_head_weight.shape[0]
    targets_N = targets.reshape(-1).long()
    if targets_N.numel() and (targets_N.min() < 0 or targets_N.max() >= v):
        raise ValueError(
            f"targets hold ids outside [0, {v}); replace padding with a valid id (e.g. 0)"
        )
    rows = chunk_size or _auto_chunk_rows(v)
    logp_N, ent_N = _ChunkedTokenLogprobs.apply(
        hidden.reshape(b * t, h), lm_head_weight, targets_N, float(temperature), rows, with_entropy
    )
    entropy = ent_N.view(b, t) if with_entropy else torch.zeros(b, t, device=hidden.device)
    return TokenLogprobs(logp=logp_N.view(b, t), entropy=entropy)


def token_logprobs(
    hidden: torch.Tensor,  # [B, T, H]
    lm_head_weight: torch.Tensor,  # [V, H]
    targets: torch.Tensor,  # [B, T]
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:  # [B, T] float32
    """Per-token ``log softmax(hidden @ W^T / temperature)[targets]`` in float32, chunked.

    Agrees with :func:`naive_token_logprobs` to float32 precision (values and gradients) while
    never materialising the ``[B, T, V]`` float32 logits.
    """
    return token_logprobs_and_entropy(
        hidden,
        lm_head_weight,
        targets,
        temperature=temperature,
        chunk_size=chunk_size,
        with_entropy=False,
    ).logp


def naive_token_logprobs(
    hidden, lm_head_weight, targets, *, temperature: float = 1.0
) -> torch.Tensor:
    """Reference implementation: full float32 logits, log_softmax, gather. For tests/benchmarks."""
    logits_BTV = (hidden @ lm_head_weight.T).float() / temperature
    return torch.log_softmax(logits_BTV, dim=-1).gather(-1, targets[..., None].long()).squeeze(-1)
