"""Recipes: R1-Zero / R1 configurations as YAML, and what turns one into trainer inputs.

A recipe (:class:`grpo.recipes.schema.Recipe`) names a model, datasets, rewards and a
:class:`grpo.GRPOConfig`. This module resolves those names:

* rewards: a registry name (``math``, ``format``, ...) or a dotted path ``package.module:Name``
  to your own :class:`grpo.rewards.Reward` class (built with the spec's ``kwargs``) or trl-style
  reward function (:func:`build_rewards`);
* the model: a local folder, a Hugging Face Hub id (checked for reachability first, so an
  offline machine fails in seconds with what to do: :func:`hub_problem`), or ``tiny``: a tiny
  Llama built offline into the run folder (:func:`prepare_model`);
* recipes by packaged name (``r1_zero_gsm8k``) or path (:func:`find_recipe`).

:mod:`grpo.recipes.assemble` turns a resolved recipe into a trainer or an evaluation: the one
assembly path behind ``grpo train``, ``grpo eval`` and ``grpo pipeline``'s stages.

Mistakes in a recipe raise :class:`RecipeError`, a one-line message saying what to change.
"""

from __future__ import annotations

import importlib
import inspect
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpo.recipes.errors import RecipeError, did_you_mean  # noqa: F401 -- re-exported

if TYPE_CHECKING:
    from grpo.recipes.schema import Recipe, RewardSpec, TinyModelSpec

RECIPE_DIR = Path(__file__).parent
TINY_MODEL_DIR = "tiny_model"
"""``model: tiny`` is built into ``<output_dir>/tiny_model``."""


def find_recipe(name_or_path: str) -> Path:
    """A YAML path, or the name of a packaged recipe (``r1_zero_gsm8k``)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    packaged = RECIPE_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if packaged.exists():
        return packaged
    known = sorted(x.stem for x in RECIPE_DIR.glob("*.yaml"))
    raise RecipeError(
        f"no recipe file {name_or_path!r}{did_you_mean(p.stem, known)} (packaged recipes: "
        f"{', '.join(known)}; or give a path to a YAML file)"
    )


# ------------------------------------------------------------------------------ rewards
def reward_registry() -> dict[str, Callable[..., Any]]:
    """Reward names usable in recipes without a dotted path."""
    from grpo import rewards
    from grpo.recipes.countdown import CountdownReward

    return {
        "math": rewards.MathReward,
        "format": rewards.FormatReward,
        "code": rewards.CodeReward,
        "language": rewards.LanguageReward,
        "countdown": CountdownReward,
        "reward_model": rewards.RewardModelReward,
    }


def resolve_reward(name: str) -> Any:
    """A registry name, or ``package.module:Name`` (a Reward class or a trl-style function)."""
    registry = reward_registry()
    if name in registry:
        return registry[name]
    if ":" not in name:
        raise RecipeError(
            f"unknown reward {name!r}{did_you_mean(name, registry)}; known: {', '.join(registry)}, "
            "or a dotted path to your own, e.g. 'mypkg.rewards:Brevity'"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RecipeError(
            f"reward {name!r}: cannot import {module_name!r} ({e}); is it installed or on "
            "PYTHONPATH?"
        ) from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise RecipeError(
                f"reward {name!r}: {module_name!r} has no {attr!r}{did_you_mean(part, names)}"
            )
        obj = getattr(obj, part)
    return obj


def _init_params(cls: type) -> set[str]:
    """Keyword names a class accepts, over its whole ``__init__`` chain (``**kwargs`` passed up)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            params = inspect.signature(vars(klass)["__init__"]).parameters.values()
            names |= {
                p.name
                for p in params
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"
            }
    return names


