"""The composition matrix: which settings of a run combine, declared in one place.

A run combines choices along independent **axes** (the generator backend, LoRA, the KL term,
distillation, the reward's kind, ...). For every pair of values of two axes this module says
one of:

* **works**: some row of :func:`covering_rows` holds the pair, and ``tests/test_compat.py``
  trains that row for two steps on a tiny model (weights change, every metric finite);
* **refused** (:data:`REFUSED`): the library refuses the pair when the config or the trainer is
  built, with a message naming both settings (the test checks it does);
* **impossible** (:data:`IMPLIED`): no pair refusal names it, but every run holding it contains a
  refused pair (e.g. no reward needs a teacher, and a teacher refuses dynamic sampling);
* **silently wrong** (:data:`SILENT`): accepted, but not what the user asked for; listed until
  the library refuses or fixes it;
* **untested** (:data:`UNTESTED`): expected to work, left out of the rows to bound their cost.

The ``processes`` axis (1, 2 data parallel, 2 FSDP) is trained under ``torchrun`` (one launch for
all its rows, :func:`run_jobs`); ``rollout.backend='vllm_server'``'s pairs are declared
untested here (each row would start a server) and trained by ``tests/test_rollout_server.py``,
and the behaviour corrections other than TIS
(``loss.correction``: they act only with a vLLM backend's or an asynchronous generator's
log-probs, a three-way condition the pairs cannot state) to ``tests/test_corrections.py``, which
trains one asynchronously.

``python -m grpo.compat`` prints ``docs/compatibility.md`` (:func:`render_page`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AXES",
    "IMPLIED",
    "REFUSED",
    "SILENT",
    "UNTESTED",
    "Axis",
    "Pair",
    "Setup",
    "Value",
    "all_pairs",
    "build",
    "covering_rows",
    "engine_row",
    "feasible",
    "refusal_row",
    "render_page",
    "status",
]


# ----------------------------------------------------------------------------- what a run is
@dataclass
class Setup:
    """Everything ``GRPOTrainer(...)`` receives for one row; the values of the row edit it."""

    model_dir: Path
    config: dict[str, Any]
    rewards: list[Any]
    dataset: list[dict[str, Any]]
    model: Any = None  # a path (str) or a loaded model
    kwargs: dict[str, Any] = field(default_factory=dict)

    def set(self, dotted: str, value: Any) -> None:
        """``set("loss.beta", 0.04)`` into the nested config dict."""
        *sections, key = dotted.split(".")
        node = self.config
        for s in sections:
            node = node.setdefault(s, {})
        node[key] = value

    def tokenizer(self) -> Any:
        if "tokenizer" not in self.kwargs:
            from transformers import AutoTokenizer

            self.kwargs["tokenizer"] = AutoTokenizer.from_pretrained(self.model_dir)
        return self.kwargs["tokenizer"]

    def loaded_model(self) -> Any:
        """The policy as a loaded model (for arguments built on it, e.g. ``generator=``)."""
        if isinstance(self.model, str):
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_pretrained(self.model_dir)
            self.tokenizer()
        return self.model

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``GRPOTrainer`` (the config still a dict: ``GRPOConfig(**...)``
        is where the config refusals are raised)."""
        return dict(
            model=self.model,
            reward_funcs=self.rewards,
            train_dataset=self.dataset,
            config=self.config,
            **self.kwargs,
        )


@dataclass(frozen=True)
class Value:
    """One value of an axis: how it edits a :class:`Setup` (``config``: dotted keys set;
    ``apply``: anything else), and what it means."""

    name: str
    doc: str
    config: Mapping[str, Any] = field(default_factory=dict)
    apply: Callable[[Setup], None] | None = None

    def __call__(self, setup: Setup) -> None:
        for key, v in self.config.items():
            setup.set(key, v)
        if self.apply is not None:
            self.apply(setup)


@dataclass(frozen=True)
class Axis:
    """A choice users make; ``setting`` is how the library's messages name it."""

    name: str
    setting: str
    values: tuple[Value, ...]

    def value(self, name: str) -> Value:
        for v in self.values:
            if v.name == name:
                return v
        raise KeyError(f"axis {self.name} has no value {name!r}")


