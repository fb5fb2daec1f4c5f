"""The GRPO math on real tensors: one prompt group, scored, turned into advantages and a loss.

Run: ``bash scripts/demo.sh`` (or ``.venv/bin/python examples/math_demo.py``).

A tiny Llama (built offline, random weights) samples G completions for one prompt; a toy rule
reward scores them; :func:`grpo.advantages.compute_group_advantages` turns the rewards into
group-relative advantages; :func:`grpo.logprobs.token_logprobs` computes the per-token
log-probs from the last hidden states without full float32 logits; :func:`grpo.loss.policy_loss`
gives the clipped, KL-regularised loss; one optimizer step follows, and the loss statistics are
printed. It shows the shapes and the quantities a GRPO step logs.
"""

from __future__ import annotations

import torch

from grpo.advantages import compute_group_advantages
from grpo.logprobs import token_logprobs
from grpo.loss import policy_loss
from grpo.tiny import build_char_tokenizer, build_tiny_llama

G, MAX_NEW = 8, 12


def main() -> None:
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    model = build_tiny_llama(tok, hidden_size=64, num_heads=2, head_dim=32)
    ref = build_tiny_llama(tok, hidden_size=64, num_heads=2, head_dim=32)
    ref.load_state_dict(model.state_dict())
    prompt = tok.apply_chat_template([{"role": "user", "content": "Say some digits."}], tokenize=False,
                                     add_generation_prompt=True)
    prompt_ids = tok(prompt, return_tensors="pt").input_ids  # [1, P]
    with torch.no_grad():
        seqs = model.generate(prompt_ids.repeat(G, 1), do_sample=True, max_new_tokens=MAX_NEW,
                              min_new_tokens=MAX_NEW, top_k=0, pad_token_id=tok.pad_token_id)
    completion_ids = seqs[:, prompt_ids.shape[1]:]  # [G, T]
    texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
    rewards = [float(sum(c.isdigit() for c in t)) for t in texts]  # toy rule reward: digits
    adv = compute_group_advantages(rewards, G)

    def completion_logp(m):
        hidden = m.model(seqs).last_hidden_state[:, prompt_ids.shape[1] - 1:-1]  # [G, T, H]
        return token_logprobs(hidden, m.lm_head.weight, completion_ids)  # [G, T]

    mask = torch.ones_like(completion_ids, dtype=torch.bool)
    with torch.no_grad():
        old_logp, ref_logp = completion_logp(model), completion_logp(ref)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    passes = []  # mu = 2 optimisation passes over the same group, as in GRPO's inner loop
    for _ in range(2):
        out = policy_loss(completion_logp(model), old_logp, adv.advantages, mask,
                          ref_logp=ref_logp, beta=0.001, eps_high=0.28)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        passes.append(out.metrics())

    print(f"prompt: {prompt!r}")
    for t, r, a in zip(texts, rewards, adv.advantages.tolist()):
        print(f"  reward {r:.0f}  advantage {a:+.3f}  {t!r}")
    print(f"group mean {adv.group_mean.item():.3f}  std {adv.group_std.item():.3f}  "
          f"zero-variance groups {adv.zero_std_frac:.0%}")
    print(f"  {'statistic':24s} {'pass 1 (on-policy)':>20s} {'pass 2':>12s}")
    for key in passes[0]:
        print(f"  {key:24s} {passes[0][key]:20.6f} {passes[1][key]:12.6f}")

if __name__ == "__main__":
    main()
