"""On-policy distillation helpers against numbers worked out by hand."""

import pytest
import torch

from grpo.distill import check_same_tokenizer, distillation_advantages, reverse_kl_metric


def test_advantages_by_hand():
    student = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -9.0]])
    teacher = torch.tensor([[-0.5, -3.0, -0.5], [-1.0, -1.5, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = distillation_advantages(student, teacher, mask, coef=0.5)
    # -0.5 * (s - t): row 0: -0.5*(-0.5)=0.25, -0.5*(1.0)=-0.5, 0; row 1: -0.5*(-2)=1.0, -0.5*(0.5)=-0.25, pad -> 0
    assert torch.equal(adv, torch.tensor([[0.25, -0.5, 0.0], [1.0, -0.25, 0.0]]))


def test_advantages_zero_at_padding_even_with_infinite_logprobs():
    student = torch.tensor([[-1.0, float("-inf")]])
    teacher = torch.tensor([[-2.0, float("-inf")]])
    adv = distillation_advantages(student, teacher, torch.tensor([[1, 0]]))
    assert torch.equal(adv, torch.tensor([[-1.0, 0.0]]))  # -(−1 − (−2)) = −1; padding exactly 0, not nan


def test_advantages_are_constants_for_the_loss():
    student = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = distillation_advantages(student, torch.zeros(1, 2), torch.ones(1, 2))
    assert not adv.requires_grad


def test_reverse_kl_metric_by_hand():
    student = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -9.0]])
    teacher = torch.tensor([[-0.5, -3.0, -0.5], [-1.0, -1.5, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # differences on the 5 masked tokens: -0.5, 1.0, 0.0, -2.0, 0.5 -> sum -1.0 -> mean -0.2
    assert reverse_kl_metric(student, teacher, mask).item() == pytest.approx(-0.2)
    # same model: KL 0 for any mask; empty mask: nan
    assert reverse_kl_metric(student, student, mask).item() == 0.0
    assert torch.isnan(reverse_kl_metric(student, teacher, torch.zeros(2, 3)))


def test_shapes_checked():
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        distillation_advantages(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


def test_check_same_tokenizer():
    from grpo.tiny import build_char_tokenizer

    a, b = build_char_tokenizer(), build_char_tokenizer()
    check_same_tokenizer(a, b)  # same vocabulary: no error
    b.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match=r"only in the teacher's \(e.g. \['<extra>'\]\)"):
        check_same_tokenizer(a, b)