# ----------------------------------------------------------------------------- the pieces
def _text(completion: Any) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def _checksum(text: str) -> float:
    """Dense and arbitrary: nearly every completion of a random tiny model scores differently,
    so every group carries signal (for mechanics, not learning)."""
    return sum(map(ord, text)) % 13 / 13


def checksum_function(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """A trl-style reward function."""
    return [_checksum(_text(c)) for c in completions]


def _task_reward(task: str) -> Callable[..., list[float | None]]:
    def reward(completions: Sequence[Any], task_name: Sequence[str], **kwargs: Any) -> list:
        return [
            _checksum(_text(c)) + (0.5 if task == "add" else 0) if t == task else None
            for c, t in zip(completions, task_name, strict=True)
        ]

    reward.__name__ = f"{task}_reward"
    return reward


def _reward_object(setup: Setup) -> None:
    from grpo.rewards import Reward

    class Checksum(Reward):
        def score(self, completion: Any, **example: Any) -> float:
            return _checksum(_text(completion))

    setup.rewards = [Checksum()]


def _reward_function(setup: Setup) -> None:
    setup.rewards = [checksum_function]


def _reward_multitask(setup: Setup) -> None:
    setup.rewards = [_task_reward("add"), _task_reward("say")]


def _reward_none(setup: Setup) -> None:
    setup.rewards = []


def _reward_trl(setup: Setup) -> None:
    import trl.rewards

    for example in setup.dataset:  # accuracy_reward's gold column
        example["solution"] = str(sum(map(ord, example["prompt"][-1]["content"])) % 10)
    setup.rewards = [
        trl.rewards.accuracy_reward,
        trl.rewards.think_format_reward,
        trl.rewards.get_repetition_penalty_reward(ngram_size=1, max_penalty=-1.0),
        checksum_function,  # trl's score a random tiny model's completions alike: no signal
    ]


def _reward_model(setup: Setup) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from grpo.rewards.reward_model import RewardModelReward

    tokenizer = setup.tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    )
    with torch.random.fork_rng():
        torch.manual_seed(3)  # the same random classifier on every process
        classifier = LlamaForSequenceClassification(config).eval()
    setup.rewards = [RewardModelReward(classifier, tokenizer, device="cpu")]


def _lora(setup: Setup) -> None:
    from peft import LoraConfig

    setup.kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def _given_generator(setup: Setup) -> None:
    from grpo.rollout import HFGenerator

    model = setup.loaded_model()
    setup.kwargs["generator"] = HFGenerator(model, setup.tokenizer())


def _teacher(setup: Setup) -> None:
    from grpo.tiny import build_tiny_llama

    # the student's tokenizer and the shape tests/conftest.py saves (hidden 64, 2 heads of 32)
    setup.kwargs["teacher"] = build_tiny_llama(
        setup.tokenizer(), hidden_size=64, num_layers=2, num_heads=2, head_dim=32, seed=7
    )


def multiply(code: str) -> str:
    """Multiplies two integers.

    Args:
        code: "a*b"
    """
    a, _, b = code.partition("*")
    return str(int(a) * int(b))


def _multiturn(setup: Setup) -> None:
    def wrap(generator: Any) -> Any:
        from grpo.rollout.multiturn import MultiTurnGenerator
        from grpo.rollout.tools import CodeBlockParser

        return MultiTurnGenerator(
            generator, tools=[multiply], parser=CodeBlockParser(), max_turns=2, render_tools=False
        )

    setup.kwargs["wrap_generator"] = wrap


