"""The Python API: the calls behind every ``agebias`` command, for notebooks and scripts.

``import agebias`` exposes these names (imported on first use, so ``import agebias`` stays light)::

    emb = agebias.embed(paths, model="sface", aligned=True)            # (N, D) numpy array, rows L2-normalised
    res = agebias.evaluate(emb, subjects, ages, age_bins="0-9,10-19,20-69", target_fmr=1e-2)
    res.by_group                    # pandas DataFrame indexed by age group
    res.plot("scores")              # matplotlib Figure
    res.save("runs/eval")           # results.json, groups.csv, plots, report.html
    model = agebias.load_backbone("backbone.pth")
    run = agebias.finetune(agebias.FinetuneConfig(data=["gen/"], backbone="backbone.pth", out="runs/ft"))
    run.history                     # pandas DataFrame, one row per epoch
    gen = agebias.generate(method="cardioid", sources="photos/", ages=[5, 10, 15], out="gen/")

Keyword arguments are the fields of the stage's settings dataclass (:class:`~agebias.evaluate.settings.EvalSettings`,
:class:`~agebias.evaluate.settings.EmbedSettings`, :class:`~agebias.finetune.config.FinetuneConfig`,
:class:`~generators.settings.GenerateSettings`), validated the same way as on the command line.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agebias.errors import DataError, SettingsError
from agebias.evaluate.result import EvaluationResult
from agebias.evaluate.settings import EmbedSettings, EvalSettings
from agebias.settings import unknown_setting


def _split(kwargs: dict[str, Any], *classes: type) -> list[dict[str, Any]]:
    """Route keyword arguments to the settings classes that define them; unknown names are refused."""
    out: list[dict[str, Any]] = [{} for _ in classes]
    for key, value in kwargs.items():
        for i, cls in enumerate(classes):
            if key in {f.name for f in dataclasses.fields(cls)}:
                out[i][key] = value
                break
        else:
            known = {f.name for cls in classes for f in dataclasses.fields(cls)}
            raise SettingsError(unknown_setting(key, known))
    return out


def evaluate(embeddings: np.ndarray | dict[str, np.ndarray], subjects: Sequence[Any], ages: Sequence[Any], *,
             paths: Sequence[str] | None = None, settings: EvalSettings | None = None,
             **kwargs: Any) -> EvaluationResult:
    """Verification and age-bias metrics of embedded faces.

    ``embeddings``: an (N, D) array, or ``{model name: (N, D) array}`` to compare models on the same faces;
    ``subjects``: N identity labels; ``ages``: N ages in years (None/NaN when unknown; fractional ages are rounded to
    the nearest whole year, as manifests are, before the age groups are formed); ``paths`` (optional) name
    the images in reports. Settings are :class:`EvalSettings` fields as keywords (``age_bins``, ``target_fmr``,
    ``alpha``, ``pair_grouping``, ``bootstrap``, ...) or a ready ``settings`` object."""
    from agebias.data.records import FaceRecord
    from agebias.evaluate.api import evaluate_records

    if settings is not None and kwargs:
        raise SettingsError("give settings= or keyword settings, not both")
    st = settings or EvalSettings.from_dict(kwargs)
    by_model = embeddings if isinstance(embeddings, dict) else {"model": embeddings}
    n = len(subjects)
    if len(ages) != n or (paths is not None and len(paths) != n):
        raise SettingsError(f"subjects ({n}), ages ({len(ages)}) and paths must have one entry per image")
    names = list(paths) if paths is not None else [f"image{i}" for i in range(n)]
    records = [FaceRecord(path=Path(p), subject=str(s), age=_age(a, i))
               for i, (p, s, a) in enumerate(zip(names, subjects, ages, strict=True))]
    return evaluate_records(records, {k: np.asarray(v) for k, v in by_model.items()}, st,
                            preparation={"summary": "Faces: embeddings given to agebias.evaluate."})


def _age(value: Any, index: int) -> int | None:
    """Whole years as manifests read them (rounded to the nearest, 0-199); None/NaN: unknown."""
    from agebias.data.manifest import parse_age

    try:
        return parse_age(value)
    except ValueError:
        raise DataError(f"ages[{index}] = {value!r} is not an age in years (a number from 0 to 199, or None/NaN "
                        "when unknown)") from None


def evaluate_dataset(source: str | os.PathLike, *, models: Sequence[str] = (),
                     embeddings: Sequence[str | os.PathLike] = (), kind: str = "auto",
                     cache_dir: str | os.PathLike | None = None, **kwargs: Any) -> EvaluationResult:
    """A dataset on disk (FG-NET folder, manifest CSV, generated set, ...) embedded with ``models`` (or read from
    precomputed ``embeddings`` .npz files) and evaluated. Keywords: :class:`EvalSettings` and
    :class:`EmbedSettings` fields (``age_bins``, ``aligned``, ``detector``, ``flip``, ...)."""
    from agebias.evaluate.runner import evaluate_source

    ev, em = _split(kwargs, EvalSettings, EmbedSettings)
    return evaluate_source(source, kind=kind, models=list(models), embeddings=list(embeddings),
                           settings=EvalSettings.from_dict(ev), embed=EmbedSettings.from_dict(em), cache_dir=cache_dir)


def embed(images: Sequence[str | os.PathLike] | np.ndarray, model: str = "sface", **kwargs: Any) -> np.ndarray:
    """Embeddings (float32, rows L2-normalised) of face images.

    ``images``: file paths (detected and aligned unless ``aligned=True``), or a uint8 (N, 112, 112, 3) RGB array
    of aligned crops. ``model``: a .pth/.safetensors/.onnx file or a registered name (``sface``). Keywords:
    :class:`EmbedSettings` fields. Files without a usable face raise :class:`agebias.errors.DataError` listing
    them (use :func:`agebias.evaluate_dataset` or ``agebias embed`` to skip them instead)."""
    from agebias.data.records import DatasetScan, FaceRecord
    from agebias.evaluate.runner import prepare_faces
    from agebias.models.embedder import build_embedder

    st = EmbedSettings.from_dict(kwargs)
    embedder = build_embedder(model, arch=st.arch, device=st.device, flip=st.flip, batch_size=st.batch_size,
                              trust_checkpoint=st.trust_checkpoint, backend=st.backend)
    if isinstance(images, np.ndarray):
        return embedder.embed(images)
    records = [FaceRecord(path=Path(p), subject=Path(p).parent.name) for p in images]
    faces, _ = prepare_faces(DatasetScan("images", Path("."), records), st, progress=None)
    if faces.skipped:
        first = faces.skipped[0]
        raise DataError(f"{len(faces.skipped)} image(s) without a usable face, e.g. {first.path}: {first.reason}")
    return embedder.embed(faces.crops)


def load_backbone(path: str | os.PathLike, arch: str | None = None, trust_checkpoint: bool = False):
    """A face-recognition backbone (torch module, eval mode, CPU) from an arcface_torch ``backbone.pth``,
    ``.safetensors`` or iresnet ``.onnx`` file; ``arch`` is inferred from the keys when None."""
    from agebias.models.checkpoints import load_backbone as load

    return load(path, arch=arch, trust_checkpoint=trust_checkpoint)


def finetune(config=None, **kwargs: Any):
    """Fine-tune a backbone (``config``: a :class:`~agebias.finetune.config.FinetuneConfig`, or its fields as
    keywords). Returns a :class:`~agebias.finetune.result.FinetuneResult` (``.history`` DataFrame,
    ``.backbone_path``, ``.best_path``)."""
    from agebias.finetune.config import FinetuneConfig
    from agebias.finetune.trainer import run_finetune

    if config is not None and kwargs:
        raise SettingsError("give a FinetuneConfig or keyword settings, not both")
    return run_finetune(config if config is not None else FinetuneConfig.from_dict(kwargs))


def generate(settings=None, **kwargs: Any):
    """Generate age-varied identities (``settings``: a :class:`~generators.settings.GenerateSettings`, or its fields
    as keywords: ``method``, ``out``, ``sources`` or ``identities``, ``ages`` or ``age_intervals``, ...). Returns
    the writer's :class:`~generators.writer.GenerateResult`."""
    from generators.api import run_generate
    from generators.settings import GenerateSettings

    if settings is not None and kwargs:
        raise SettingsError("give GenerateSettings or keyword settings, not both")
    return run_generate(settings if settings is not None else GenerateSettings.from_dict(kwargs))
