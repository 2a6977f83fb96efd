"""What a fine-tuning run returns: :class:`FinetuneResult` (paths of its outputs and the per-epoch history)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class FinetuneResult:
    """Paths of a run's outputs and its per-epoch history (``rows``: plain dicts; ``history``: a DataFrame)."""

    run_dir: Path
    backbone_path: Path | None  # final backbone.pth (None while the run is unfinished)
    best_path: Path | None  # best/backbone.pth (None without validation)
    rows: list[dict[str, Any]]  # one row per completed epoch (the columns of metrics.csv)
    best_epoch: int | None = None  # 1-based
    completed: bool = True
    config_hash: str = ""
    onnx_path: Path | None = None
    epochs_done: int = 0

    @property
    def history(self):
        """The per-epoch metrics as a pandas DataFrame indexed by epoch (loss, lr, val_eer, ...)."""
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("epoch") if self.rows else pd.DataFrame()


def load_result(run_dir: Path) -> FinetuneResult:
    """The result of a finished run, read back from its ``done.json``."""
    done = json.loads((run_dir / "done.json").read_text(encoding="utf-8"))
    best = run_dir / "best" / "backbone.pth"
    onnx = run_dir / "model.onnx"
    return FinetuneResult(
        run_dir=run_dir, backbone_path=run_dir / "backbone.pth", best_path=best if best.is_file() else None,
        rows=done.get("history", []), best_epoch=done.get("best_epoch"), completed=True,
        config_hash=done.get("config_hash", ""), onnx_path=onnx if onnx.is_file() else None,
        epochs_done=int(done.get("epochs", 0)))
