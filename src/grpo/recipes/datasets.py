"""Dataset builders for recipes. Every row: ``prompt`` (chat messages) + reward columns.

The R1-Zero template (DeepSeek-R1 arXiv:2501.12948, Table 1) is the system instruction; the
question goes in the user turn, so the tokenizer's own chat template formats it.

A recipe's ``kwargs`` for a builder are checked against its parameters (:func:`build_dataset`):
a misspelt option is an error naming the closest one, never silently ignored.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from grpo.recipes.errors import RecipeError, did_you_mean

R1_ZERO_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves "
    "it. The assistant first thinks about the reasoning process in the mind and then provides the "
    "user with the answer. The reasoning process and answer are enclosed within <think> </think> "
    "and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)


def r1_zero_prompt(question: str, system: str = R1_ZERO_SYSTEM) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def gsm8k(split: str = "train") -> list[dict]:
    """GSM8K (Cobbe et al. 2021) from the HF hub; gold answer = the number after '####'."""
    from datasets import load_dataset

    ds = load_dataset("openai/gsm8k", "main", split=split)
    return [
        {
            "prompt": r1_zero_prompt(r["question"]),
            "answer": re.sub(r"[,\s]", "", r["answer"].split("####")[-1]),
        }
        for r in ds
    ]


def _countdown_options() -> set[str]:
    import dataclasses

    try:
        from reasoning_gym.factory import DATASETS as RG
    except ImportError as e:
        raise RecipeError(
            "dataset 'countdown' needs reasoning-gym: pip install 'grpo-r1[recipes]' "
            "(or pip install reasoning-gym)"
        ) from e

    return {f.name for f in dataclasses.fields(RG["countdown"][1])} - {"size", "seed"}


def countdown(
    split: str = "train", size: int = 10_000, seed: int = 0, **options: Any
) -> list[dict]:
    """Countdown (TinyZero's task) from reasoning-gym's generator; scored by CountdownReward.
    ``options``: reasoning-gym's ``CountdownConfig`` fields (``min_numbers``, ``max_target``,
    ...)."""
    import reasoning_gym

    data = reasoning_gym.create_dataset(
        "countdown", size=size, seed=seed + (0 if split == "train" else 1), **options
    )
    return [
        {
            "prompt": r1_zero_prompt(
                x["question"] + " Give the expression in <answer> </answer> tags."
            ),
            "numbers": list(x["metadata"]["numbers"]),
            "target": int(x["metadata"]["target"]),
        }
        for x in data
    ]


def tiny_arithmetic(split: str = "train", size: int | None = None, seed: int = 0) -> list[dict]:
    """The CPU demo's synthetic task (see grpo.recipes.tiny_task); "test" = the held-out
    problems."""
    from grpo.recipes.tiny_task import make_problems

    return make_problems(size=size, seed=seed, split=split)


def lab_arithmetic(
    split: str = "train",
    levels: list[int] | None = None,
    size: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """The lab task (grpo.recipes.lab_task): graded chains of 3-5 digits with + and -,
    ``size`` rows per level of ``levels`` (default all), each with a ``level`` column
    (``eval.by: [level]``)."""
    from grpo.recipes.lab_task import LEVELS, make_lab_dataset

    return make_lab_dataset(levels or list(LEVELS), split=split, seed=seed, size=size)


DATASETS: dict[str, Callable[..., list[dict]]] = {
    "gsm8k": gsm8k,
    "countdown": countdown,
    "tiny_arithmetic": tiny_arithmetic,
    "lab_arithmetic": lab_arithmetic,
}
HUB_DATASETS: dict[str, str] = {"gsm8k": "openai/gsm8k"}
"""Builders that download from the Hugging Face Hub, and the dataset repo they need."""


EXTRA_OPTIONS: dict[str, Callable[[], set[str]]] = {"countdown": _countdown_options}
"""Options a builder passes on through ``**options`` (checked like its own parameters)."""


def check_dataset(name: str, kwargs: dict[str, Any]) -> None:
    """Raise :class:`RecipeError` for an unknown builder or an option it does not take."""
    if name not in DATASETS:
        raise RecipeError(
            f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; known: {', '.join(DATASETS)}"
        )
    params = inspect.signature(DATASETS[name]).parameters.values()
    options = [p.name for p in params if p.name != "split" and p.kind != p.VAR_KEYWORD]
    options += sorted(EXTRA_OPTIONS[name]()) if name in EXTRA_OPTIONS else []
    for key in kwargs:
        if key not in options:
            raise RecipeError(
                f"dataset {name!r} has no option {key!r}{did_you_mean(key, options)} "
                f"(options: {', '.join(options) or 'none'})"
            )


def build_dataset(
    name: str, split: str = "train", limit: int | None = None, **kwargs: Any
) -> list[dict]:
    """Rows of builder ``name``; ``kwargs`` are checked first (:func:`check_dataset`)."""
    check_dataset(name, kwargs)
    try:
        rows = DATASETS[name](split=split, **kwargs)
    except (ValueError, TypeError) as e:
        if isinstance(e, RecipeError):
            raise
        raise RecipeError(f"dataset {name!r} (split {split!r}, kwargs {kwargs}): {e}") from e
    return rows[:limit] if limit else rows


# ------------------------------------------------------------------------------ a user's own data
FILE_FORMATS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
"""File suffix -> format of ``path:`` data. ``.jsonl`` is read line by line, each row as
written (no shared schema imposed: a row's extra field stays its own); the others go through
``datasets``' loaders (``load_dataset("json" | "parquet" | "csv", data_files=...)``)."""


class ColumnError(RecipeError, KeyError):
    """A column a data spec names is not in the data (a :class:`RecipeError` and a KeyError)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def describe(spec: Mapping[str, Any]) -> str:
    """How errors name a data spec's source: ``data file rows.jsonl``, ``hub dataset 'a/b'``..."""
    if spec.get("path"):
        return f"data file {spec['path']}"
    if spec.get("hub"):
        return f"hub dataset {spec['hub']!r}"
    return f"dataset {spec.get('builder')!r}"


def check_source(spec: Mapping[str, Any]) -> None:
    """The quick checks of a data spec, before anything is loaded: a builder's options, a file's
    existence and format. (A hub dataset's reachability: :func:`grpo.recipes.hub_problem`.)"""
    if spec.get("builder"):
        check_dataset(spec["builder"], dict(spec.get("kwargs") or {}))
    elif spec.get("path"):
        _file_format(Path(spec["path"]))


def _file_format(path: Path) -> str:
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise RecipeError(
            f"data file {path}: unknown format {path.suffix or '(no suffix)'!r}; "
            f"give a {' / '.join(FILE_FORMATS)} file"
        )
    if not path.is_file():
        raise RecipeError(f"data file {path} does not exist (relative paths start at {Path.cwd()})")
    return fmt


def _read_file(path: Path, kwargs: dict[str, Any]) -> list[dict]:
    fmt = _file_format(path)
    if fmt == "jsonl":
        if kwargs:
            raise RecipeError(f"data file {path}: a .jsonl file takes no kwargs (got {kwargs})")
        rows = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RecipeError(f"data file {path}, line {i}: not JSON ({e})") from e
        return rows
    import datasets

    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except (ValueError, TypeError, datasets.exceptions.DatasetGenerationError) as e:
        raise RecipeError(f"data file {path}: cannot read it as {fmt} ({e})") from e
    return [dict(r) for r in ds]


def _read_hub(spec: Mapping[str, Any]) -> list[dict]:
    import datasets

    hub, split = spec["hub"], spec.get("split", "train")
    try:
        ds = datasets.load_dataset(hub, spec.get("config"), split=split, **spec.get("kwargs", {}))
    except ConnectionError as e:  # offline, or the Hub unreachable (after datasets' retries)
        raise RecipeError(
            f"hub dataset {hub!r}: cannot reach it on the Hugging Face Hub ({e}). Download it "
            f"where the Hub is reachable, save its {split!r} split as a file "
            "(Dataset.to_json('rows.jsonl')) and give dataset: {path: rows.jsonl}"
        ) from e
    except (ValueError, datasets.exceptions.DatasetNotFoundError) as e:  # a wrong config/split
        raise RecipeError(
            f"hub dataset {hub!r} (config {spec.get('config')!r}, split {split!r}): {e}"
        ) from e
    columns = spec.get("columns")
    if isinstance(columns, list) and columns:  # before loading into memory (e.g. OpenR1-Math's
        missing = sorted(set(columns) - set(ds.column_names))  # multi-trace `generations`)
        if missing:
            raise ColumnError(
                f"hub dataset {hub!r}: columns {missing} are not in the data "
                f"(fields: {sorted(ds.column_names)})"
            )
        ds = ds.select_columns(columns)
    if spec.get("limit"):
        ds = ds.select(range(min(spec["limit"], len(ds))))
    return [dict(r) for r in ds]


def _apply_columns(rows: list[dict], columns: Any, where: str) -> list[dict]:
    """``columns``: a list keeps only those columns; a mapping ``{old: new}`` renames columns
    (the others are kept)."""
    fields = sorted(rows[0]) if rows else []
    if isinstance(columns, Mapping):
        for old, new in columns.items():
            missing = next((i for i, r in enumerate(rows) if old not in r), None)
            if missing is not None:
                raise ColumnError(
                    f"{where}: cannot rename column {old!r} to {new!r}: row {missing} has no "
                    f"{old!r}{did_you_mean(old, fields)} (fields: {sorted(rows[missing])})"
                )
            if new in fields and new not in columns:
                raise ColumnError(
                    f"{where}: renaming column {old!r} to {new!r} would overwrite the existing "
                    f"column {new!r}; rename that one too, or pick another name"
                )
        return [
            {columns.get(k, k): v for k, v in r.items()} for r in rows
        ]  # one pass: {a: b, b: a} swaps
    missing_cols = sorted(set(columns) - set(fields))
    if missing_cols:
        raise ColumnError(f"columns {missing_cols} are not in the data (fields: {fields})")
    return [{k: r[k] for k in columns} for r in rows]


def load_rows(spec: Mapping[str, Any]) -> list[dict]:
    """The rows of a data spec: exactly one of ``builder`` (:data:`DATASETS`), ``path`` (a
    :data:`FILE_FORMATS` file) or ``hub`` (a Hugging Face dataset id, with ``config``,
    ``split``); then ``limit`` (the first N rows), ``columns`` (a list: keep only those; a
    mapping ``{old: new}``: rename) and ``prompt_column`` (build each row's chat ``prompt`` from
    that column: the user turn, after ``system``, default :data:`R1_ZERO_SYSTEM`). ``kwargs``
    go to the builder or to ``datasets.load_dataset``.

    The one loader of ``grpo train``'s ``dataset:`` / ``eval_dataset:``, ``grpo sample`` and the
    pipeline's ``data:``. Mistakes raise :class:`RecipeError` naming the file, dataset or column.
    """
    where = describe(spec)
    kwargs = dict(spec.get("kwargs") or {})
    if spec.get("path"):
        rows = _read_file(Path(spec["path"]).expanduser(), kwargs)
    elif spec.get("builder"):
        rows = build_dataset(spec["builder"], spec.get("split") or "train", None, **kwargs)
    elif spec.get("hub"):
        rows = _read_hub(spec)
    else:
        raise RecipeError(f"a data spec needs one of builder / path / hub, got {dict(spec)}")
    rows = rows[: spec["limit"]] if spec.get("limit") else rows
    if spec.get("columns"):
        rows = _apply_columns(rows, spec["columns"], where)
    column = spec.get("prompt_column")
    if column:
        system = R1_ZERO_SYSTEM if spec.get("system") is None else spec["system"]
        head = [{"role": "system", "content": system}] if system else []
        missing = [i for i, r in enumerate(rows) if column not in r]
        if missing:
            raise ColumnError(
                f"{where}: prompt_column {column!r} is missing from row {missing[0]} "
                f"(fields: {sorted(rows[missing[0]])})"
            )
        rows = [{**r, "prompt": head + [{"role": "user", "content": str(r[column])}]} for r in rows]
    if not rows:
        raise RecipeError(f"{where} has no rows")
    return rows