def make_reward(name: str, kwargs: dict[str, Any]) -> Any:
    """One reward of a recipe: the class built with ``kwargs``, or the function as it is."""
    obj = resolve_reward(name)
    if not inspect.isclass(obj):
        if not callable(obj):
            raise RecipeError(
                f"reward {name!r} is a {type(obj).__name__}, not a Reward class or function"
            )
        if kwargs:
            raise RecipeError(
                f"reward {name!r} is a function: it takes no kwargs (got {sorted(kwargs)}); "
                "use functools.partial in your module, or a Reward class"
            )
        return obj
    known = _init_params(obj)
    for key in kwargs:
        if key not in known:
            raise RecipeError(
                f"reward {name!r} has no option {key!r}{did_you_mean(key, known)} "
                f"(options: {', '.join(sorted(known))})"
            )
    try:
        return obj(**kwargs)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"reward {name!r} with kwargs {kwargs}: {e}") from e


def build_rewards(specs: Sequence[RewardSpec]) -> tuple[list[Any], list[float]]:
    """(reward objects, weights) of a recipe's ``rewards:`` list, in order: each one built by
    :func:`make_reward` (unknown names, options and kwargs of a function are errors). The one
    reward builder of ``grpo train``, ``grpo eval``, ``grpo sample`` and ``grpo pipeline``."""
    made = [make_reward(spec.name, spec.kwargs) for spec in specs]
    return made, [spec.weight for spec in specs]


def check_recipe(recipe: Recipe) -> tuple[list[Any], list[float]]:
    """Every quick check before anything is downloaded or built: the dataset builders and their
    options, the data files (there, in a known format), the rewards (built) and the Hub.
    Returns :func:`build_rewards`'s result."""
    from grpo.recipes.datasets import check_source

    for spec in (recipe.dataset, recipe.eval_dataset):
        if spec is not None:
            check_source(spec.source())
    return build_rewards(recipe.rewards)


# ------------------------------------------------------------------------------ the model
def prepare_model(recipe: Recipe) -> str:
    """The path or hub id to train from. ``model: tiny`` builds the model (once) into
    ``<output_dir>/tiny_model``; a hub id is first checked for reachability
    (:func:`hub_problem`)."""
    if recipe.model == "tiny":
        import torch

        from grpo.guards import set_torch_threads
        from grpo.recipes.schema import TinyModelSpec

        # the warm-up runs under the run's thread setting, as the trainer will
        set_torch_threads(recipe.trainer.forward.torch_threads, cuda=torch.cuda.is_available())
        return str(
            build_tiny_model(
                Path(recipe.trainer.output_dir) / TINY_MODEL_DIR,
                recipe.tiny or TinyModelSpec(),
                progress=recipe.trainer.log.progress_bar,
            )
        )
    require_hub(recipe)
    return recipe.model


def build_tiny_model(folder: Path, spec: TinyModelSpec, progress: bool = True) -> Path:
    """Build the tiny Llama + character tokenizer of ``spec`` (``grpo.tiny``), warm it up on the
    CPU demo's sloppy teacher (``grpo.recipes.tiny_task``, R1's cold start in miniature) and save
    both with ``save_pretrained``. Reused when ``folder`` already holds the same spec.

    A warm-up is announced first (what, how long, how to shorten it: :func:`warmup_notice`);
    ``progress`` (``trainer.log.progress_bar``) shows its progress bar on a terminal."""
    import fcntl

    # several processes of one run (torchrun) reach here at once: one builds, the others wait for
    # its lock and then find the finished folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_tiny_model(folder, spec, progress)


WARMUP_SECONDS_PER_STEP = 0.25
"""Rough wall time of one warm-up step (64 rows, the default tiny model) on one CPU thread, for
the announcement's estimate only; the progress bar's ETA is the measured one."""


def warmup_notice(folder: Path, spec: TinyModelSpec) -> str:
    """The line announcing a tiny model's warm-up: what runs, about how long, how to shorten it."""
    minutes = spec.warmup_steps * WARMUP_SECONDS_PER_STEP / 60
    took = f"~{minutes:.0f} min" if minutes >= 1 else f"~{minutes * 60:.0f} s"
    shorter = (
        " Shorter: tiny.warmup_steps=5; the smoke form of a packaged CPU recipe (seconds): "
        "grpo train r1_zero_cpu --quick"
        if spec.warmup_steps > 50
        else ""
    )
    return (
        f"grpo: building the tiny model into {folder}: a supervised warm-up of "
        f"{spec.warmup_steps} steps first ({took} on a CPU; built once, reused by later runs "
        f"with the same tiny: settings).{shorter}"
    )