# ----------------------------------------------------------------------------- the declaration
V = Value
AXES: tuple[Axis, ...] = (
    Axis(
        "backend",
        "rollout.backend",
        (
            V("hf", "transformers generates with the trained model", {"rollout.backend": "hf"}),
            V("vllm", "a colocated vLLM engine", {"rollout.backend": "vllm"}),
            V(
                "vllm_server",
                "a trl vllm-serve server (weights pushed over its communicator)",
                {"rollout.backend": "vllm_server"},
            ),
        ),
    ),
    Axis(
        "async",
        "async.staleness",
        (
            V("off", "synchronous rollouts"),
            V(
                "on",
                "rollouts one step ahead (an HF copy in a child process, or the vLLM engine)",
                {"async.staleness": 1},
            ),
        ),
    ),
    Axis(
        "multiturn",
        "wrap_generator",
        (
            V("off", "one completion per prompt"),
            V(
                "on",
                "tool-using trajectories (wrap_generator=MultiTurnGenerator)",
                apply=_multiturn,
            ),
        ),
    ),
    Axis(
        "lora",
        "peft_config",
        (
            V("off", "full fine-tuning"),
            V("on", "LoRA adapters (peft_config=LoraConfig(...))", apply=_lora),
        ),
    ),
    Axis(
        "generator",
        "generator",
        (
            V("built", "the trainer builds the generator rollout.backend names"),
            V(
                "given",
                "generator=HFGenerator(model, tokenizer), built by the user (it replaces the "
                "generator rollout.backend names)",
                apply=_given_generator,
            ),
        ),
    ),
    Axis(
        "beta",
        "loss.beta",
        (
            V("0", "no KL term, no reference model", {"loss.beta": 0.0}),
            V(">0", "KL to a reference model", {"loss.beta": 0.04}),
        ),
    ),
    Axis(
        "tis",
        "loss.use_tis",
        (
            V("off", "no correction for the sampler's numerics"),
            V("on", "truncated importance sampling", {"loss.use_tis": True}),
        ),
    ),
    Axis(
        "mu",
        "optim.num_iterations",
        (
            V("1", "one pass over each step's rollouts"),
            V("2", "two passes (off-policy after the first)", {"optim.num_iterations": 2}),
        ),
    ),
    Axis(
        "objective",
        "loss.objective",
        (
            V("grpo", "the clipped surrogate (GRPO; DAPO clip-higher, GSPO by its settings)"),
            V(
                "cispo",
                "CISPO: clipped, detached IS weight x REINFORCE",
                {"loss.objective": "cispo"},
            ),
            V("sapo", "SAPO: sigmoid-gated soft trust region", {"loss.objective": "sapo"}),
            V(
                "gmpo",
                "GMPO: geometric mean of the token ratios (sequence mean aggregation)",
                {"loss.objective": "gmpo", "loss.aggregation": "seq_mean_token_mean"},
            ),
            V("dppo", "DPPO: total-variation trust-region mask", {"loss.objective": "dppo"}),
        ),
    ),
    Axis(
        "estimator",
        "rollout.advantage_estimator",
        (
            V("grpo", "group mean and std"),
            V("maxrl", "MaxRL: (r - mean) / mean", {"rollout.advantage_estimator": "maxrl"}),
            V(
                "gdpo",
                "GDPO: each reward component normalised in its group, then summed",
                {"rollout.advantage_estimator": "gdpo"},
            ),
        ),
    ),
    Axis(
        "entropy",
        "loss.entropy_coef",
        (
            V("off", "no entropy bonus"),
            V("on", "entropy bonus 0.01", {"loss.entropy_coef": 0.01}),
        ),
    ),
    Axis(
        "length_penalty",
        "rollout.length_penalty",
        (
            V("off", "no length penalty"),
            V("on", "pass-rate-scaled length penalty 0.25", {"rollout.length_penalty": 0.25}),
        ),
    ),
    Axis(
        "dynamic_sampling",
        "rollout.dynamic_sampling",
        (
            V("off", "every sampled group is trained on"),
            V("on", "DAPO dynamic sampling", {"rollout.dynamic_sampling": True}),
        ),
    ),
    Axis(
        "teacher",
        "distill.teacher",
        (
            V("none", "no distillation"),
            V("model", "on-policy distillation from a teacher (teacher=model)", apply=_teacher),
        ),
    ),
    Axis(
        "sampling",
        "sampling.top_p",
        (
            V("full", "the full softmax at temperature 1"),
            V("top_p", "nucleus sampling, top_p=0.9", {"sampling.top_p": 0.9}),
        ),
    ),
    Axis(
        "padding_free",
        "forward.padding_free",
        (
            V("on", "packed log-prob passes"),
            V("off", "padded log-prob passes", {"forward.padding_free": False}),
        ),
    ),
    Axis(
        "gradient_checkpointing",
        "forward.gradient_checkpointing",
        (
            V("off", "activations kept"),
            V("on", "activations recomputed", {"forward.gradient_checkpointing": True}),
        ),
    ),
    Axis(
        "reward",
        "reward_funcs",
        (
            V("Reward", "a grpo.rewards.Reward object", apply=_reward_object),
            V("function", "a trl-style function", apply=_reward_function),
            V(
                "multitask",
                "two trl-style functions, each None off its task",
                apply=_reward_multitask,
            ),
            V("none", "no reward function (pure distillation needs a teacher)", apply=_reward_none),
            V(
                "trl",
                "trl's own trl.rewards functions (accuracy_reward on a solution column, "
                "think_format_reward, get_repetition_penalty_reward) beside a checksum function",
                apply=_reward_trl,
            ),
            V(
                "reward_model",
                "a sequence-classification reward model (grpo.rewards.RewardModelReward)",
                apply=_reward_model,
            ),
        ),
    ),
    Axis(
        "processes",
        "processes",
        (
            V("1", "one process"),
            V("2dp", "2 processes, data parallel (torchrun --nproc_per_node 2, gloo on CPU)"),
            V("2fsdp", "2 processes, FSDP2 (forward.fsdp=True)", {"forward.fsdp": True}),
        ),
    ),
)
_AXIS = {a.name: a for a in AXES}

