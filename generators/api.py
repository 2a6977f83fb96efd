"""One call for the whole ``agebias generate`` job: validate, build the generator, gather identities, write the
layout, optionally run quality control. Everything a user can get wrong is checked before anything is written.

Under ``torchrun --nproc_per_node N`` every process reads the same identities and generates its share of them
(:func:`generators.writer.generate_to`); rank 0 writes the merged outputs and runs quality control.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agebias.errors import DataError, SettingsError
from generators.registry import create_generator
from generators.settings import PACKAGE_PHOTOS, GenerateSettings
from generators.writer import GenerateResult, generate_to

log = logging.getLogger(__name__)

PACKAGE_PHOTOS_COPY = ".package_photos"  # where sources = package-photos are copied, inside the output folder


def run_generate(settings: GenerateSettings) -> GenerateResult:
    """Generate ``settings.method`` images into ``settings.out``. Returns the writer's result (with a ``qc``
    attribute, a :class:`generators.qc.QCResult` or None)."""
    st = settings
    if (st.identities is None) == (st.sources is None):
        raise SettingsError("give exactly one of identities N (seeds) or sources DIR (photos)", field="identities",
                            stage=st.stage)
    out = Path(st.out)
    if out.exists() and not out.is_dir():
        raise SettingsError(f"{out} is a file; give a folder for the generated identities", field="out",
                            stage=st.stage)
    plan = st.age_plan()
    device = _device(st.device)  # an unknown or unavailable device fails here, before any work
    qc = _prepare_qc(st) if st.qc else None
    generator = create_generator(st.method, **st.generator_options())
    generator.check_ages(plan.all_ages())
    if generator.needs == "seeds" and st.sources is not None:
        raise SettingsError(f"{generator.name} generates from seeds: use identities N, not sources",
                            field="sources", stage=st.stage)
    if generator.needs == "sources" and st.identities is not None:
        raise SettingsError(f"{generator.name} edits real faces: use sources DIR (a folder of photos), not "
                            f"identities", field="identities", stage=st.stage)

    skipped = []
    if st.identities is not None:
        from generators.sources import seed_identities

        idents = seed_identities(int(st.identities), start=int(st.seed))
    else:
        from generators.sources import load_source_identities

        src = Path(st.sources)
        if st.sources == PACKAGE_PHOTOS and not src.exists():
            from agebias.data.package_photos import copy_package_photos

            src = copy_package_photos(out / PACKAGE_PHOTOS_COPY)  # a hidden folder: the set's readers skip it
        if not src.exists():
            raise SettingsError(f"{src} not found", field="sources", stage=st.stage)
        idents, skipped = load_source_identities(
            src, aligned=st.aligned_sources, all_faces=st.all_faces, device=device, seed=st.seed,
            with_landmarks=getattr(generator, "wants_landmarks", False))
        for p in skipped:
            log.info(f"skipped {p.path}: {p.reason}")
        if not idents:
            first = f" (e.g. {skipped[0].path}: {skipped[0].reason})" if skipped else ""
            raise DataError(f"no usable face in {src}: {len(skipped)} file(s) skipped{first}")
    try:
        result = generate_to(out, generator, idents, plan, skipped=skipped, contact_sheet=st.contact_sheet,
                             extra_info={"age_plan": plan.describe(), "settings": st.to_dict()})
    finally:
        generator.close()
    if qc is not None and result.rows:  # (under torchrun: rank 0 only, on the merged set)
        from generators.qc import run_qc

        result.qc = run_qc(out, result.rows, {i.id: i for i in idents}, settings=st.qc_settings(),
                           aligned=generator.output_aligned(), method=generator.name,
                           geometry_only=bool(generator.parameters().get("geometry_only")), mark_manifest=True, **qc)
    return result


def _device(device: str | None) -> str:
    """The device for source-face detection: ``cpu`` unless one is named (validated: unknown names and CUDA
    without CUDA are user errors)."""
    from generators.checkout import pick_device

    return "cpu" if not device or device == "auto" else pick_device(str(device))


def _prepare_qc(st: GenerateSettings) -> dict[str, Any]:
    """Build the QC models before anything is generated (a bad qc_model or a missing age estimator must not
    surface only after a long generation run)."""
    from agebias.models.age_estimator import default_estimator
    from agebias.models.embedder import build_embedder

    return {"embedder": build_embedder(st.qc_model, device=st.device), "age_estimator": default_estimator()}
