"""Fixtures shared by the trainer tests: a tiny offline model and a dense toy reward."""

import pytest

from grpo.rewards import Reward


class Checksum(Reward):
    """Dense and arbitrary (a checksum of the text): almost every completion of a random tiny
    model scores differently, so every group carries signal. For mechanics, not learning."""

    def score(self, completion, **example):
        return sum(map(ord, completion)) % 13 / 13


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny Llama (hidden 64, 2 heads of 32) and its character tokenizer, saved offline."""
    from grpo.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=64, num_heads=2, head_dim=32)


class CrashAfter:
    """A real generator that dies on its (k+1)-th ``generate`` call, as an interrupted run would."""

    def __init__(self, inner, k):
        self.inner, self.k, self.calls = inner, k, 0

    def generate(self, prompts, n, sampling):
        self.calls += 1
        if self.calls > self.k:
            raise KeyboardInterrupt("simulated interruption")
        return self.inner.generate(prompts, n, sampling)
