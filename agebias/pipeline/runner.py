"""``agebias run EXPERIMENT.toml``: generate -> finetune -> evaluate -> report, each stage resumable."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from agebias.errors import UserError
from agebias.pipeline import state
from agebias.pipeline.schema import STAGES, Experiment

log = logging.getLogger(__name__)

StageFn = Callable[[Experiment, Path, dict[str, Any]], dict[str, Any]]


def output_dir(exp: Experiment, out: str | Path | None) -> Path:
    if out:
        return Path(out)
    configured = exp.section("experiment")["out"]
    return Path(configured) if configured else Path("runs") / exp.name


def stage_settings(exp: Experiment, stage: str, upstream: dict[str, str]) -> dict[str, Any]:
    """What a stage's outputs depend on: its own section, the experiment-wide keys and the upstream hashes."""
    common = {k: exp.section("experiment")[k] for k in ("seed", "device")}
    own = exp.section(stage) if stage in ("generate", "finetune", "evaluate") else {}
    return {"stage": stage, "common": common, "section": own, "upstream": dict(upstream)}


def run_experiment(exp: Experiment, out: str | Path | None = None, from_stage: str | None = None,
                   only: str | None = None, stage_fns: dict[str, StageFn] | None = None) -> Path:
    """Run the stages in order and return the output folder.

    A stage is skipped when ``stage.json`` says it completed with the same settings; an interrupted stage with the
    same settings continues; a stage whose settings changed (its own or upstream) runs in a fresh folder, the earlier
    one renamed ``<stage>-<old settings hash>`` (nothing is overwritten). ``from_stage`` forces that stage and every
    later one to run again; ``only`` runs just that stage (its upstream stages must be complete).
    """
    for name, value in (("--from", from_stage), ("--only", only)):
        if value is not None and value not in STAGES:
            raise UserError(f"{name} must be one of {', '.join(STAGES)}, got '{value}'")
    if stage_fns is None:
        from agebias.pipeline.stages import STAGE_FUNCTIONS as stage_fns
    out_dir = output_dir(exp, out)
    out_dir.mkdir(parents=True, exist_ok=True)
    upstream: dict[str, str] = {}
    forced = False
    summaries: dict[str, Any] = {}
    for stage in STAGES:
        settings = stage_settings(exp, stage, upstream)
        digest = state.settings_hash(settings)
        stage_dir = out_dir / stage
        forced = forced or stage == from_stage
        if only is not None and stage != only:
            if STAGES.index(stage) < STAGES.index(only) and not state.is_complete(stage_dir, digest):
                raise UserError(f"--only {only}: stage '{stage}' has not completed with these settings; "
                                f"run without --only first")
            upstream[stage] = digest
            summaries[stage] = (state.read_state(stage_dir) or {}).get("summary", {})
            if STAGES.index(stage) > STAGES.index(only):
                break
            continue
        if not forced and only is None and state.is_complete(stage_dir, digest):
            log.info(f"[{stage}] up to date, skipped ({stage_dir})")
        else:
            log.info(f"[{stage}] running -> {stage_dir}")
            retired = state.retire_if_changed(stage_dir, digest)
            if retired is not None:
                log.info(f"[{stage}] its settings changed: the earlier outputs are kept in {retired}")
            state.mark_running(stage_dir, stage, digest)
            started = time.time()
            summary = stage_fns[stage](exp, out_dir, summaries)
            state.mark_complete(stage_dir, stage, digest, settings, summary, started)
        upstream[stage] = digest
        summaries[stage] = (state.read_state(stage_dir) or {}).get("summary", {})
    return out_dir