Pair = tuple[tuple[str, str], tuple[str, str]]
"""``(("backend", "vllm"), ("async", "on"))``, the axes in :data:`AXES` order."""


def pair(a: str, x: str, b: str, y: str) -> Pair:
    """A pair in canonical order (the axis declared first comes first)."""
    names = [ax.name for ax in AXES]
    for axis, value in ((a, x), (b, y)):
        _AXIS[axis].value(value)  # a typo fails here
    first, second = (a, x), (b, y)
    return (first, second) if names.index(a) < names.index(b) else (second, first)


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str  # a fragment of the library's message (a regular expression's literal text)
    where: str  # where the library refuses it
    names_both: bool = True  # the message names both settings (False: a vaguer message, to fix)


REFUSED: dict[Pair, Refusal] = {
    pair("backend", "hf", "tis", "on"): Refusal(
        "TIS corrects for a separate engine's numerics; HF samples with the trained model",
        "loss.use_tis corrects for a separate rollout engine's numerics",
        "GRPOConfig",
    ),
    pair("async", "on", "generator", "given"): Refusal(
        "the given HFGenerator samples from the trained model, which changes while the next "
        "step is sampled",
        "samples from the trained model object itself",
        "GRPOTrainer",
    ),
    pair("estimator", "maxrl", "reward", "reward_model"): Refusal(
        "MaxRL reads rewards as pass rates in [0, 1]; a reward model's scores are unbounded",
        "divides by each group's mean reward",
        "GRPOTrainer",
    ),
    pair("estimator", "gdpo", "length_penalty", "on"): Refusal(
        "GDPO normalises each reward component, so a penalty on the total would do nothing",
        "which rollout.advantage_estimator='gdpo' does not read",
        "GRPOConfig",
    ),
    pair("lora", "on", "generator", "given"): Refusal(
        "a given generator would sample from the model before the adapters wrap it",
        "generator= holds a model of its own",
        "GRPOTrainer",
    ),
    pair("generator", "given", "tis", "on"): Refusal(
        "the given HF generator samples with the trained model itself",
        "the HF generator samples with the trained model itself",
        "GRPOTrainer",
    ),
    pair("dynamic_sampling", "on", "teacher", "model"): Refusal(
        "dynamic sampling keeps only groups whose task rewards differ, dropping the teacher's "
        "signal",
        "dynamic sampling keeps only groups whose task rewards differ",
        "GRPOTrainer (GRPOConfig for distill.teacher given as a path)",
    ),
    pair("teacher", "model", "sampling", "top_p"): Refusal(
        "the distillation term would compare a truncated distribution with the teacher's full one",
        "a biased advantage",
        "GRPOTrainer (GRPOConfig for distill.teacher given as a path)",
    ),
    pair("lora", "on", "processes", "2fsdp"): Refusal(
        "LoRA adapters are small: train them data parallel",
        "forward.fsdp=True with a peft_config is not supported",
        "GRPOTrainer (on any number of processes)",
    ),
    pair("dynamic_sampling", "on", "processes", "2fsdp"): Refusal(
        "processes would keep different numbers of groups, and a sharded forward is a collective",
        "rollout.dynamic_sampling with forward.fsdp=True is not supported yet",
        "GRPOTrainer (under torchrun; one process trains unsharded)",
    ),
    pair("teacher", "none", "reward", "none"): Refusal(
        "nothing to learn from: no reward and no teacher",
        "reward_funcs is empty",
        "GRPOTrainer",
    ),
}
"""Pairs the library refuses at construction, with a fragment of its message."""