def _build_tiny_model(folder: Path, spec: TinyModelSpec, progress: bool = True) -> Path:
    import torch

    from grpo.recipes.tiny_task import make_problems, warmup_sft
    from grpo.tiny import build_char_tokenizer, build_tiny_llama

    stamp = folder / "grpo_tiny_spec.json"
    wanted = spec.model_dump()
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return folder
    if folder.exists() and not stamp.exists():
        raise RecipeError(
            f"{folder} exists but was not built by grpo (no {stamp.name}); move it away, or set "
            "trainer.output_dir to another folder"
        )
    tokenizer = build_char_tokenizer()
    torch.manual_seed(spec.seed)
    model = build_tiny_llama(
        tokenizer,
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        head_dim=spec.head_dim,
        seed=spec.seed,
    )
    if spec.warmup_steps:
        print(warmup_notice(folder, spec), flush=True)
        warmup_sft(
            model,
            tokenizer,
            make_problems(seed=spec.seed, split="train"),
            steps=spec.warmup_steps,
            seed=spec.seed,
            log_every=max(spec.warmup_steps // 8, 1),
            progress=progress,
        )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "grpo_tiny_spec.json").write_text(json.dumps(wanted, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _in_hub_cache(repo_id: str, repo_type: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    filename = "config.json" if repo_type == "model" else "README.md"
    return isinstance(try_to_load_from_cache(repo_id, filename, repo_type=repo_type), str)


def _probe(url: str, timeout: float) -> str | None:
    """None if ``url`` answers (any HTTP status), else why not."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError) as e:
        return f"{url} is unreachable ({getattr(e, 'reason', e)})"
    return None


def require_hub(recipe: Recipe, model: str | None = None) -> None:
    """Raise :class:`RecipeError` with :func:`hub_problem`'s message, if there is one."""
    problem = hub_problem(recipe, model)
    if problem:
        raise RecipeError(problem)


def hub_problem(recipe: Recipe, model: str | None = None, timeout: float = 5.0) -> str | None:
    """Why the Hub downloads the recipe needs cannot happen, or None.

    Nothing is needed from the Hub for a local model folder, ``tiny``, or a model / dataset
    already in the local Hugging Face cache. Otherwise ``HF_HUB_OFFLINE`` set, or an endpoint
    that does not answer within ``timeout`` seconds, is a problem: found before any download
    starts instead of a ``ConnectionError`` after transformers' retries."""
    from huggingface_hub import constants

    from grpo.recipes.datasets import HUB_DATASETS

    model = recipe.model if model is None else model
    needs = []
    if model != "tiny" and not Path(model).expanduser().exists():
        if model.startswith((".", "/", "~")) or model.count("/") != 1:
            return (
                f"model {model!r} is not a local folder (and not an 'org/name' Hugging Face Hub id)"
            )
        if not _in_hub_cache(model, "model"):
            needs.append(f"model {model}")
    for spec in (recipe.dataset, recipe.eval_dataset):
        repo = None if spec is None else spec.hub or HUB_DATASETS.get(spec.name or "")
        if repo and not _in_hub_cache(repo, "dataset") and f"dataset {repo}" not in needs:
            needs.append(f"dataset {repo}")
    if not needs:
        return None
    why = (
        "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _probe(constants.ENDPOINT, timeout)
    )
    if why is None:
        return None
    return (
        f"this recipe downloads {' and '.join(needs)} from the Hugging Face Hub, but {why}. "
        f"Download {'it' if len(needs) == 1 else 'them'} where the Hub is reachable "
        "(huggingface-cli download ...) and point model= at the local folder"
        + (
            " (a dataset: save it as a file, Dataset.to_json('rows.jsonl'), and give "
            "dataset: {path: rows.jsonl})"
            if any(n.startswith("dataset") for n in needs)
            else ""
        )
        + ", or train the packaged offline CPU recipe: grpo train r1_zero_cpu"
    )
