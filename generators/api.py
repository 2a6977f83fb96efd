"""One call for the whole ``agebias generate`` job: validate, build the generator, gather identities, write the
layout, optionally run quality control. Everything a user can get wrong is checked before anything is written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agebias.errors import UserError
from generators.ages import AgePlan
from generators.registry import create_generator
from generators.writer import GenerateResult, generate_to

log = logging.getLogger(__name__)


def run_generate(method: str, out: str | Path, *, identities: int | None = None, sources: str | Path | None = None,
                 aligned: bool = False, all_faces: bool = False, ages: str | list[int] | None = None,
                 age_bins: str | list[str] | None = None,
                 per_bin: int = 1, seed: int = 0, options: dict[str, Any] | None = None,
                 qc: dict[str, Any] | bool | None = None, contact_sheet: bool = True) -> GenerateResult:
    """Generate ``method`` images into ``out``. ``options`` go to the generator's ``from_config``; ``qc``
    (``True`` for the defaults, or a dict: model, min_similarity, device) to :func:`generators.qc.run_qc`.
    Returns the writer's result (with a ``qc`` attribute, a :class:`generators.qc.QCResult` or None)."""
    if qc is True:
        qc = {}
    elif qc is False:
        qc = None
    if (identities is None) == (sources is None):
        raise UserError("give exactly one of --identities N (seeds) or --sources DIR (photos)")
    if isinstance(ages, (list, tuple)):
        ages = ",".join(str(a) for a in ages)
    if isinstance(age_bins, (list, tuple)):
        age_bins = ",".join(str(b) if isinstance(b, str) else f"{b[0]}-{b[1]}" for b in age_bins)
    plan = AgePlan.from_options(ages=ages, age_bins=age_bins, per_bin=per_bin, seed=seed)
    batch_size = (options or {}).get("batch_size")
    if batch_size is not None and int(batch_size) < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    _device(options)  # an unknown or unavailable device fails here, before any work
    if qc is not None:
        qc = _prepare_qc(qc)
    generator = create_generator(method, **{k: v for k, v in (options or {}).items() if v is not None})
    generator.check_ages(plan.all_ages())
    if generator.needs == "seeds" and sources is not None:
        raise UserError(f"{generator.name} generates from seeds: use --identities N, not --sources")
    if generator.needs == "sources" and identities is not None:
        raise UserError(f"{generator.name} edits real faces: use --sources DIR (a folder of photos), not --identities")

    skipped = []
    if identities is not None:
        from generators.sources import seed_identities

        idents = seed_identities(int(identities), start=int(seed))
    else:
        from generators.sources import load_source_identities

        src = Path(sources)
        if not src.exists():
            raise UserError(f"--sources {src} not found")
        idents, skipped = load_source_identities(
            src, aligned=aligned, all_faces=all_faces, device=_device(options), seed=seed,
            with_landmarks=getattr(generator, "wants_landmarks", False))
        for p in skipped:
            log.info(f"skipped {p.path}: {p.reason}")
        if not idents:
            first = f" (e.g. {skipped[0].path}: {skipped[0].reason})" if skipped else ""
            raise UserError(f"no usable face in {src}: {len(skipped)} file(s) skipped{first}")
    result = generate_to(out, generator, idents, plan, skipped=skipped, contact_sheet=contact_sheet,
                         extra_info={"age_plan": plan.describe()})
    if qc is not None:
        from generators.qc import run_qc

        result.qc = run_qc(out, result.rows, {i.id: i for i in idents}, **qc)
    generator.close()
    return result


def _device(options: dict[str, Any] | None) -> str:
    """The device for source-face detection: ``cpu`` unless one is named (validated: unknown names and CUDA
    without CUDA are user errors)."""
    from generators.checkout import pick_device

    dev = (options or {}).get("device")
    return "cpu" if not dev or dev == "auto" else pick_device(str(dev))


def _prepare_qc(qc: dict[str, Any]) -> dict[str, Any]:
    """Check the QC settings and build its embedder before anything is generated (a bad --qc-model must not
    surface only after a long generation run)."""
    from agebias.models.embedder import build_embedder

    qc = dict(qc)
    sim = qc.get("min_similarity", 0.3)
    if not -1.0 <= float(sim) <= 1.0:
        raise UserError(f"--qc-min-similarity {sim}: a cosine similarity must lie between -1 and 1")
    if qc.get("embedder") is None:
        qc["embedder"] = build_embedder(qc.get("model", "sface"), device=qc.get("device"))
    return qc