SILENT: dict[Pair, str] = {}
"""Pairs the library accepts but does not honour; kept out of the rows until refused or fixed."""

IMPLIED: dict[Pair, str] = {
    pair("dynamic_sampling", "on", "reward", "none"): (
        "no reward needs a teacher, and a teacher refuses dynamic sampling"
    ),
    pair("sampling", "top_p", "reward", "none"): (
        "no reward needs a teacher, and a teacher refuses top_p"
    ),
}
"""Pairs no run can hold, since every run holding them holds a refused pair."""

_ENGINE_FREE = (
    "rewards score decoded text, whatever engine sampled it; each vLLM row starts an engine "
    "(~30-40 s on CPU), so the vLLM rows use the Reward and no-reward kinds, and the HF rows "
    "cover the rest"
)
_SERVER = (
    "each row would start a `trl vllm-serve` server (a minute on CPU); "
    "tests/test_rollout_server.py trains through a real one (weights pushed, versions followed) "
    "and checks its refusals"
)
_LOSS_SIDE = (
    "the objective and the estimator read log-probs and rewards, whatever engine sampled them; "
    "each vLLM row starts an engine, so the HF rows cover them"
)
_SHARDED_LOSS = (
    "a token-level objective sums over rows like grpo's clipped surrogate "
    "(tests/test_objectives.py checks micro-batches with the full-batch normaliser add up); the "
    "2-process rows run cispo "
    "and the sequence-level gmpo"
)
_PER_PROCESS = (
    "each process scores its own groups with the one-process code; the rows with 2 processes "
    "(each a torchrun launch, the costly kind) use the Reward and reward-model kinds"
)
UNTESTED: dict[Pair, str] = {
    **{
        pair("backend", "vllm_server", axis.name, value.name): _SERVER
        for axis in AXES
        if axis.name != "backend"
        for value in axis.values
    },
    pair("backend", "vllm", "reward", "function"): _ENGINE_FREE,
    pair("backend", "vllm", "reward", "multitask"): _ENGINE_FREE,
    pair("tis", "on", "reward", "function"): "TIS needs vLLM; " + _ENGINE_FREE,
    pair("tis", "on", "reward", "multitask"): "TIS needs vLLM; " + _ENGINE_FREE,
    pair("backend", "vllm", "reward", "trl"): _ENGINE_FREE,
    pair("backend", "vllm", "reward", "reward_model"): _ENGINE_FREE,
    pair("tis", "on", "reward", "trl"): "TIS needs vLLM; " + _ENGINE_FREE,
    pair("tis", "on", "reward", "reward_model"): "TIS needs vLLM; " + _ENGINE_FREE,
    pair("dynamic_sampling", "on", "reward", "trl"): (
        "by design, not exercised: dynamic sampling judges a group's spread on the accuracy "
        "component (rollout.dynamic_sampling_metric), here trl's accuracy_reward, which the "
        "random tiny model never earns, so every group is dropped although the checksum gives "
        "the total a spread; a real run (or dynamic_sampling_metric='total') trains"
    ),
    pair("backend", "vllm", "processes", "2dp"): (
        "one colocated engine per process: tests/test_rollout_distributed.py trains it on 2 "
        "processes; a row here would start two engines"
    ),
    pair("backend", "vllm", "processes", "2fsdp"): (
        "a colocated engine per process syncing FSDP-sharded weights: not tested anywhere yet"
    ),
    pair("tis", "on", "processes", "2dp"): "TIS needs vLLM (see backend=vllm + processes=2dp)",
    pair("tis", "on", "processes", "2fsdp"): "TIS needs vLLM (see backend=vllm + processes=2fsdp)",
    **{
        pair(axis, value, "backend", "vllm"): _LOSS_SIDE
        for axis, values in (
            ("objective", ("cispo", "sapo", "gmpo", "dppo")),
            ("estimator", ("maxrl", "gdpo")),
        )
        for value in values
    },
    **{
        pair("objective", value, "tis", "on"): "TIS needs vLLM; " + _LOSS_SIDE
        for value in ("cispo", "sapo", "gmpo", "dppo")
    },
    **{
        pair("estimator", value, "tis", "on"): "TIS needs vLLM; " + _LOSS_SIDE
        for value in ("maxrl", "gdpo")
    },
    **{
        pair("objective", value, "processes", layout): _SHARDED_LOSS
        for value in ("sapo", "dppo")
        for layout in ("2dp", "2fsdp")
    },
    **{
        pair("reward", kind, "processes", layout): _PER_PROCESS
        for kind in ("function", "multitask", "trl", "none")
        for layout in ("2dp", "2fsdp")
    },
}
"""Pairs expected to work that no row holds, to bound the cost of the rows."""


