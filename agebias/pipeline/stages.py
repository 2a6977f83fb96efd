"""The four stages of an experiment. Each takes the experiment, the output folder and the summaries of the stages
before it, does its work under ``<out>/<stage>/`` and returns a small JSON-able summary.

Every stage is resumable on its own: the generator skips images already written, fine-tuning continues from its
last epoch checkpoint, evaluation reuses cached embeddings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agebias.errors import UserError
from agebias.pipeline.schema import Experiment

log = logging.getLogger(__name__)

GENERATED_DIR = "data"


def generated_data_dir(out: Path) -> Path:
    return out / "generate" / GENERATED_DIR


# --------------------------------------------------------------------------------------------------- generate
def run_generate_stage(exp: Experiment, out: Path, summaries: dict[str, Any]) -> dict[str, Any]:
    gen = exp.section("generate")
    if not gen["enabled"]:
        log.info(f"[generate] disabled: training on {gen['dataset']}")
        return {"enabled": False, "dataset": gen["dataset"]}
    from generators.api import run_generate

    stage_dir = out / "generate"
    options = dict(gen["options"])
    for key in ("checkpoint", "repo"):
        if gen[key]:
            options[key] = gen[key]
    options.setdefault("trust_checkpoint", gen["trust_checkpoint"])
    options.setdefault("batch_size", gen["batch_size"])
    options.setdefault("device", exp.section("experiment")["device"])
    kwargs: dict[str, Any] = {}
    if gen["sources"] == "package-photos":
        from agebias.pipeline.package_photos import copy_package_photos

        kwargs["sources"] = stage_dir / "package_photos"
        copy_package_photos(kwargs["sources"])
    elif gen["sources"]:
        kwargs["sources"] = Path(gen["sources"])
    else:
        kwargs["identities"] = gen["identities"]
    qc = {"min_similarity": float(gen["qc_min_similarity"])} if gen["qc"] else None
    result = run_generate(
        gen["method"], generated_data_dir(out), aligned=gen["aligned_sources"], all_faces=gen["all_faces"],
        ages=list(gen["ages"]) or None, age_bins=",".join(gen["age_bins"]) or None, per_bin=gen["per_bin"],
        seed=exp.section("experiment")["seed"], options=options, qc=qc, **kwargs)
    identities = sorted({row["id"] for row in result.rows})
    summary = {
        "enabled": True, "method": gen["method"], "data": str(generated_data_dir(out)),
        "identities": len(identities), "images": len(result.rows), "written": result.written,
        "reused": result.reused, "skipped": [p.as_dict() for p in result.skipped],
        "ages": sorted({int(row["age"]) for row in result.rows}), "warnings": list(result.warnings),
        "contact_sheet": str(result.contact_sheet) if result.contact_sheet else "",
    }
    qc_result = getattr(result, "qc", None)
    if qc_result is not None:
        summary["qc_rejected"] = len(getattr(qc_result, "rejected", []) or [])
    return summary


# --------------------------------------------------------------------------------------------------- finetune
_FINETUNE_KEYS = ("backbone", "init", "arch", "aligned", "frozen_layers", "head", "scale", "optimizer", "lr",
                  "momentum", "weight_decay", "scheduler", "warmup_epochs", "epochs", "batch_size", "val_fraction",
                  "precision", "mitigation", "trust_checkpoint", "focal_gamma", "augment", "detector")


def training_sources(exp: Experiment, out: Path) -> list[str]:
    gen, ft = exp.section("generate"), exp.section("finetune")
    first = str(generated_data_dir(out)) if gen["enabled"] else gen["dataset"]
    return [first, *[str(s) for s in ft["extra_data"]]]


def run_finetune_stage(exp: Experiment, out: Path, summaries: dict[str, Any]) -> dict[str, Any]:
    ft = exp.section("finetune")
    if not ft["enabled"]:
        return {"enabled": False}
    from agebias.finetune.config import FinetuneConfig
    from agebias.finetune.trainer import run_finetune

    values = {k: ft[k] for k in _FINETUNE_KEYS if k in ft}
    values["margin"] = str(ft["margin"])
    if ft["age_bins"]:
        values["age_bins"] = ft["age_bins"]
    values.update(data=training_sources(exp, out), seed=exp.section("experiment")["seed"],
                  device=exp.section("experiment")["device"], out=str(out / "finetune" / "run"))
    config = FinetuneConfig.from_dict(values)
    # one folder per training configuration: a changed setting never overwrites an earlier run
    config.out = str(out / "finetune" / f"run-{config.config_hash()}")
    config.resume = True
    result = run_finetune(config)
    final = result.history[-1] if result.history else {}
    chosen = result.best_path or result.backbone_path
    return {
        "enabled": True, "run_dir": str(result.run_dir), "backbone": str(chosen),
        "backbone_kind": "best epoch by validation" if result.best_path else "final epoch",
        "final_backbone": str(result.backbone_path), "best_epoch": result.best_epoch,
        "epochs": result.epochs_done, "init": ft["init"], "source_backbone": ft["backbone"],
        "final_loss": final.get("loss"), "final_val_eer": final.get("val_eer"),
        "history": result.history,
    }


# --------------------------------------------------------------------------------------------------- evaluate
def model_specs(exp: Experiment, summaries: dict[str, Any]) -> dict[str, str]:
    """Display name -> embedder spec for the ``[evaluate] models`` list."""
    ft = exp.section("finetune")
    specs: dict[str, str] = {}
    for name in exp.section("evaluate")["models"]:
        if name == "finetuned":
            fin = summaries.get("finetune", {})
            if not fin.get("enabled"):
                raise UserError("[evaluate] models lists 'finetuned' but [finetune] is disabled")
            specs["finetuned"] = fin["backbone"]
        elif name == "baseline":
            if ft["init"] != "pretrained":
                raise UserError("[evaluate] models lists 'baseline' but [finetune] init = 'random' has no pretrained "
                                "baseline; list 'sface' or a model file instead")
            specs["baseline"] = ft["backbone"]
        else:
            specs[Path(name).stem if Path(name).suffix else name] = name
    return specs


def run_evaluate_stage(exp: Experiment, out: Path, summaries: dict[str, Any]) -> dict[str, Any]:
    from agebias.data.sources import open_dataset
    from agebias.evaluate.api import evaluate_models
    from agebias.evaluate.runner import embed_records
    from agebias.evaluate.settings import EvalSettings

    ev = exp.section("evaluate")
    if ev["dataset"] == "generated":
        if not exp.section("generate")["enabled"]:
            raise UserError("[evaluate] dataset = 'generated' but [generate] is disabled")
        scan = open_dataset(generated_data_dir(out), kind="generated")
    elif ev["dataset"] == "fgnet":
        scan = open_dataset(ev["root"], kind="fgnet")
    else:
        scan = open_dataset(ev["dataset"])
    if not scan.records:
        raise UserError(f"no face images found in the evaluation set {scan.root}")
    specs = model_specs(exp, summaries)
    stage_dir = out / "evaluate"
    records, embedded, skipped = embed_records(
        scan.records, list(specs.values()), stage_dir / "embeddings", detector=ev["detector"],
        aligned=ev["aligned"], flip=ev["flip"], device=_device(exp))
    by_model = dict(zip(specs, embedded.values()))
    label = {"generated": "the generated set", "fgnet": "FG-NET"}.get(ev["dataset"], scan.name)
    summary: dict[str, Any] = {"dataset": label, "dataset_root": str(scan.root), "images": len(records),
                               "subjects": len({r.subject for r in records}), "models": specs,
                               "skipped": [p.as_dict() for p in [*scan.problems, *skipped]], "protocols": {}}
    for protocol in ev["protocols"]:
        settings = {"protocol": protocol, "target_fmr": float(ev["target_fmr"]), "alpha": float(ev["alpha"]),
                    "formats": tuple(ev["formats"]), "seed": exp.section("experiment")["seed"]}
        if ev["age_bins"]:
            settings["age_bins"] = ev["age_bins"]
        target = stage_dir / protocol
        evaluate_models(records, by_model, target, EvalSettings.from_dict(settings), dataset_name=scan.name,
                        dataset_root=str(scan.root), skipped=[*scan.problems, *skipped])
        summary["protocols"][protocol] = str(target)
    return summary


def _device(exp: Experiment) -> str | None:
    device = exp.section("experiment")["device"]
    return None if device == "auto" else device


# --------------------------------------------------------------------------------------------------- report
def run_report_stage(exp: Experiment, out: Path, summaries: dict[str, Any]) -> dict[str, Any]:
    from agebias.pipeline.report import write_experiment_report

    paths = write_experiment_report(exp, out, summaries)
    return {key: str(value) for key, value in paths.items()}


STAGE_FUNCTIONS = {
    "generate": run_generate_stage,
    "finetune": run_finetune_stage,
    "evaluate": run_evaluate_stage,
    "report": run_report_stage,
}
