"""On-policy distillation (OPD) as a per-token GRPO advantage: pure tensor functions.

The student samples a completion, the teacher scores the *same* tokens, and every sampled
token gets the advantage

    A_t = -coef * (log pi_student(o_t | q, o_<t) - log pi_teacher(o_t | q, o_<t))     (1)

i.e. the negative per-token reverse-KL estimate ``log p_s - log p_t`` on the sampled token
(the k1 estimator of KL(student || teacher)). Plugged into the usual importance-sampled
policy-gradient loss it minimises the reverse KL to the teacher on the student's own
distribution (Agarwal et al. 2024, "On-Policy Distillation of Language Models", GKD; Gu et al.
2024, MiniLLM). This is the form of thinking-machines-lab/tinker-cookbook
``tinker_cookbook/distillation/train_on_policy.py::incorporate_kl_penalty`` (``kl_penalty_coef``,
with its ``kl_discount_factor`` = 0) and of THUDM/slime's ``--use-opd`` (``A_t - lambda_opd * d_t``,
docs/en/advanced/on-policy-distillation.md): added to a task advantage it combines OPD with
GRPO; with the task reward at 0 it is pure distillation.

On-policy *self*-distillation (OPSD, arXiv:2601.18734; SDFT, arXiv:2601.19897; SDPO,
arXiv:2601.20802; ``distill.self_context``): the teacher of eq. (1) is the policy itself at the
step's start, detached, conditioned on a privileged prompt: the student's prompt with context
from the dataset row appended (:func:`privileged_prompt`), ``log pi_teacher(o_t | q', o_<t)``.
docs/math.md section 5.1 says where this departs from the papers and from prime-rl and trl.

Shapes: ``[B, T]`` = completions x completion tokens, as everywhere in ``grpo`` (docs/shapes.md).
The advantage is a constant for the loss: the inputs are expected to be detached log-probs.
"""

from __future__ import annotations

import torch


def distillation_advantages(
    student_logp: torch.Tensor,  # [B, T] log pi_student of sampled tokens
    teacher_logp: torch.Tensor,  # [B, T] log pi_teacher of the same tokens
    mask: torch.Tensor,  # [B, T] 1 on completion tokens, 0 on padding
    coef: float = 1.0,
) -> torch.Tensor:  # [B, T]
    """Per-token advantages of eq. (1): ``-coef * (student_logp - teacher_logp)``, 0 at padding.

    >>> s = torch.tensor([[-1.0, -2.0]]); t = torch.tensor([[-0.5, -3.0]])
    >>> distillation_advantages(s, t, torch.tensor([[1, 0]]), coef=2.0)
    tensor([[1., 0.]])
    """
    _check_shapes(student_logp, teacher_logp, mask)
    diff_BT = (student_logp - teacher_logp).detach()
    # where() rather than multiply: a padding position may hold -inf log-probs (inf * 0 = nan)
    return torch.where(mask.bool(), -coef * diff_BT, torch.zeros_like(diff_BT))


def reverse_kl_metric(
    student_logp: torch.Tensor,  # [B, T]
    teacher_logp: torch.Tensor,  # [B, T]
    mask: torch.Tensor,
) -> torch.Tensor:  # [B, T] -> scalar
    """Per-token mean of ``student_logp - teacher_logp`` over the mask: the k1 Monte-Carlo
    estimate of KL(student || teacher) per token (the metric tinker-cookbook logs as
    ``teacher_kl``). NaN when the mask is empty.

    >>> reverse_kl_metric(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-0.5, -3.0]]),
    ...                   torch.ones(1, 2))
    tensor(0.2500)
    """
    _check_shapes(student_logp, teacher_logp, mask)
    m = mask.bool()
    diff = (student_logp - teacher_logp).detach()[m]
    return diff.sum() / m.sum()  # 0/0 = nan for an empty mask, on purpose


def check_same_tokenizer(student_tok, teacher_tok) -> None:
    """Raise ValueError unless both tokenizers map the same strings to the same ids.

    Eq. (1) compares the two models' log-probs of the *same token id*; with different
    vocabularies that id names different strings in the two models and the "KL" is meaningless
    (cross-tokenizer distillation needs a token alignment, e.g. trl's GOLD / ULD loss).
    """
    s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s_vocab == t_vocab:
        return
    only_s = sorted(set(s_vocab) - set(t_vocab))
    only_t = sorted(set(t_vocab) - set(s_vocab))
    moved = sorted(k for k in set(s_vocab) & set(t_vocab) if s_vocab[k] != t_vocab[k])
    detail = []
    if only_s:
        detail.append(f"{len(only_s)} tokens only in the student's (e.g. {only_s[:3]})")
    if only_t:
        detail.append(f"{len(only_t)} only in the teacher's (e.g. {only_t[:3]})")
    if moved:
        detail.append(f"{len(moved)} with different ids (e.g. {moved[:3]})")
    raise ValueError(
        f"student and teacher tokenizers differ (vocab sizes {len(s_vocab)} vs {len(t_vocab)}: "
        f"{'; '.join(detail)}). On-policy distillation compares log-probs of the same token ids; "
        "use a teacher from the student's model family (same tokenizer)."
    )


