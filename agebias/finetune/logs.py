"""Per-epoch metric logs: ``metrics.csv`` (rewritten atomically from the history) and TensorBoard when installed.

Columns: ``epoch`` (1-based), ``loss`` (mean training loss), ``lr`` (at the epoch's end), ``val_eer``,
``val_fnmr_at_fmr_1e-3``, ``time`` (seconds the epoch took, validation included), then any extra columns
(per-term losses of mitigation methods, ``val_fmr_realised``, pair counts, FG-NET results, ...).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from agebias.atomic import write_text

BASE_COLUMNS = ("epoch", "loss", "lr", "val_eer", "val_fnmr_at_fmr_1e-3", "time")


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    extra: list[str] = []
    for row in history:
        extra.extend(k for k in row if k not in BASE_COLUMNS and k not in extra and not isinstance(row[k], (dict, list)))
    columns = list(BASE_COLUMNS) + extra
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    write_text(path, buf.getvalue())


def _fmt(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


class TensorBoardLog:
    """Scalars to ``RUN_DIR/tensorboard`` when the ``tensorboard`` package is installed (a no-op otherwise)."""

    def __init__(self, folder: Path, enabled: bool = True, start_epoch: int = 0):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(str(folder), purge_step=start_epoch + 1 if start_epoch else None)

    def log(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(float(value)):
                self.writer.add_scalar(key, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
