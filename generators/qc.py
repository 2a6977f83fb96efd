"""Quality control of generated identities (``agebias generate --qc``).

For every output: MTCNN looks for a face (small images are upscaled to at least 160 px first); the face is aligned
to the ArcFace 112x112 template and embedded with the chosen model (default ``sface``). The identity's reference
is its source face (source-driven generators) or, for seed-driven ones, the mean embedding of the identity's
*other* outputs (leave-one-out). An output is rejected when no face is found or its cosine similarity to the
reference is below ``min_similarity`` (default 0.3). Results: ``<out>/qc/qc.csv`` (one row per output),
``<out>/qc/qc.json`` (summary + rejected list), ``<out>/qc/similarity_vs_age.png``, and the manifest gains the
columns ``qc`` (``pass`` / ``reject: reason``) and ``qc_similarity`` so later stages can filter.

Apparent age: an ``age_estimator`` callable (uint8 112x112x3 RGB crop -> years) can be passed by library users;
no age estimator ships with the installed packages, so the CLI reports "not checked".
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from agebias.atomic import write_bytes, write_json, write_text
from agebias.progress import track
from generators.base import Identity

QC_DIR = "qc"


@dataclass
class QCResult:
    checked: int
    rejected: int
    csv: Path
    json: Path
    plot: Path | None
    rows: list[dict[str, Any]]


def _face_crop(image: np.ndarray, device: str) -> np.ndarray | None:
    """Detect the main face and align it to 112x112; None when no face is found."""
    import cv2

    from agebias.data.align import align_face
    from agebias.data.detect import detect_faces, pick_main_face

    h, w = image.shape[:2]
    scale = max(1.0, 160.0 / min(h, w))
    work = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC) if scale > 1 \
        else image
    det = pick_main_face(detect_faces(work, device=device), work.shape)
    if det is None:
        return None
    return align_face(work, det.landmarks, 112)


def run_qc(out: str | Path, rows: Sequence[dict[str, Any]], identities: dict[str, Identity], *,
           model: str = "sface", min_similarity: float = 0.3, device: str | None = None,
           age_estimator: Callable[[np.ndarray], float] | None = None, embedder: Any = None) -> QCResult:
    """Check every output in ``rows`` (manifest rows) and write the QC files; see the module notes."""
    from agebias.data.images import load_image
    from agebias.models.embedder import build_embedder

    out = Path(out)
    det_device = "cpu" if not device or device == "auto" else str(device)
    emb = embedder if embedder is not None else build_embedder(model, device=device)
    crops: list[np.ndarray] = []
    index: list[int] = []
    results: list[dict[str, Any]] = []
    for i, row in enumerate(track(rows, "QC: detecting faces", total=len(rows), unit="img")):
        r = {"id": row["id"], "age": int(row["age"]), "path": row["path"], "face_found": False,
             "similarity": None, "accepted": False, "reason": ""}
        crop = _face_crop(load_image(out / row["path"]), det_device)
        if crop is None:
            r["reason"] = "no face detected"
        else:
            r["face_found"] = True
            crops.append(crop)
            index.append(i)
            if age_estimator is not None:
                r["apparent_age"] = float(age_estimator(crop))
                r["age_error"] = abs(r["apparent_age"] - r["age"])
        results.append(r)
    embs = emb.embed(np.stack(crops)) if crops else np.zeros((0, 1), np.float32)
    by_row = {i: e for i, e in zip(index, embs)}
    refs = _references(rows, identities, by_row, emb, det_device)
    for i, r in enumerate(results):
        if i not in by_row:
            continue
        ref = refs.get(i)
        if ref is None:
            r["reason"] = "no reference (identity has no source face and no other output)"
            continue
        r["similarity"] = round(float(np.dot(by_row[i], ref)), 4)
        r["accepted"] = r["similarity"] >= min_similarity
        if not r["accepted"]:
            r["reason"] = f"similarity {r['similarity']:.3f} < {min_similarity}"
    return _write(out, rows, results, model, min_similarity, age_estimator is not None)


def _references(rows, identities, by_row, emb, device) -> dict[int, np.ndarray]:
    """Reference embedding per output row: the source face, else leave-one-out mean of the identity's outputs."""
    refs: dict[int, np.ndarray] = {}
    src_emb: dict[str, np.ndarray | None] = {}
    for ident_id, ident in identities.items():
        if ident.image is not None:
            crop = ident.image if ident.image.shape[:2] == (112, 112) else _face_crop(ident.image, device)
            src_emb[ident_id] = emb.embed(crop[None])[0] if crop is not None else None
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if i in by_row:
            groups.setdefault(row["id"], []).append(i)
    for ident_id, members in groups.items():
        src = src_emb.get(ident_id)
        for i in members:
            if src is not None:
                refs[i] = src
                continue
            others = [by_row[j] for j in members if j != i]
            if others:
                m = np.mean(others, axis=0)
                refs[i] = m / max(float(np.linalg.norm(m)), 1e-12)
    return refs


def _write(out: Path, rows, results, model, threshold, with_age) -> QCResult:
    from agebias.data.generated import write_generated_manifest

    qdir = out / QC_DIR
    cols = ["id", "age", "path", "face_found", "similarity", "accepted", "reason"]
    if with_age:
        cols += ["apparent_age", "age_error"]
    lines = [",".join(cols)]
    for r in results:
        lines.append(",".join(_csv(r.get(c)) for c in cols))
    write_text(qdir / "qc.csv", "\n".join(lines) + "\n")
    rejected = [r for r in results if not r["accepted"]]
    summary = {"model": model, "min_similarity": threshold, "checked": len(results), "rejected": len(rejected),
               "reference": "source face (editing generators) or leave-one-out mean of the identity's outputs",
               "apparent_age": "checked" if with_age else "not checked: no age estimator installed",
               "rejected_outputs": rejected}
    write_json(qdir / "qc.json", summary)
    plot = _plot(qdir / "similarity_vs_age.png", results, threshold)
    updated = []
    for row, r in zip(rows, results):
        row = dict(row)
        row["qc"] = "pass" if r["accepted"] else f"reject: {r['reason']}"
        row["qc_similarity"] = "" if r["similarity"] is None else r["similarity"]
        updated.append(row)
    write_generated_manifest(out, updated, merge=True, compute_checksums=False)
    return QCResult(len(results), len(rejected), qdir / "qc.csv", qdir / "qc.json", plot, results)


def _csv(v: Any) -> str:
    if v is None:
        return ""
    s = str(v)
    return '"' + s.replace('"', '""') + '"' if ("," in s or '"' in s) else s


def _plot(target: Path, results, threshold) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ok = [(r["age"], r["similarity"]) for r in results if r["accepted"]]
    bad = [(r["age"], r["similarity"]) for r in results if not r["accepted"] and r["similarity"] is not None]
    noface = [r["age"] for r in results if not r["face_found"]]
    if ok:
        ax.scatter(*zip(*ok), s=14, c="tab:blue", label="accepted")
    if bad:
        ax.scatter(*zip(*bad), s=18, c="tab:red", marker="x", label="rejected (similarity)")
    if noface:
        ax.scatter(noface, [0.0] * len(noface), s=18, c="black", marker="v", label="no face detected")
    ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"threshold {threshold}")
    ax.set_xlabel("target age (years)")
    ax.set_ylabel("cosine similarity to reference")
    ax.set_title("Generated identities: identity similarity vs age")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(target, buf.getvalue())
    return target
