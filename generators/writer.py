"""Run a generator into the thesis layout ``<out>/<id>/<id>_<age>.png`` with ``manifest.csv``, a contact sheet
(``contact_sheet.png``: identities x ages, labelled) and ``generation.json`` (settings, warnings, skips).

A folder holds one generation: :func:`check_out_folder` refuses one that holds other files, or images made by
another method, other generator settings or for (identity, age) pairs this run does not plan (a different age
list); the same generation, or one that adds identities, resumes. Resumable and atomic: every PNG is written to a
temporary file and renamed, and the manifest is rewritten (atomically) after each generator call. On a rerun, an
output is *valid* and skipped when its PNG decodes and its sha256 matches the manifest row, and the row was made by
the same method with the same settings (``config`` column, a hash of the generator's parameters); anything else is
generated again. An interruption therefore leaves only whole files, and at worst one call's finished images are
redone. Under torchrun the processes share the work (see :func:`generate_to`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from agebias import distributed
from agebias.atomic import write_bytes, write_json
from agebias.data.records import Problem
from agebias.errors import BadInputFile, DataError
from agebias.progress import bar
from generators.ages import AgesArg, ages_for
from generators.base import Generator, Identity, Sample

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
PARTS = ".parts"  # torchrun: per-process manifest parts until rank 0 merges them
CONTACT_SHEET = "contact_sheet.png"
RUN_INFO = "generation.json"


@dataclass
class GenerateResult:
    """What :func:`generate_to` did. ``rows``: the manifest rows of this plan (id, age, path, ...)."""

    out: Path
    manifest: Path
    written: int = 0
    reused: int = 0
    skipped: list[Problem] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    contact_sheet: Path | None = None
    warnings: list[str] = field(default_factory=list)
    qc: Any = None  # a generators.qc.QCResult when quality control ran

    @property
    def exit_code(self) -> int:
        return 1 if self.skipped else 0

    def __repr__(self) -> str:
        identities = len({row.get("id") for row in self.rows})
        qc = f", QC: {self.qc.rejected} of {self.qc.checked} rejected" if self.qc is not None else ""
        return (f"GenerateResult({self.out}: {len(self.rows)} images of {identities} identities, {self.written} "
                f"written, {self.reused} kept, {len(self.skipped)} skipped{qc})")


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def sha256_bytes(data: bytes) -> str:
    """Checksum in the manifest's format, ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_hash(method: str, parameters: dict[str, Any]) -> str:
    """Short hash of a method and its settings (decides whether an existing output may be reused)."""
    text = json.dumps({"method": method, "parameters": parameters}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_valid_output(path: Path, checksum: str | None) -> bool:
    """True when ``path`` is a decodable PNG whose sha256 equals ``checksum``."""
    if not checksum or not path.is_file():
        return False
    data = path.read_bytes()
    if sha256_bytes(data) != checksum:
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        return True
    except Exception:  # noqa: BLE001 - whatever PIL raises on a damaged file, the output is redone
        return False


def _layout_path(identity_id: str, age: int) -> str:
    from agebias.data.generated import generated_image_path

    return generated_image_path(Path("."), identity_id, age).as_posix()


def _part_dir(out: Path, rank: int) -> Path:
    """Where torchrun process ``rank`` records its rows: ``<out>/.parts/rank-K/manifest.csv``."""
    return out / PARTS / f"rank-{rank}"


def _read_manifest(out: Path, parts: bool = True) -> dict[tuple[str, int], dict[str, Any]]:
    """``(id, age) -> row`` from ``manifest.csv`` and, with ``parts``, from the per-process parts an interrupted
    torchrun run left (their rows are newer)."""
    from agebias.data.generated import read_generated_rows

    folders = [out] + (sorted((out / PARTS).glob("rank-*")) if parts and (out / PARTS).is_dir() else [])
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for folder in folders:
        for row in read_generated_rows(folder):
            try:
                rows[(row["id"], int(float(row["age"])))] = row
            except (KeyError, ValueError):
                continue
    return rows


def _write_manifest(out: Path, rows: dict[tuple[str, int], dict[str, Any]]) -> Path:
    from agebias.data.generated import write_generated_manifest

    return write_generated_manifest(out, rows.values(), merge=False, compute_checksums=False)


def check_out_folder(out: Path, method: str, params: dict[str, Any], cfg: str, plan: dict[str, list[int]]) -> None:
    """Refuse ``out`` (:class:`DataError`, one line, nothing touched) unless it is absent, empty or holds this
    generation: the same method and generator settings (``cfg``), and images only for (identity, age) pairs of
    ``plan``. Warns when a ``qc/`` folder of an earlier run will not cover the images this run adds."""
    from agebias.data.generated import generation_info

    if not out.is_dir() or not any(p for p in out.iterdir() if not p.name.startswith(".")):
        return
    rows, info = _read_manifest(out), generation_info(out)
    if not rows and not info:
        raise DataError(f"{out} is not empty and holds no generated set (no manifest.csv); choose another --out")
    methods = {str(r.get("method", "")) for r in rows.values()} | ({str(info["method"])} if "method" in info else set())
    configs = {str(r.get("config", "")) for r in rows.values()} | ({str(info["config"])} if "config" in info else set())
    planned = {(i, a) for i, ages in plan.items() for a in ages}
    other = []
    if methods - {method}:
        other.append(f"method ({', '.join(sorted(methods - {method}))}, now {method})")
    elif configs - {cfg}:
        old = info.get("parameters") if isinstance(info.get("parameters"), dict) else {}
        changed = sorted(k for k in set(old) | set(params) if json.dumps(old.get(k), default=str, sort_keys=True)
                         != json.dumps(params.get(k), default=str, sort_keys=True))
        other.append(f"generator settings ({', '.join(changed)})" if old and changed else "generator settings")
    outside = sorted(k for k in rows if k not in planned)
    if outside:
        old_ages = sorted({a for _, a in rows})
        new_ages = sorted({a for _, a in planned})
        other.append(f"ages ({','.join(map(str, old_ages))}, now {','.join(map(str, new_ages))})"
                     if old_ages != new_ages else f"identities ({outside[0][0]} is not in this run)")
    if other:
        raise DataError(f"{out} holds another generation (different {'; '.join(other)}); choose another --out or "
                        f"delete it")
    added = len(planned - set(rows))
    if (out / "qc").is_dir() and added:
        log.warning(f"{out / 'qc'} is the quality check of an earlier run and does not cover the {added} image(s) "
                    f"generated now; it is rewritten only when quality control runs (--qc)")


def generate_to(out: str | Path, generator: Generator, identities: Sequence[Identity], ages: AgesArg, *,
                skipped: Iterable[Problem] = (), contact_sheet: bool = True, max_sheet_rows: int = 24,
                extra_info: dict[str, Any] | None = None) -> GenerateResult:
    """Generate every (identity, age) not already valid in ``out``; write PNGs, manifest, contact sheet.

    ``ages``: a list for every identity, a mapping id -> list, or an :class:`~generators.ages.AgePlan`.
    ``skipped``: sources already rejected upstream (e.g. no face found); they are reported, not fatal.
    A :class:`BadInputFile` raised for one identity is recorded as a skip and the run goes on.

    Under torchrun every process is given the same identities; the work is cut into the generator calls a single
    process would make (chunks of identities), and each process makes a contiguous block of them, recording its
    rows in ``<out>/.parts/rank-K/manifest.csv`` after every chunk. Rank 0 then writes ``manifest.csv``, the contact
    sheet and ``generation.json`` exactly as a single process does (the images are the same files when the
    generator's output does not depend on the process it runs in); the other ranks raise
    :class:`agebias.distributed.ShareDone`. A later run, with any number of processes, first folds the parts of an
    interrupted run into ``manifest.csv``, so their images are kept.
    """
    out = Path(out)
    method = generator.name
    params = generator.parameters()
    cfg = config_hash(method, params)
    plan = {ident.id: ages_for(ages, ident.id) for ident in identities}
    generator.check_ages(sorted({a for v in plan.values() for a in v}))
    info = distributed.init_distributed("cpu")  # only objects and barriers pass between the processes
    check_out_folder(out, method, params, cfg, plan)
    distributed.barrier(info)  # every process has checked the folder before anything is written
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        manifest_rows = _valid_rows(out)
    distributed.barrier(info)  # rank 0 has folded earlier parts into manifest.csv
    if not info.is_main:
        manifest_rows = _read_manifest(out, parts=False)  # (rank 0 may be writing its new part already)

    result = GenerateResult(out=out, manifest=out / MANIFEST, warnings=generator.warnings())
    for w in result.warnings:
        log.warning(w if w.startswith(method) else f"{method}: {w}")
    pending: dict[str, list[int]] = {}
    for ident in identities:
        todo = []
        for age in plan[ident.id]:
            row = manifest_rows.get((ident.id, age))
            if (row is not None and row.get("method") == method and row.get("config") == cfg
                    and row.get("source", "") == (ident.source or "")):
                result.reused += 1
            else:
                todo.append(age)
        if todo:
            pending[ident.id] = todo
    by_id = {ident.id: ident for ident in identities}
    if result.reused:
        log.info(f"{result.reused} valid outputs already in {out} are kept; "
                 f"{sum(len(v) for v in pending.values())} to generate")

    # Identities go to the generator in chunks big enough to fill its batches; the manifest (a part under torchrun)
    # is rewritten after every chunk, so an interruption loses at most one chunk of finished images (they are redone
    # on resume).
    chunks: list[list[str]] = []
    per_call = max(1, int(getattr(generator, "batch_size", 1) or 1))
    for ident_id in pending:
        if chunks and sum(len(pending[i]) for i in chunks[-1]) < per_call:
            chunks[-1].append(ident_id)
        else:
            chunks.append([ident_id])
    block = info.share(len(chunks))
    mine = chunks[block.start:block.stop]
    new_rows: dict[tuple[str, int], dict[str, Any]] = {}
    problems: list[Problem] = []
    with bar(sum(len(pending[i]) for c in mine for i in c), f"generate {method}", unit="img") as progress:
        for chunk in mine:
            try:
                for sample in generator([by_id[i] for i in chunk], {i: pending[i] for i in chunk}):
                    progress.update(1)
                    if sample.image is None:  # the generator could not make this one (reason in info)
                        where = sample.identity.source or sample.identity.id
                        problems.append(Problem(f"{where} (age {sample.age})",
                                                str(sample.info.get("error", "generation failed"))))
                        continue
                    new_rows[(sample.identity.id, sample.age)] = _save_sample(out, sample, method, params, cfg)
            except BadInputFile as err:
                problems.append(Problem(err.path, err.reason))
            if info.enabled:
                _write_manifest(_part_dir(out, info.rank), new_rows)
            else:
                _write_manifest(out, {**manifest_rows, **new_rows})

    shares = distributed.all_gather_objects(info, (new_rows, problems))
    distributed.finish_share(info)
    for rows, _ in shares:
        manifest_rows.update(rows)
    result.written = sum(len(rows) for rows, _ in shares)
    result.skipped = [*skipped, *(p for _, probs in shares for p in probs)]
    if info.enabled or not manifest_rows:
        _write_manifest(out, manifest_rows)
        shutil.rmtree(out / PARTS, ignore_errors=True)
    result.rows = [manifest_rows[(i.id, a)] for i in identities for a in plan[i.id] if (i.id, a) in manifest_rows]
    if contact_sheet and result.rows:
        refs = {i.id: i.image for i in identities if i.image is not None}
        result.contact_sheet = write_contact_sheet(out / CONTACT_SHEET, out, result.rows, max_rows=max_sheet_rows,
                                                   sources=refs)
    write_json(out / RUN_INFO, {
        "method": method, "parameters": params, "config": cfg, "warnings": result.warnings,
        "aligned_crops": bool(generator.output_aligned()),
        "identities": len(identities), "ages": {k: v for k, v in list(plan.items())[:1000]},
        "written": result.written, "reused": result.reused,
        "skipped": [p.as_dict() for p in result.skipped], **(extra_info or {}),
    })
    return result


def _valid_rows(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The rows of ``manifest.csv`` and of the parts of an interrupted torchrun run whose file is there and intact;
    ``manifest.csv`` is rewritten (and the parts removed) when that changes it, so it describes what is on disk."""
    rows = _read_manifest(out)
    valid = {k: r for k, r in rows.items() if is_valid_output(out / r.get("path", ""), r.get("checksum"))}
    if (out / PARTS).is_dir() or len(valid) != len(rows):
        _write_manifest(out, valid)
        shutil.rmtree(out / PARTS, ignore_errors=True)
    return valid


def _save_sample(out: Path, sample: Sample, method: str, params: dict[str, Any], cfg: str) -> dict[str, Any]:
    image = np.asarray(sample.image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{method} produced an image of dtype {image.dtype} shape {image.shape}; need uint8 HxWx3")
    rel = _layout_path(sample.identity.id, sample.age)
    data = encode_png(image)
    write_bytes(out / rel, data)
    ident = sample.identity
    per_sample = {k: v for k, v in sample.info.items() if k != "warnings"}
    return {
        "path": rel, "id": ident.id, "age": int(sample.age), "method": method,
        "seed": "" if ident.seed is None and "seed" not in sample.info else sample.info.get("seed", ident.seed),
        "source": ident.source or "",
        "parameters": json.dumps({**params, **per_sample}, sort_keys=True, default=str),
        "checksum": sha256_bytes(data), "config": cfg,
        "width": image.shape[1], "height": image.shape[0],
        "warnings": "; ".join(sample.info.get("warnings", [])),
    }


def write_contact_sheet(target: Path, out: Path, rows: Sequence[dict[str, Any]], *, max_rows: int = 24,
                        cell: int = 112, sources: dict[str, np.ndarray] | None = None) -> Path:
    """A grid PNG: one row per identity (first ``max_rows``), one column per age (sorted), labelled.

    With ``sources`` (id -> source face) a first column shows each identity's source for comparison.
    """
    from PIL import ImageDraw

    ids: list[str] = []
    per_id: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["id"] not in per_id:
            ids.append(r["id"])
            per_id[r["id"]] = []
        per_id[r["id"]].append(r)
    ids = ids[:max_rows]
    ncols = max(len(per_id[i]) for i in ids)
    label_w, label_h = min(200, 16 + 6 * max(len(i) for i in ids)), 16
    src_col = bool(sources) and any(i in sources for i in ids)
    if src_col:
        label_w += cell + 6
    sheet = Image.new("RGB", (label_w + ncols * cell, label_h + len(ids) * (cell + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    fixed_columns = len({tuple(sorted(int(r["age"]) for r in per_id[i])) for i in ids}) == 1
    if src_col:
        draw.text((label_w - cell - 2, 2), "source", fill=(0, 0, 0))
    if fixed_columns:
        for c, r in enumerate(sorted(per_id[ids[0]], key=lambda r: int(r["age"]))):
            draw.text((label_w + c * cell + 4, 2), f"age {int(r['age'])}", fill=(0, 0, 0))
    for row_i, ident in enumerate(ids):
        y = label_h + row_i * (cell + label_h)
        draw.text((4, y + cell // 2 - 6), ident[:30], fill=(0, 0, 0))
        if src_col and ident in sources:
            thumb = Image.fromarray(np.asarray(sources[ident], dtype=np.uint8)).convert("RGB")
            sheet.paste(thumb.resize((cell, cell), Image.BILINEAR), (label_w - cell - 6, y))
        for c, r in enumerate(sorted(per_id[ident], key=lambda r: int(r["age"]))):
            try:
                with Image.open(out / r["path"]) as img:
                    thumb = img.convert("RGB").resize((cell, cell), Image.BILINEAR)
            except Exception:  # noqa: BLE001 - a damaged image leaves its cell of the sheet empty
                continue
            x = label_w + c * cell
            sheet.paste(thumb, (x, y))
            if not fixed_columns:
                draw.text((x + 4, y + cell + 2), f"age {int(r['age'])}", fill=(0, 0, 0))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_bytes(target, buf.getvalue())
    return target
