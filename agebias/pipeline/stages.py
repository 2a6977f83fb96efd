"""The four stages of an experiment. Each takes the experiment, the output folder and the summaries of the stages
before it, does its work under ``<out>/<stage>/`` and returns a small JSON-able summary.

Every stage is resumable on its own: the generator skips images already written, fine-tuning continues from its
last epoch checkpoint, evaluation reuses cached embeddings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from agebias.errors import DataError, SettingsError
from agebias.pipeline.schema import PACKAGE_PHOTOS, Experiment

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
    from agebias.api import generate
    from generators.settings import GenerateSettings

    stage_dir = out / "generate"
    route: dict[str, Any] = {"out": str(generated_data_dir(out)), "seed": _experiment(exp)["seed"],
                             "device": _device(exp)}
    if gen["sources"] == PACKAGE_PHOTOS:
        from agebias.data.package_photos import copy_package_photos

        route["sources"] = str(stage_dir / "package_photos")
        copy_package_photos(Path(route["sources"]))
    result = generate(exp.settings("generate", GenerateSettings, **route))
    identities = sorted({row["id"] for row in result.rows})
    summary = {
        "enabled": True, "method": gen["method"], "data": str(generated_data_dir(out)),
        "identities": len(identities), "images": len(result.rows), "written": result.written,
        "reused": result.reused, "skipped": [p.as_dict() for p in result.skipped],
        "ages": sorted({int(row["age"]) for row in result.rows}), "warnings": list(result.warnings),
        "contact_sheet": str(result.contact_sheet) if result.contact_sheet else "",
    }
    if result.qc is not None:  # quality control ([generate] qc = true): headline numbers and where its files are
        summary["qc"] = result.qc.brief()
        log.info(f"[generate] QC: {result.qc.summary['verdict']} ({result.qc.rejected} of {result.qc.checked} "
                 f"rejected; files in {result.qc.folder})")
    return summary


# --------------------------------------------------------------------------------------------------- finetune
def training_sources(exp: Experiment, out: Path) -> list[str]:
    gen, ft = exp.section("generate"), exp.section("finetune")
    first = str(generated_data_dir(out)) if gen["enabled"] else gen["dataset"]
    return [first, *[str(s) for s in ft["extra_data"]]]


def run_finetune_stage(exp: Experiment, out: Path, summaries: dict[str, Any]) -> dict[str, Any]:
    ft = exp.section("finetune")
    if not ft["enabled"]:
        return {"enabled": False}
    from agebias.api import finetune
    from agebias.finetune.config import FinetuneConfig

    config = exp.settings("finetune", FinetuneConfig, data=training_sources(exp, out), seed=_experiment(exp)["seed"],
                          device=_experiment(exp)["device"], out=str(out / "finetune" / "run"), resume=True)
    # one folder per training configuration: a changed setting never overwrites an earlier run
    config = config.replace(out=str(out / "finetune" / f"run-{config.config_hash()}"))
    result = finetune(config)
    final = result.rows[-1] if result.rows else {}
    chosen = result.best_path or result.backbone_path
    trained, held_out = split_identities_of(Path(result.run_dir))
    return {
        "enabled": True, "run_dir": str(result.run_dir), "backbone": str(chosen),
        "backbone_kind": "best epoch by validation" if result.best_path else "final epoch",
        "final_backbone": str(result.backbone_path), "best_epoch": result.best_epoch,
        "epochs": result.epochs_done, "init": ft["init"], "source_backbone": ft["backbone"],
        "final_loss": final.get("loss"), "final_val_eer": final.get("val_eer"),
        "trained_identities": trained, "held_out_identities": held_out,
        "history": result.rows,
    }


def split_identities_of(run_dir: Path) -> tuple[list[str], list[str]]:
    """(trained on, held out) identities of the pipeline's training set (the first source) in a fine-tuning run,
    as the evaluation set names them (the run prefixes ``s0/`` when it mixes several sources)."""
    record = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    trained = json.loads((run_dir / "classes.json").read_text(encoding="utf-8"))
    held_out = record["data"].get("val_identity_names", [])
    if len(record["data"].get("sources", [])) > 1:
        trained = [n[len("s0/"):] for n in trained if n.startswith("s0/")]
        held_out = [n[len("s0/"):] for n in held_out if n.startswith("s0/")]
    return sorted(trained), sorted(held_out)


# --------------------------------------------------------------------------------------------------- evaluate
def model_specs(exp: Experiment, summaries: dict[str, Any]) -> dict[str, str]:
    """Display name -> embedder spec for the ``[evaluate] models`` list. ``finetuned`` is the run's best epoch by
    validation, or its final epoch when the evaluation uses the held-out identities (no epoch chosen on them)."""
    ft = exp.section("finetune")
    held_out = exp.section("evaluate")["identities"] == "held-out"
    specs: dict[str, str] = {}
    for name in exp.section("evaluate")["models"]:
        if name == "finetuned":
            fin = summaries.get("finetune", {})
            if not fin.get("enabled"):
                raise SettingsError("[evaluate] models lists 'finetuned' but [finetune] is disabled")
            specs["finetuned"] = fin["final_backbone"] if held_out else fin["backbone"]
        elif name == "baseline":  # (a random init without a baseline is refused when the file loads)
            specs["baseline"] = ft["backbone"]
        else:
            specs[Path(name).stem if Path(name).suffix else name] = name
    return specs


def run_evaluate_stage(exp: Experiment, out: Path, summaries: dict[str, Any]) -> dict[str, Any]:
    """Embed the evaluation set once per face preparation its protocols need (``msc`` squashes whole photos by
    default, as the thesis did; ``all-pairs`` aligns) and evaluate each protocol on its own embeddings."""
    from agebias.data.sources import open_dataset
    from agebias.evaluate.allpairs import identification_ranks
    from agebias.evaluate.api import evaluate_records
    from agebias.evaluate.runner import embed_records, flip_fused_embeddings
    from agebias.evaluate.settings import EmbedSettings, EvalSettings, embed_for_protocol

    ev = exp.section("evaluate")
    if ev["dataset"] == "generated":
        if not exp.section("generate")["enabled"]:
            raise SettingsError("[evaluate] dataset = 'generated' but [generate] is disabled")
        scan = open_dataset(generated_data_dir(out), kind="generated")
    elif ev["dataset"] == "fgnet":
        scan = open_dataset(ev["root"], kind="fgnet")
    else:
        scan = open_dataset(ev["dataset"])
    if not scan.records:
        raise DataError(f"no face images found in the evaluation set {scan.root}")
    held_out: list[str] | None = None
    if ev["identities"] == "held-out":
        scan, held_out = _held_out_only(scan, summaries.get("finetune", {}))
    specs = model_specs(exp, summaries)
    stage_dir = out / "evaluate"
    base = exp.settings("evaluate", EmbedSettings, device=_device(exp))
    label = {"generated": "the generated set", "fgnet": "FG-NET"}.get(ev["dataset"], scan.name)
    summary: dict[str, Any] = {"dataset": label, "dataset_root": str(scan.root), "models": specs,
                               "identities": ev["identities"], "held_out_identities": held_out, "protocols": {}}
    prepared: dict[str, Any] = {}  # detector -> embeddings of the faces prepared that way
    folders: dict[str, Path] = {}
    how: dict[str, str] = {}
    for protocol in ev["protocols"]:
        settings = exp.settings("evaluate", EvalSettings, protocol=protocol, seed=_experiment(exp)["seed"])
        embed, rule = embed_for_protocol(base, protocol)
        if embed.detector not in prepared:
            folders[embed.detector] = stage_dir / ("embeddings" if not folders else f"embeddings-{embed.detector}")
            prepared[embed.detector] = embed_records(scan, list(specs.values()), embed, folders[embed.detector])
        embedded = prepared[embed.detector]
        by_model = dict(zip(specs, embedded.by_model.values(), strict=True))
        fused = None
        if not embed.flip and identification_ranks(settings, len(embedded.records)):
            fused = dict(zip(specs, flip_fused_embeddings(embedded.records, scan.aligned, list(specs.values()),
                                                          embed, folders[embed.detector]).values(), strict=True))
        skipped = [*scan.problems, *embedded.skipped]
        target = stage_dir / protocol
        evaluate_records(embedded.records, by_model, settings, dataset_name=scan.name, dataset_root=str(scan.root),
                         skipped=skipped, preparation={**embedded.preparation, "detector_rule": rule},
                         identification_embeddings=fused).save(target)
        summary["protocols"][protocol] = str(target)
        how[protocol] = embedded.preparation.get("summary", "")
        if "images" not in summary:  # the first protocol's faces give the stage's counts
            summary.update({"images": len(embedded.records), "subjects": len({r.subject for r in embedded.records}),
                            "skipped": [p.as_dict() for p in skipped]})
    summary["preparation"] = (next(iter(how.values())) if len(set(how.values())) == 1
                              else " ".join(f"{protocol}: {text}" for protocol, text in how.items()))
    return summary


def _held_out_only(scan, finetune_summary: dict[str, Any]):
    """The scan restricted to the identities the fine-tuning run held out, and their names; checks that none of
    them was trained on."""
    held_out = set(finetune_summary.get("held_out_identities") or [])
    trained = set(finetune_summary.get("trained_identities") or [])
    if not held_out:
        raise DataError("[evaluate] identities = 'held-out': the fine-tuning run held out no identities "
                        "(raise [finetune] val_fraction)")
    if held_out & trained:
        raise DataError(f"[evaluate] identities = 'held-out': {sorted(held_out & trained)[0]} was also trained on")
    records = [r for r in scan.records if r.subject in held_out]
    if len({r.subject for r in records}) < 2:
        raise DataError(f"[evaluate] identities = 'held-out': only {len({r.subject for r in records})} of the held-out "
                        f"identities are in the evaluation set {scan.root}; need at least two")
    log.info(f"[evaluate] {len(records)} images of {len(held_out)} held-out identities (never trained on); "
             f"{len(scan.records) - len(records)} images of trained identities left out")
    return dataclasses.replace(scan, records=records), sorted(held_out)


def _experiment(exp: Experiment) -> dict[str, Any]:
    return exp.section("experiment")


def _device(exp: Experiment) -> str | None:
    device = _experiment(exp)["device"]
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