def check_teacher(student_tok, teacher) -> None:
    """Raise ValueError unless ``teacher`` (a loaded causal LM) can score the student's tokens:
    its tokenizer, where one is saved with it (its ``name_or_path``, looked up locally only),
    is the student's (:func:`check_same_tokenizer`), and its output layer has a row for every id
    of the student's tokenizer. Row counts themselves may differ (checkpoints of one family pad
    the embedding differently, e.g. Qwen2.5-0.5B 151,936 and 7B 152,064). A teacher given as a
    path and the same teacher given as a model pass or fail alike."""
    teacher_tok = _saved_tokenizer(getattr(teacher, "name_or_path", None))
    if teacher_tok is not None:
        check_same_tokenizer(student_tok, teacher_tok)
    head = teacher.get_output_embeddings()
    rows = head.weight.shape[0] if head is not None else teacher.config.vocab_size
    if rows < len(student_tok):
        raise ValueError(
            f"the teacher's vocabulary has {rows} rows but the student's tokenizer has "
            f"{len(student_tok)} tokens: on-policy distillation compares log-probs of the same "
            "token ids; use a teacher with the student's tokenizer"
        )


def _saved_tokenizer(source: str | None):
    """The tokenizer saved at ``source`` (a directory or a cached hub id), or None."""
    if not source:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return None


def _check_shapes(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor
) -> None:
    if not (student_logp.shape == teacher_logp.shape == mask.shape) or student_logp.dim() != 2:
        raise ValueError(
            f"student_logp {tuple(student_logp.shape)}, teacher_logp {tuple(teacher_logp.shape)} "
            f"and mask {tuple(mask.shape)} must all be [B, T]"
        )


# ----------------------------------------------------------------------------- self-distillation
SELF_CONTEXT_SEPARATOR = "\n\n"
"""What joins the prompt (or its last user message) and the rendered ``distill.self_context``."""


def self_context_columns(template: str) -> list[str]:
    """The dataset columns ``template`` (``distill.self_context``) reads, in order, each once.

    Raises ValueError for a template that is not a ``str.format`` template over named columns
    (a positional ``{}``, an attribute or index lookup, a conversion, unbalanced braces), naming
    the template, so that a typo fails at configuration rather than at the first step.

    >>> self_context_columns("The verified final answer is {answer}. ({answer}, {source})")
    ['answer', 'source']
    """
    import string

    setting = f"distill.self_context={template!r}"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{setting} is not a format template: {e}") from None
    names: list[str] = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier():
            raise ValueError(
                f"{setting}: the field {{{field}}} is not a column name; write the dataset "
                "column in braces, e.g. {answer}"
            )
        if spec or conversion:
            raise ValueError(
                f"{setting}: the field {{{field}}} has a format spec or conversion; write the "
                "column in plain braces"
            )
        if field not in names:
            names.append(field)
    if not names:
        raise ValueError(
            f"{setting} reads no dataset column: the privileged context must come from the "
            "row (e.g. 'The verified final answer is {answer}.')"
        )
    return names


def privileged_prompt(prompt, row, template: str):
    """On-policy self-distillation's teacher prompt: ``prompt`` with ``template`` rendered over
    ``row``'s columns appended (after :data:`SELF_CONTEXT_SEPARATOR`): to the text of a plain
    prompt, or to the content of the *last user message* of a chat prompt (a new list; the
    other messages, and any after it, unchanged). The student's prompt is never changed.

    >>> privileged_prompt("2+2?", {"answer": 4}, "The answer is {answer}.")
    '2+2?\\n\\nThe answer is 4.'
    >>> chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    >>> privileged_prompt(chat, {"answer": 4}, "It is {answer}.")[1]
    {'role': 'user', 'content': '2+2?\\n\\nIt is 4.'}
    """
    context = template.format_map({c: row[c] for c in self_context_columns(template)})
    if isinstance(prompt, str):
        return prompt + SELF_CONTEXT_SEPARATOR + context
    messages = [dict(m) for m in prompt]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise ValueError(
            "distill.self_context is appended to a chat prompt's last user message, and this "
            f"prompt has none (roles {[m.get('role') for m in messages]})"
        )
    last = messages[users[-1]]
    if not isinstance(last.get("content"), str):
        raise ValueError(
            "distill.self_context is appended to the last user message's text, and its content "
            f"is {type(last.get('content')).__name__}, not a string"
        )
    last["content"] = last["content"] + SELF_CONTEXT_SEPARATOR + context
    return messages
