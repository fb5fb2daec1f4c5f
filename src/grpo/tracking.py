"""Run logging: metrics JSONL, sampled completions JSONL, the config, trackers, a progress bar.

A run folder holds::

    config.yaml          the full GRPOConfig of the run
    metrics.jsonl        one JSON object per logged step: {"step": s, "<namespace>/<name>": v, ...}
    completions.jsonl    sampled completions per step with their rewards and advantages
    eval.jsonl           evaluation results (greedy / mean@k accuracy, format rate)

Metric keys are namespaced and documented in ``docs/metrics.md``. Only the main process writes.
tensorboard / wandb go through accelerate's trackers when ``report_to`` asks for them.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def tracker_config(
    config: Mapping[str, Any], prefix: str = ""
) -> dict[str, int | float | str | bool]:
    """The run config as trackers accept it: nested sections flattened to ``a/b`` keys, and
    lists, tuples and None written as text. tensorboard's hparams take only int, float, str,
    bool (a list such as ``stop: []`` made it raise at the first log)."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(tracker_config(value, prefix=f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


# the packages accelerate's tracker of each report_to name needs (any one of them)
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_trackers(report_to: list[str] | None) -> None:
    """Raise naming ``log.report_to`` when a tracker it asks for cannot be imported: accelerate
    would otherwise only log a debug line and the run would train unlogged."""
    for name in report_to or []:
        packages = TRACKER_PACKAGES.get(name, ())
        errors = []
        for package in packages:
            try:
                importlib.import_module(package)
                break
            except ImportError as e:
                errors.append(f"{type(e).__name__}: {e}")
        else:
            if packages:
                raise ImportError(
                    f"log.report_to={list(report_to)} asks for {name}, but "
                    f"{' / '.join(packages)} cannot be imported ({'; '.join(errors)}): install it "
                    f"(pip install {packages[0]}), or drop {name!r} from log.report_to"
                )


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    return v


class RunLogger:
    """Writes the run folder (main process only) and drives the progress bar."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        is_main: bool = True,
        accelerator=None,
        report_to: list[str] | None = None,
        total_steps: int = 0,
        start_step: int = 0,
        progress_bar: bool = True,
        config: Mapping[str, Any] | None = None,
    ):
        self.dir = Path(output_dir)
        self.is_main = is_main
        self.accelerator = accelerator if report_to else None
        self._bar = None
        if not is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._trim_logs(start_step)
        if self.accelerator is not None:
            self.accelerator.init_trackers("grpo", config=tracker_config(config or {}))
        if progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, desc="GRPO", unit="step", dynamic_ncols=True
            )
        self._t0 = time.perf_counter()

    LOGS = ("metrics.jsonl", "completions.jsonl", "eval.jsonl")

    def _trim_logs(self, start_step: int) -> None:
        """Keep only records up to ``start_step``: a fresh run (0) starts empty files, and a run
        resumed from a checkpoint drops what the interrupted run logged after it, so the logs
        never mix two runs or repeat a step."""
        for name in self.LOGS:
            path = self.dir / name
            if not path.exists():
                continue
            kept = [
                line
                for line in path.read_text().splitlines()
                if start_step and line.strip() and json.loads(line).get("step", 0) <= start_step
            ]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(path)

    def _append(self, name: str, record: Mapping[str, Any]) -> None:
        with open(self.dir / name, "a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.is_main:
            return
        self._append("metrics.jsonl", {"step": step, **metrics})
        if self.accelerator is not None:
            self.accelerator.log(_numbers(metrics), step=step)

    def log_completions(self, step: int, records: list[Mapping[str, Any]]) -> None:
        if self.is_main and records:
            for r in records:
                self._append("completions.jsonl", {"step": step, **r})

    def log_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.is_main:
            return
        self._append("eval.jsonl", {"step": step, **metrics})
        if self.accelerator is not None:
            self.accelerator.log(_numbers(metrics), step=step)
        if self._bar is not None:
            self._bar.write(
                f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            )

    def progress(self, metrics: Mapping[str, float]) -> None:
        if self._bar is None:
            return
        shown = {
            "reward": "reward/total/mean",
            "acc": "train/accuracy",
            "len": "completions/mean_length",
            "kl": "loss/kl",
        }
        self._bar.set_postfix(
            {k: f"{metrics[m]:.3g}" for k, m in shown.items() if m in metrics}, refresh=False
        )
        self._bar.update(1)

    def message(self, text: str) -> None:
        if not self.is_main:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.is_main and self.accelerator is not None:
            self.accelerator.end_training()


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries, as floats (trackers plot scalars; None and text are skipped)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
