"""Resuming a run: what must match the checkpoint, what a changed setting does, what is
cleaned up, and when a run is already finished; and the run directory's own files."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import torch

from s2s.config import Config, TrainingConfig
from s2s.errors import ConfigError, writing

RESUME_KEYS = {"config", "model", "tokenizers", "optimizer", "scheduler", "sampler", "rng",
               "trainer"}
# what a resumed run must keep: the rest of the config may change (budgets, validation, ...)
KEPT_ON_RESUME = ("data", "model", "training.optimizer", "training.scheduler.type",
                  "training.early_stopping.metric")


def _lookup(tree: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _first_difference(a: Any, b: Any, path: str = "") -> Optional[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if a == b else f"{path} (checkpoint: {a!r}, now: {b!r})"


def config_disagreement(saved: Config, now: Config) -> Optional[str]:
    """The first key of :data:`KEPT_ON_RESUME` where ``now`` differs from the checkpoint's
    config, with both values; None when they agree."""
    old, new = saved.to_dict(), now.to_dict()
    for section in KEPT_ON_RESUME:
        found = _first_difference(_lookup(old, section), _lookup(new, section), section)
        if found:
            return found
    return None


def finished_by(cfg: TrainingConfig, state: Any, epoch: int) -> Optional[tuple[str, str]]:
    """Why a finished run (``state``, the sampler at ``epoch``) would stop again at once under
    ``cfg`` — and the override that extends it — or None when ``cfg`` lets it go on."""
    es = cfg.early_stopping
    reasons = [
        (bool(cfg.max_steps) and state.step >= cfg.max_steps,
         f"its max_steps {cfg.max_steps} are done", f"training.max_steps={2 * state.step}"),
        (bool(cfg.max_epochs) and epoch >= cfg.max_epochs,
         f"its max_epochs {cfg.max_epochs} are done", f"training.max_epochs={2 * cfg.max_epochs}"),
        (bool(cfg.max_minutes) and state.elapsed >= 60 * cfg.max_minutes,
         f"its max_minutes {cfg.max_minutes:g} are used",
         f"training.max_minutes={2 * cfg.max_minutes:g}"),
        (state.bad_validations >= es.patience,
         f"early stopping: {es.metric} did not improve for {state.bad_validations} validations",
         f"training.early_stopping.patience={state.bad_validations + es.patience}"),
    ]
    return next(((why, extension) for ended, why, extension in reasons if ended), None)


def apply_changed_settings(optimizer: torch.optim.Optimizer, scheduler: Any,
                           now: TrainingConfig, saved: TrainingConfig) -> list[str]:
    """Settings the restored optimizer and scheduler state would hide: a value changed since
    the checkpoint (``--set`` on a resume) is applied; the seed cannot be (the data order and
    random state continue). Returns what to log."""
    changed = []
    group_keys = {"learning_rate": "lr", "betas": "betas", "weight_decay": "weight_decay"}
    for key, group_key in group_keys.items():
        if getattr(now, key) != getattr(saved, key):
            changed.append(key)
            value = tuple(now.betas) if key == "betas" else getattr(now, key)
            for group in optimizer.param_groups:
                group[group_key] = value
                if key == "learning_rate" and "initial_lr" in group:
                    group["initial_lr"] = value
    if "learning_rate" in changed and isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.base_lrs = [now.learning_rate] * len(optimizer.param_groups)
        factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
        for group in optimizer.param_groups:
            group["lr"] = now.learning_rate * factor
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        for key in ("factor", "patience", "min_lr"):
            if getattr(now.scheduler, key) != getattr(saved.scheduler, key):
                changed.append(f"scheduler.{key}")
        scheduler.factor, scheduler.patience = now.scheduler.factor, now.scheduler.patience
        scheduler.min_lrs = [now.scheduler.min_lr] * len(optimizer.param_groups)
    new, old = dataclasses.asdict(now), dataclasses.asdict(saved)
    messages = [f"training.{key} is now {_lookup(new, key)} (was {_lookup(old, key)}): applied"
                for key in changed]
    if now.seed != saved.seed:
        messages.append(f"training.seed is now {now.seed} (was {saved.seed}): not applied, the "
                        f"data order and random state continue from the checkpoint")
    return messages


def _record_step(line: str) -> float:
    """The step of one metrics.jsonl line; a torn last line (a kill mid-write) counts as past
    every step."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def truncate_metrics(path: Path, step: int) -> int:
    """Drop the records of metrics.jsonl ``path`` past ``step`` (written after the checkpoint
    by a run that was then killed, or by one resumed from an earlier checkpoint), so that the
    file describes one run; return how many."""
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _record_step(line) <= step]
    if len(kept) < len(lines):
        temporary = path.with_name(path.name + ".tmp")
        with writing(path):
            temporary.write_text("".join(kept), encoding="utf-8")
            os.replace(temporary, path)
    return len(lines) - len(kept)


def run_directory(name: str) -> Path:
    """``training.output_dir`` as a path; an empty value (an unset shell variable) or one that
    is the current, home or root directory is refused: a run writes and --overwrite deletes
    there."""
    if not name.strip():
        raise ConfigError("config key 'training.output_dir': empty; name the run's directory "
                          "(e.g. runs/NAME)")
    path = Path(name)
    resolved = path.resolve()
    special = {Path(resolved.anchor): "the root", Path.home().resolve(): "the home",
               Path.cwd().resolve(): "the current"}
    if resolved in special:
        raise ConfigError(f"config key 'training.output_dir': '{name}' is {special[resolved]} "
                          f"directory; name a directory of its own for the run (e.g. runs/NAME)")
    return path


def numbered_checkpoints(directory: Path) -> list[Path]:
    """The ``step_N.pt`` files of a run, oldest first (other names are not the toolkit's)."""
    found = [p for p in directory.glob("step_*.pt") if p.stem[len("step_"):].isdigit()]
    return sorted(found, key=lambda p: int(p.stem[len("step_"):]))
