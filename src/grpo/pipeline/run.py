"""``run_pipeline``: run a multi-stage recipe, skipping the stages a previous run finished.

The run folder::

    recipe.yaml                   the whole recipe, as validated
    index.html                    every stage: status, numbers, links to its report and config
    stages/01_<name>/config.yaml  the stage's resolved config (references replaced by paths)
    stages/01_<name>/done.json    written last: the stage's outputs and summary
    stages/01_<name>/...          its model (model/), samples (samples/), report

A rerun skips every stage whose ``done.json`` holds the same resolved config, up to the first
stage that must run: unfinished, changed, or named by ``redo``; from there on every stage runs,
since its inputs may have changed. The folders are the pipeline's own, and a stage that runs
again replaces its folder (:func:`_plan_first`): the first stage to run keeps it only to resume
an interrupted run with the same settings (a ``sample`` stage resumes its chunks, a ``grpo`` stage
its latest checkpoint), or to re-apply the settings its runner re-applies to the work there
(:data:`grpo.pipeline.stages.REAPPLIED`: a sample stage's keep rule); ``redo``, any other change,
and an earlier stage having run start it clean. A folder the pipeline did not write (no
``config.yaml`` of that stage) is refused, never deleted.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpo.pipeline.pages import write_index
from grpo.pipeline.recipe import BASE, PipelineRecipe, Ref, check_recipe, model_source
from grpo.pipeline.stages import REAPPLIED, RUNNERS


@dataclass
class PipelineResult:
    run_dir: Path
    index: Path
    outputs: dict[str, dict[str, str]]
    """Per stage name: its outputs (``model`` folder, dataset JSONL files)."""
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def stage_folder(run_dir: Path, index: int, name: str) -> Path:
    return run_dir / "stages" / f"{index + 1:02d}_{name}"


def _expected_outputs(folder: Path, stage_type: str) -> dict[str, str]:
    if stage_type == "sample":
        return {
            "sft": str(folder / "samples" / "sft.jsonl"),
            "rl_prompts": str(folder / "samples" / "rl_prompts.jsonl"),
        }
    return {"model": str(folder / "model")}


def resolve(recipe: PipelineRecipe, run_dir: Path) -> list[dict[str, Any]]:
    """Each stage's config with its model and data references replaced by paths."""
    outputs: dict[str, dict[str, str]] = {BASE: {"model": recipe.model}}
    resolved = []
    for i, stage in enumerate(recipe.stages):
        cfg = stage.model_dump(
            mode="json", by_alias=True, exclude={"model", "data", "eval_data", "teacher"}
        )
        src = model_source(recipe, i)
        cfg["model"] = outputs[src.stage][src.output or "model"] if isinstance(src, Ref) else src
        teacher = getattr(stage, "teacher", None)
        if teacher is not None:
            cfg["teacher"] = (
                outputs[teacher.stage][teacher.output or "model"]
                if isinstance(teacher, Ref)
                else teacher
            )
        for key in ("data", "eval_data"):
            spec = getattr(stage, key, None)
            if spec is None:
                continue
            if spec.stage is not None:
                cfg[key] = {
                    "path": outputs[spec.stage][spec.output or "sft"],
                    "limit": spec.limit,
                    "columns": spec.columns,
                    "prompt_column": spec.prompt_column,
                    "system": spec.system,
                }
            else:
                cfg[key] = spec.model_dump(mode="json", exclude={"stage", "output"})
        outputs[stage.name] = _expected_outputs(
            stage_folder(run_dir, i, stage.name).resolve(), stage.type
        )
        resolved.append(cfg)
    return resolved