# ----------------------------------------------------------------------------- pairs and rows
Row = dict[str, str]  # axis name -> value name, every axis


def all_pairs() -> Iterator[Pair]:
    """Every pair of values of two different axes, in declaration order."""
    for a, b in itertools.combinations(AXES, 2):
        for x in a.values:
            for y in b.values:
                yield ((a.name, x.name), (b.name, y.name))


def _forbidden(pair_: Pair) -> bool:
    return pair_ in REFUSED or pair_ in SILENT


def feasible(pair_: Pair) -> bool:
    """Some full row holds ``pair_`` without holding a refused (or silently wrong) pair."""
    (a, x), (b, y) = pair_
    return not _forbidden(pair_) and _complete_avoiding({a: x, b: y}, set()) is not None


def status(pair_: Pair) -> str:
    """works / refused / silently wrong / impossible / untested."""
    if pair_ in REFUSED:
        return "refused"
    if pair_ in SILENT:
        return "silently wrong"
    if pair_ in IMPLIED:
        return "impossible"
    if pair_ in UNTESTED:
        return "untested"
    return "works"


def _row_pairs(row: Mapping[str, str]) -> Iterable[Pair]:
    for a, b in itertools.combinations(AXES, 2):
        yield ((a.name, row[a.name]), (b.name, row[b.name]))


def covering_rows() -> list[Row]:
    """Rows (one value per axis) holding every pair whose status is "works", none holding a
    refused, silently wrong, impossible or untested pair. Greedy and deterministic: each row is
    the best of the candidates started from each uncovered pair, a candidate taking, axis by
    axis, the value covering the most uncovered pairs with the values already chosen (the
    earlier value on a tie) among those the row can still be completed with; the best covers the
    most uncovered pairs, and starts a vLLM engine only if no cheaper candidate covers as many
    (:func:`engine_row`)."""
    todo = [p for p in all_pairs() if status(p) == "works"]
    avoid = {p for p in all_pairs() if status(p) in ("impossible", "untested")}
    uncovered = set(todo)
    rows: list[Row] = []
    while uncovered:
        best: tuple[int, int] | None = None
        chosen: Row = {}
        for seed in (p for p in todo if p in uncovered):
            row = _grow(seed, uncovered, avoid)
            gain = sum(p in uncovered for p in _row_pairs(row))
            score = (gain, -engine_row(row), -processes(row))
            if best is None or score > best:
                best, chosen = score, row
        rows.append({a.name: chosen[a.name] for a in AXES})
        uncovered -= set(_row_pairs(chosen))
    return rows


def processes(row: Mapping[str, str]) -> int:
    """How many processes the row is launched on (``torchrun --nproc_per_node``)."""
    return 1 if row["processes"] == "1" else 2


def names(axis: str, value: str) -> tuple[str, ...]:
    """How a message may name the setting: the axis's, or a config key its value sets
    (``processes=2fsdp`` is ``forward.fsdp=True``)."""
    return (_AXIS[axis].setting, *_AXIS[axis].value(value).config)


def engine_row(row: Mapping[str, str]) -> bool:
    """The row starts a vLLM engine (the costly rows)."""
    return row["backend"] == "vllm" and row["generator"] == "built"


