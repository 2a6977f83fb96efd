"""The default trial of ``agebias search``: fine-tune with the trial's settings, then score the objectives.

``<trial dir>/finetune/`` is the run directory of :func:`agebias.finetune.trainer.run_finetune`; the best-epoch
backbone (the final one without validation) embeds the ``val`` identities (the trainer's own identity split,
rebuilt from the same sources and seed) and/or the ``[data] eval`` set; :func:`agebias.search.objectives.pair_metrics`
scores them; ``metrics.json`` keeps every number (per age group too).

``val`` objectives are scored in memory with :func:`agebias.search.objectives.pair_metrics` (fast, no files);
``eval`` objectives run the evaluator's library API (:func:`agebias.evaluate.api.evaluate_records`, without
bootstrap) and keep its full report in ``<trial dir>/eval[-K]/`` (results.json, groups.csv, plots, report).
Both follow the evaluator's conventions (one global tau at the target FMR, "both images in the group" pairs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agebias.atomic import write_json
from agebias.errors import UserError
from agebias.search.experiment import SearchExperiment
from agebias.search.objectives import metric_key, objective_values, pair_metrics


def run_trial(exp: SearchExperiment, params: dict[str, Any], trial_dir: Path) -> dict[str, float]:
    from agebias.finetune.config import FinetuneConfig
    from agebias.finetune.trainer import run_finetune
    from agebias.models.embedder import build_embedder

    settings = exp.finetune_settings(params, trial_dir / "finetune")
    config = FinetuneConfig.from_dict(settings)
    result = run_finetune(config)
    backbone = result.best_path or result.backbone_path
    if backbone is None or not Path(backbone).is_file():
        raise RuntimeError(f"fine-tuning in {result.run_dir} produced no backbone")
    arch = config.arch or (config.backbone if config.init == "random" else None)
    embedder = build_embedder(str(backbone), arch=arch, device=config.device if config.device != "auto" else None)
    sets: dict[str, tuple[np.ndarray, list]] = {}
    metrics: dict[tuple, dict[str, Any]] = {}
    for o in exp.objectives:
        key = metric_key(o)
        if key in metrics:
            continue
        if o.on not in sets:
            crops, records = _val_set(config) if o.on == "val" else _eval_set(exp)
            sets[o.on] = (embedder.embed(crops), records)
        emb, records = sets[o.on]
        bins = o.age_bins or (exp.data.get("eval_age_bins") if o.on == "eval" else None)
        if o.on == "val":
            metrics[key] = pair_metrics(emb, [r.subject for r in records], [r.age for r in records], bins, o.fmr,
                                        o.alpha)
        else:
            n_eval = sum(1 for k in metrics if k[0] == "eval")
            report_dir = trial_dir / ("eval" if n_eval == 0 else f"eval-{n_eval + 1}")
            metrics[key] = _evaluator_metrics(records, emb, report_dir, o.fmr, o.alpha, bins, config.seed)
    write_json(trial_dir / "metrics.json", {
        "backbone": str(backbone), "best_epoch": result.best_epoch,
        "history": result.rows,
        "metrics": [{"on": k[0], "fmr": k[1], "alpha": k[2], "age_bins": k[3], **v} for k, v in metrics.items()]})
    values = objective_values(exp.objectives, metrics)
    return {o.name: v for o, v in zip(exp.objectives, values, strict=True)}


def _evaluator_metrics(records: list, emb: np.ndarray, out: Path, fmr: float, alpha: float, age_bins: str | None,
                       seed: int) -> dict[str, Any]:
    """Run the evaluator (full report in ``out``) and pick the numbers :func:`pair_metrics` would return."""
    from agebias.evaluate.api import evaluate_records
    from agebias.evaluate.settings import EvalSettings

    settings = EvalSettings(target_fmr=fmr, alpha=alpha, bootstrap=0, seed=seed,
                            **({"age_bins": age_bins} if age_bins else {}))
    res = evaluate_records(records, {"trial": emb}, settings).save(out).section()
    ov, fa = res["overall"], res["fairness"]
    groups = [{"name": name, "genuine": g.get("n_genuine"), "impostor": g.get("n_impostor"), "fmr": g.get("fmr"),
               "fnmr": g.get("fnmr")} for name, g in res["groups"].items()]
    return {"eer": ov["eer"], "fnmr": ov["fnmr"], "fmr": ov.get("fmr"), "tau": ov.get("threshold"),
            "target_fmr": fmr, "garbe": _num(fa.get("garbe")), "fdr": _num(fa.get("fdr")), "ir": _num(fa.get("ir")),
            "groups": groups, "report": str(out)}


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _val_set(config) -> tuple[np.ndarray, list]:
    """The trainer's held-out identities (same sources, seed and split function) as crops and records."""
    from agebias.data.records import FaceRecord
    from agebias.finetune.data import parse_source, prepare_data

    data = prepare_data([parse_source(s) for s in config.data], aligned=config.aligned, detector=config.detector,
                        val_fraction=config.val_fraction, seed=config.seed, age_bins=config.age_bins,
                        cache_dir=config.align_cache)
    if len(data.val) < 2:
        raise UserError("a '@val' objective needs held-out identities: set [finetune] val_fraction > 0")
    v = data.val
    return v.crops, [FaceRecord(Path(p), s, a, None, {}) for p, s, a in zip(v.paths, v.subjects, v.ages, strict=True)]


_EVAL_CACHE: dict[tuple, tuple[np.ndarray, list]] = {}


def _eval_set(exp: SearchExperiment) -> tuple[np.ndarray, list]:
    """The ``[data] eval`` set, aligned once per process."""
    from agebias.data.faces import load_aligned_faces, use_as_aligned
    from agebias.data.sources import open_dataset

    key = (str(exp.data["eval"]), exp.data.get("eval_kind", "auto"), exp.data.get("eval_aligned"))
    if key not in _EVAL_CACHE:
        scan = open_dataset(key[0], key[1])
        faces = load_aligned_faces(scan.records, aligned=use_as_aligned(scan.aligned, key[2]))
        if len(faces.records) < 2:
            raise UserError(f"[data] eval {key[0]}: fewer than 2 usable images")
        _EVAL_CACHE[key] = (faces.crops, list(faces.records))
    return _EVAL_CACHE[key]