def run_pipeline(
    recipe: PipelineRecipe | str | Path,
    *,
    output_dir: str | Path | None = None,
    redo: str | None = None,
    overrides: list[str] | None = None,
) -> PipelineResult:
    """Check the whole recipe, then run its stages in order (see the module docstring).

    Args:
        recipe: a :class:`PipelineRecipe` or the path of its YAML file.
        output_dir: the run folder (default: the recipe's ``output_dir``).
        redo: run this stage again in a clean folder, even if finished (and every later stage).
        overrides: ``key=value`` edits of the YAML's top-level mappings (``output_dir=...``,
            ``model=...``).
    """
    import yaml

    if not isinstance(recipe, PipelineRecipe):
        recipe = PipelineRecipe.from_yaml(recipe, overrides)
    check_recipe(recipe)
    names = [s.name for s in recipe.stages]
    if redo is not None and redo not in names:
        raise ValueError(f"redo={redo!r} is not a stage of this recipe; stages: {names}")
    run_dir = Path(output_dir or recipe.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(
        yaml.safe_dump(
            recipe.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False
        )
    )
    configs = resolve(recipe, run_dir)
    folders = [stage_folder(run_dir, i, n) for i, n in enumerate(names)]
    first = _first_to_run(folders, configs, names, redo)
    for folder, name in list(zip(folders, names, strict=True))[first:]:
        _check_owned(folder, name)  # every folder about to be replaced, before anything runs
    entries = [
        {"name": s.name, "type": s.type, "folder": str(f.relative_to(run_dir)), "status": "pending"}
        for s, f in zip(recipe.stages, folders, strict=True)
    ]
    result = PipelineResult(run_dir, run_dir / "index.html", {})
    for i, (stage, folder, cfg) in enumerate(zip(recipe.stages, folders, configs, strict=True)):
        if i < first:
            done = json.loads((folder / "done.json").read_text())
            entries[i].update(status="done (skipped)", summary=done["summary"])
            result.outputs[stage.name], result.skipped = (
                done["outputs"],
                result.skipped + [stage.name],
            )
            print(f"[pipeline] {stage.name}: finished before, skipped", flush=True)
            continue
        if i == first:
            keep, why = _plan_first(folder, cfg, stage.type, stage.name == redo)
        else:
            keep, why = False, "an earlier stage ran again: starting it over in a clean folder"
        if folder.exists() and any(folder.iterdir()):
            print(f"[pipeline] {stage.name}: {why}", flush=True)
            if not keep:
                shutil.rmtree(folder)
        (folder / "done.json").unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        print(f"[pipeline] {stage.name}: running ({stage.type}) in {folder}", flush=True)
        t0 = time.perf_counter()
        entries[i]["status"] = "running"
        write_index(run_dir, entries)
        try:
            outputs, summary = RUNNERS[stage.type](folder, cfg)
        except BaseException:
            entries[i]["status"] = "failed"
            write_index(run_dir, entries)
            raise
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        (folder / "done.json").write_text(
            json.dumps(
                {"config": cfg, "outputs": outputs, "summary": summary}, indent=1, default=str
            )
        )
        entries[i].update(status="done", summary=summary)
        result.outputs[stage.name], result.ran = outputs, result.ran + [stage.name]
        write_index(run_dir, entries)
    write_index(run_dir, entries)
    return result


def _first_to_run(
    folders: list[Path], configs: list[dict], names: list[str], redo: str | None
) -> int:
    """Index of the first stage that must run (len(names) when all are finished)."""
    for i, (folder, cfg) in enumerate(zip(folders, configs, strict=True)):
        marker = folder / "done.json"
        if names[i] == redo or not marker.exists():
            return i
        if json.loads(marker.read_text())["config"] != _normal(cfg):
            return i
    return len(names)


def _plan_first(folder: Path, cfg: dict, stage_type: str, redo: bool) -> tuple[bool, str]:
    """Whether the first stage to run keeps its folder's work, and why (printed when the folder
    holds any). Kept: an interrupted run with the same settings (resumed), or one whose only
    changes are settings the runner re-applies to that work (``REAPPLIED``)."""
    if redo:
        return (
            False,
            "named by --redo: running it again in a clean folder, and every stage after it",
        )
    finished = (folder / "done.json").exists()
    record = folder / "done.json" if finished else folder / "config.yaml"
    if not record.exists():
        return False, "left files but no config.yaml: starting it over in a clean folder"
    if finished:
        stored = json.loads(record.read_text())["config"]
    else:
        import yaml

        stored = yaml.safe_load(record.read_text())
    cfg = _normal(cfg)
    changed = sorted(k for k in set(stored) | set(cfg) if stored.get(k) != cfg.get(k))
    before = "finished before" if finished else "stopped before finishing"
    if not changed:
        return True, f"{before}: resuming in its folder"
    what = f"{before} with other settings ({', '.join(changed)} changed)"
    if set(changed) <= REAPPLIED.get(stage_type, frozenset()):
        return True, f"{what}: re-applying them to the work in its folder, then every later stage"
    return False, f"{what}: running it again in a clean folder, and every stage after it"


def _normal(cfg: dict) -> dict:
    """The config as ``done.json`` / ``config.yaml`` store it (tuples as lists, ...)."""
    return json.loads(json.dumps(cfg, default=str))


def _check_owned(folder: Path, name: str) -> None:
    """Refuse to replace a stage folder the pipeline did not write: one holding files but no
    ``config.yaml`` of stage ``name`` (the pipeline writes it first, before the stage runs)."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    import yaml

    config = folder / "config.yaml"
    try:
        stored = yaml.safe_load(config.read_text()) if config.is_file() else None
    except yaml.YAMLError:
        stored = None
    if isinstance(stored, dict) and stored.get("name") == name:
        return
    held = sorted(p.name for p in folder.iterdir())
    raise FileExistsError(
        f"stage {name!r}'s folder {folder} holds files the pipeline did not write "
        f"({', '.join(held[:5])}{', ...' if len(held) > 5 else ''}; no config.yaml of stage "
        f"{name!r}), which running the stage would replace: move them away, or choose another "
        "output_dir"
    )