def _grow(seed: Pair, uncovered: set[Pair], avoid: set[Pair]) -> Row:
    (a, x), (b, y) = seed
    row: Row = {a: x, b: y}
    for axis in AXES:
        if axis.name in row:
            continue
        best, best_gain = None, -1
        for v in axis.values:
            new = [pair(axis.name, v.name, o, w) for o, w in row.items()]
            if any(_forbidden(p) or p in avoid for p in new):
                continue
            if _complete_avoiding({**row, axis.name: v.name}, avoid) is None:
                continue
            gain = sum(p in uncovered for p in new)
            if gain > best_gain:
                best, best_gain = v.name, gain
        if best is None:
            raise RuntimeError(f"row {row} cannot be completed (declaration inconsistent)")
        row[axis.name] = best
    return row


def _complete_avoiding(partial: Mapping[str, str], avoid: set[Pair]) -> Row | None:
    missing = [a for a in AXES if a.name not in partial]
    row = dict(partial)

    def ok(axis: str, value: str) -> bool:
        return not any(
            _forbidden(p) or p in avoid
            for p in (pair(axis, value, o, w) for o, w in row.items() if o != axis)
        )

    def search(i: int) -> bool:
        if i == len(missing):
            return True
        for v in missing[i].values:
            if ok(missing[i].name, v.name):
                row[missing[i].name] = v.name
                if search(i + 1):
                    return True
                del row[missing[i].name]
        return False

    return row if search(0) else None


def refusal_row(pair_: Pair) -> Row:
    """A row holding the refused ``pair_`` and no other refused or silently wrong pair (so the
    library's refusal is this pair's)."""
    (a, x), (b, y) = pair_
    others = {p for p in all_pairs() if _forbidden(p)} - {pair_}
    row = _complete_avoiding({a: x, b: y}, others)
    if row is None:
        raise RuntimeError(f"no row holds {pair_} alone")
    return row


def base_config(output_dir: str | Path) -> dict[str, Any]:
    """The settings every row shares: a tiny model, 2 steps of 2 prompts x 4 completions."""
    return {
        "output_dir": str(output_dir),
        "seed": 0,
        "max_steps": 2,
        "rollout": {"num_generations": 4, "prompts_per_step": 2, "max_prompt_length": 64},
        "sampling": {"max_tokens": 8},
        "optim": {"learning_rate": 1e-2},
        "loss": {"beta": 0.0},
        "vllm": {"enforce_eager": True, "dtype": "float32"},
        "log": {"progress_bar": False},
        "checkpoint": {"final_model": False},
    }


def dataset() -> list[dict[str, Any]]:
    """Chat prompts of two tasks (the multi-task reward's ``task_name`` column)."""
    return [
        {
            "prompt": [{"role": "user", "content": f"{'Add' if i % 2 else 'Say'} {i}"}],
            "task_name": "add" if i % 2 else "say",
        }
        for i in range(8)
    ]


def build(row: Mapping[str, str], model_dir: str | Path, output_dir: str | Path) -> Setup:
    """The ``GRPOTrainer`` arguments of ``row`` on the saved model ``model_dir``."""
    setup = Setup(Path(model_dir), base_config(output_dir), [], dataset(), model=str(model_dir))
    for axis in AXES:
        axis.value(row[axis.name])(setup)
    return setup


