"""Stage bookkeeping: a stage is skipped when its outputs are complete and its settings unchanged.

Each stage writes ``<out>/<stage>/stage.json`` (atomically, last) holding the hash of its settings, which include
the hashes of the stages it depends on, so a change upstream re-runs everything downstream.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from agebias.atomic import write_json

STATE_FILE = "stage.json"


def settings_hash(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_state(stage_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((stage_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_complete(stage_dir: Path, digest: str) -> bool:
    state = read_state(stage_dir)
    return bool(state and state.get("status") == "complete" and state.get("settings_hash") == digest)


def mark_complete(stage_dir: Path, stage: str, digest: str, settings: dict[str, Any], summary: dict[str, Any],
                  started: float) -> None:
    write_json(stage_dir / STATE_FILE, {
        "stage": stage,
        "status": "complete",
        "settings_hash": digest,
        "settings": settings,
        "summary": summary,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
    })


def mark_running(stage_dir: Path, stage: str, digest: str) -> None:
    """Record that the stage is running with these settings (an interruption leaves this record)."""
    write_json(stage_dir / STATE_FILE, {"stage": stage, "status": "running", "settings_hash": digest})


def retire_if_changed(stage_dir: Path, digest: str) -> Path | None:
    """When ``stage_dir`` holds outputs made with other settings, rename it ``<stage>-<their hash>`` and return the
    new path (so a changed setting never mixes or overwrites earlier outputs); else None."""
    old = read_state(stage_dir)
    if old is None or old.get("settings_hash") in (None, digest):
        return None
    target = stage_dir.with_name(f"{stage_dir.name}-{old['settings_hash']}")
    n = 2
    while target.exists():
        target = stage_dir.with_name(f"{stage_dir.name}-{old['settings_hash']}-{n}")
        n += 1
    stage_dir.rename(target)
    return target
