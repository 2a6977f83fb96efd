"""The run directory: which run it holds, whether this call may continue it, and its record files.

A directory belongs to one run, identified by the hash of its training settings (config.json). Calling again with
the same settings returns the finished run (``done``) or, with ``resume``, continues the unfinished one from
``checkpoints/last.pt``. With ``resume`` a run also continues when the only training setting that changed is
``epochs``, the new value is larger, and the learning-rate schedule does not depend on the total (``none``, or
``step`` with explicit ``step_epochs``): config.json then records the new settings and the history goes on. Any
other change is refused with one line, and nothing in the directory is touched.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agebias.atomic import write_json, write_text
from agebias.errors import ModelError, UserError
from agebias.finetune.config import FinetuneConfig, diff_keys
from agebias.finetune.data import TrainingData
from agebias.finetune.result import FinetuneResult
from agebias.finetune.schedule import depends_on_total

RUN_KIND = "agebias-finetune"
FINAL_OUTPUTS = ("done.json", "backbone.pth", "model.onnx")  # written when a run finishes, in reverse order


@dataclass(frozen=True)
class RunDirState:
    """``kind``: ``new`` (nothing there), ``done`` (finished with these settings), ``resume`` (continue from
    checkpoints/last.pt) or ``restart`` (set up, but no epoch completed). ``extends_from``: the run's previous
    ``epochs`` when this call extends it to more."""

    kind: str
    extends_from: int | None = None


def epochs_change_refusal(old_epochs: int, config: FinetuneConfig) -> str | None:
    """Why a run set up for ``old_epochs`` cannot continue to ``config.epochs`` (None: it can)."""
    if config.epochs < old_epochs:
        return f"--epochs {config.epochs} cannot shorten this {old_epochs}-epoch run; start a new --out"
    reason = depends_on_total(config)
    if reason:
        return f"--epochs {config.epochs} cannot extend this run: its {reason}; start a new --out"
    return None


def check_run_dir(run_dir: Path, config: FinetuneConfig) -> RunDirState:
    """What ``run_dir`` holds and what this call does with it; raises :class:`UserError` for a directory holding
    anything else than this run, or a change of settings it cannot continue under (nothing is touched)."""
    if not run_dir.exists():
        return RunDirState("new")
    if not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a directory")
    if not any(run_dir.iterdir()):
        return RunDirState("new")
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"--out {run_dir} is not empty and holds no fine-tuning run (no config.json); "
                        f"choose another directory")
    try:
        old = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{cfg_path} is unreadable; choose another --out") from None
    if old.get("kind") != RUN_KIND:
        raise UserError(f"--out {run_dir} holds other output ({old.get('kind', 'unknown kind')}); choose another")
    extends_from = None
    if old.get("config_hash") != config.config_hash():
        old_config = old.get("config", {})
        keys = diff_keys(old_config, config.to_dict())
        if keys != ["epochs"]:
            raise UserError(f"--out {run_dir} holds another run (different {', '.join(keys) or 'settings'}); "
                            f"choose another directory or delete it")
        extends_from = int(old_config["epochs"])
        refusal = epochs_change_refusal(extends_from, config)
        if refusal:
            raise UserError(refusal)
    finished = (run_dir / "done.json").is_file()
    if finished and extends_from is None:
        return RunDirState("done")
    if (run_dir / "checkpoints" / "last.pt").is_file():
        if not config.resume:
            if extends_from is not None:
                raise UserError(f"--out {run_dir} holds a {extends_from}-epoch run; pass --resume to continue it "
                                f"to {config.epochs} epochs")
            raise UserError(f"--out {run_dir} holds an unfinished run with these settings; pass --resume to "
                            f"continue it")
        return RunDirState("resume", extends_from)
    if finished:
        raise UserError(f"--epochs {config.epochs} cannot extend the run in {run_dir}: its checkpoints/last.pt is "
                        f"missing; start a new --out")
    return RunDirState("restart")


def check_checkpoint(state: dict[str, Any], config: FinetuneConfig, path: Path) -> None:
    """Refuse a checkpoint of another run: its settings must be these, or these with fewer ``epochs`` (as far as
    the run may be extended)."""
    if state.get("config_hash") == config.config_hash():
        return
    old = state.get("config")
    if isinstance(old, dict) and diff_keys(old, config.training_dict()) == ["epochs"] \
            and epochs_change_refusal(int(old["epochs"]), config) is None:
        return
    raise ModelError(f"{path} belongs to a run with other settings; use another --out")


def forget_finish(run_dir: Path) -> None:
    """Before a finished run is extended: remove the files that mark it finished (done.json first)."""
    for name in FINAL_OUTPUTS:
        (run_dir / name).unlink(missing_ok=True)


def write_run_record(run_dir: Path, config: FinetuneConfig, data: TrainingData, model: dict[str, Any],
                     mitigation: Any, world_size: int, started_epoch: int) -> None:
    """config.json (every setting, config_hash, data/model summaries), classes.json, and skipped.csv when input
    files were left out."""
    import torch

    write_json(run_dir / "config.json", {
        "kind": RUN_KIND,
        "config_hash": config.config_hash(),
        "config": config.to_dict(),
        "data": data.summary,
        "model": model,
        "mitigation": mitigation,
        "world_size": world_size,
        "torch": torch.__version__,
        "started_epoch": started_epoch,
    })
    write_json(run_dir / "classes.json", data.class_names)
    if data.problems:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "reason"])
        for p in data.problems:
            w.writerow([p.path, p.reason])
        write_text(run_dir / "skipped.csv", buf.getvalue())


def write_done(run_dir: Path, result: FinetuneResult) -> None:
    """done.json, written last: the run is complete (read back by :func:`agebias.finetune.result.load_result`)."""
    write_json(run_dir / "done.json", {
        "config_hash": result.config_hash, "epochs": result.epochs_done, "best_epoch": result.best_epoch,
        "backbone": "backbone.pth", "best": "best/backbone.pth" if result.best_path else None,
        "onnx": "model.onnx" if result.onnx_path else None, "history": result.rows})
