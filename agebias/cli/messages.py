"""Terminal lines the commands share: what was skipped and why, so that no non-zero exit is silent."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger("agebias.cli")

SHOWN = 5


def report_skipped(skipped: Iterable[Any], where: str) -> int:
    """Log how many inputs were skipped, the first few with their reasons, and where the full list is; return the
    exit code (1 when something was skipped, else 0). Items are Problems or ``{"path", "reason"}`` dicts."""
    items = [(getattr(p, "path", None) or p["path"], getattr(p, "reason", None) or p["reason"]) for p in skipped]
    if not items:
        return 0
    log.warning(f"{len(items)} input(s) skipped; the full list is in {where}")
    for path, reason in items[:SHOWN]:
        log.warning(f"  {path}: {reason}")
    if len(items) > SHOWN:
        log.warning(f"  ... and {len(items) - SHOWN} more")
    return 1


def read_skipped_csv(path: Path) -> list[dict[str, str]]:
    """The ``path,reason`` rows of a skipped.csv (empty when the file is absent)."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [{"path": row.get("path", ""), "reason": row.get("reason", "")} for row in csv.DictReader(fh)]