def run_jobs(jobs_file: str | Path) -> None:
    """Run the jobs of ``jobs_file`` on this process, one after another (the test launches it
    under ``torchrun`` for the rows and refused pairs with several processes:
    ``python -m grpo.compat --jobs FILE``). The file holds ``{"model_dir": ..., "jobs": [{"row":
    ..., "out": ..., "refusal": bool}]}``; each job writes ``result_rank{r}.json`` into its
    ``out``: ``{"changed": bool}`` for a trained row (some gathered weight moved), ``{"refused":
    message}`` for a ValueError at construction, ``{"error": ...}`` for anything else."""
    import json
    import os
    import traceback

    import torch

    from grpo import GRPOConfig, GRPOTrainer

    spec = json.loads(Path(jobs_file).read_text())

    def full(model: Any) -> dict[str, Any]:  # an FSDP2 shard is gathered: every process calls
        return {
            n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()
            if p.requires_grad
        }

    for job in spec["jobs"]:
        out = Path(job["out"])
        result: dict[str, Any] = {}
        rank = 0
        try:
            setup = build(job["row"], spec["model_dir"], out)
            args = setup.arguments()
            args["config"] = GRPOConfig(**args["config"])
            trainer = GRPOTrainer(**args)
            rank = trainer.accelerator.process_index
            try:
                before = full(trainer.model)
                trainer.train()
            finally:
                trainer.close()
            after = full(trainer.model)
            result["changed"] = bool(before) and any(
                not torch.equal(v, after[n]) for n, v in before.items()
            )
        except ValueError as e:
            result["refused" if job["refusal"] else "error"] = str(e)
        except Exception:  # noqa: BLE001 - reported to the test, which fails on it
            result["error"] = traceback.format_exc()[-3000:]
        rank = int(os.environ.get("RANK", rank))
        out.mkdir(parents=True, exist_ok=True)
        (out / f"result_rank{rank}.json").write_text(json.dumps(result))


# ----------------------------------------------------------------------------- the page
def _pair_text(p: Pair) -> str:
    (a, x), (b, y) = p
    return f"{a}={x} + {b}={y}"


def render_page() -> str:
    """``docs/compatibility.md``, generated from the declaration."""
    rows = covering_rows()
    names = [a.name for a in AXES]
    out = [
        "# Compatibility: which settings combine",
        "",
        "<!-- generated by `python -m grpo.compat > docs/compatibility.md`; edit "
        "src/grpo/compat.py -->",
        "",
        "A run combines choices along the axes below. `src/grpo/compat.py` declares, for every "
        "pair of values of two axes, whether it works or how the library refuses it; "
        "`tests/test_compat.py` trains every row of the covering table below for two steps on a "
        "tiny model (the weights change, every logged metric is finite, groups keep reward "
        "spread), builds every refused pair and checks the message names both settings, and "
        "checks that every pair is covered by a row or declared here.",
        "",
        "The rows with 2 processes run in one `torchrun` launch (the `distributed` marker). "
        "`rollout.backend='vllm_server'` is a value of the backend axis whose pairs are declared "
        "untested here (each row would start a server): `tests/test_rollout_server.py` trains "
        "through a real one.",
        "",
        "## Axes",
        "",
        "| axis | setting | values |",
        "|---|---|---|",
    ]
    for a in AXES:
        values = "; ".join(f"`{v.name}`: {v.doc}" for v in a.values)
        out.append(f"| {a.name} | `{a.setting}` | {values} |")
    out += [
        "",
        "## Refused pairs",
        "",
        "Refused when the config or the trainer is built, with a message naming both settings "
        "unless marked.",
        "",
        "| pair | why | refused by | message contains |",
        "|---|---|---|---|",
    ]
    for p, r in REFUSED.items():
        vague = "" if r.names_both else " (names neither setting: to improve)"
        out.append(f'| {_pair_text(p)} | {r.reason} | {r.where} | "{r.message}"{vague} |')
    sections = (
        ("Silently wrong pairs", "Accepted, but not honoured: avoid them.", SILENT),
        ("Impossible pairs", "No run holds them without a refused pair.", IMPLIED),
        ("Untested pairs", "Expected to work; no row holds them.", UNTESTED),
    )
    for title, lead, table in sections:
        out += ["", f"## {title}", "", lead, ""]
        if not table:
            out.append("None.")
            continue
        out += ["| pair | why |", "|---|---|"]
        out += [f"| {_pair_text(p)} | {why} |" for p, why in table.items()]
    total = sum(1 for _ in all_pairs())
    works = sum(status(p) == "works" for p in all_pairs())
    out += [
        "",
        "## Rows",
        "",
        f"Every other pair works: {works} of the {total} pairs, all held by these "
        f"{len(rows)} rows (a greedy pairwise covering, `grpo.compat.covering_rows`).",
        "",
        "| # | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for i, row in enumerate(rows):
        out.append(f"| {i} | " + " | ".join(row[n] for n in names) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--jobs"]:
        run_jobs(sys.argv[2])
    else:
        print(render_page(), end="")
