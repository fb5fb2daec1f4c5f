"""The generator protocol: every generator derives from ``BaseGenerator`` and *declares* its
capabilities; the trainer and the rollout source read the declarations (no ``hasattr`` probes,
no class names); a duck-typed generator is wrapped with the defaults, and one that declares a
capability without deriving from the base is refused by name."""

import re
from dataclasses import replace
from pathlib import Path

import pytest

from grpo import GRPOConfig, GRPOTrainer
from grpo.rollout import BaseGenerator, HFGenerator, MultiTurnGenerator, as_generator
from grpo.rollout.process import ProcessGenerator
from grpo.rollout.server import VLLMServerGenerator
from grpo.rollout.vllm import VLLMGenerator

from conftest import Checksum

SRC = Path(__file__).resolve().parents[1] / "src" / "grpo"


def rows(n):
    return [{"prompt": f"Say {i}", "tag": f"row{i}"} for i in range(n)]


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), num_generations=2, prompts_per_step=2, max_steps=1,
                max_completion_length=4, learning_rate=1e-2, beta=0.0, progress_bar=False,
                save_final_model=False, seed=0)
    return GRPOConfig(**{**base, **kw})


@pytest.mark.parametrize("cls", [HFGenerator, VLLMGenerator, VLLMServerGenerator, ProcessGenerator,
                                 MultiTurnGenerator])
def test_every_generator_derives_from_the_base(cls):
    assert issubclass(cls, BaseGenerator)


def test_no_capability_is_probed_by_hasattr_or_class_name():
    """The declared attributes are the only way the trainer learns what a generator can do."""
    probe = re.compile(r"(getattr|hasattr)\(\s*(self\.)?(generator|sampler|gen)\b"
                       r"|type\(\s*(self\.)?(generator|sampler)\s*\)\.__name__\s*(in|==)|== \"\w*(Generator|Engine)\"")
    found = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.name != "types.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if probe.search(line)]
    assert found == []


class Duck:
    """A user's generator that does not subclass the base: generate (and sync_weights) only."""

    def __init__(self, inner):
        self.inner, self.synced = inner, 0

    def generate(self, prompts, n, sampling):
        return self.inner.generate(prompts, n, sampling)

    def sync_weights(self, model):
        self.synced += 1


def test_a_duck_typed_generator_gets_the_defaults_and_trains(tiny_dir, tmp_path):
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path))
    duck = Duck(trainer.generator)
    trainer.generator = trainer.source.generator = duck
    wrapped = trainer.generator
    assert isinstance(wrapped, BaseGenerator) and wrapped.inner is duck
    assert (wrapped.versioned, wrapped.accepts_rows, wrapped.sleep_enabled, wrapped.max_turn_tokens,
            wrapped.encode_prompt, wrapped.policy_model, wrapped.returns_logprobs) == (
        False, False, False, None, None, None, True)
    trainer.train()
    trainer.close()
    assert duck.synced == 1  # its own sync_weights is still called after the update


def test_a_duck_typed_generator_declaring_a_capability_is_refused_at_construction(tiny_dir, tmp_path):
    class WantsRows(Duck):
        accepts_rows = True

    inner = HFGenerator.__new__(HFGenerator)  # never called: construction is refused first
    with pytest.raises(TypeError, match=r"WantsRows declares accepts_rows but does not derive from "
                                        r"grpo.rollout.BaseGenerator"):
        GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path), generator=WantsRows(inner))
    with pytest.raises(TypeError, match=r"int is not a generator: it has no generate"):
        as_generator(3)


class Declared(BaseGenerator):
    """Wraps a real generator and declares rows and versions: the source must honour both."""

    accepts_rows = True
    versioned = True

    def __init__(self, inner):
        self.inner, self.rows = inner, []

    def generate(self, prompts, n, sampling, rows=None):
        self.rows.append(rows)
        return [replace(r, policy_version=7) for r in self.inner.generate(prompts, n, sampling)]


def test_declared_capabilities_are_what_the_source_reads(tiny_dir, tmp_path):
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path))
    declared = Declared(trainer.generator)
    trainer.source.generator = declared
    step = trainer.source.collect(0).result()
    assert [r["tag"] for r in declared.rows[0]] and all(t.startswith("row") for t in
                                                        (r["tag"] for r in declared.rows[0]))
    assert {r.rollout.policy_version for r in step.trained} == {7}  # versioned: kept
    Declared.versioned = False  # not versioned: the source tags the step that asked
    try:
        step = trainer.source.collect(0).result()
        assert {r.rollout.policy_version for r in step.trained} == {0}
    finally:
        Declared.versioned = True
    trainer.close()


def test_multiturn_forwards_the_wrapped_generators_capabilities(tiny_dir, tmp_path):
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(4), cfg(tmp_path))
    hf = trainer.generator
    gen = MultiTurnGenerator(hf, environment=None, tools=[], max_turn_tokens=3)
    assert gen.policy_model is hf.model and gen.device == hf.device
    assert (gen.accepts_rows, gen.versioned, gen.sleep_enabled, gen.max_turn_tokens) == (True, False, False, 3)
    trainer.close()
    gen.close()
