"""Library entry points of the evaluator: ``evaluate_records`` (embeddings in, an
:class:`~agebias.evaluate.result.EvaluationResult` out), ``evaluate_scores`` (any system's scores),
``match_embeddings`` (precomputed embeddings to records). Nothing here writes files: :meth:`EvaluationResult.save`
does (:mod:`agebias.evaluate.outputs`).

``results.json`` layout (schema ``agebias.evaluate/2``)::

    {
      "schema": "agebias.evaluate/2",
      "settings": {...EvalSettings...},
      "dataset": {"name", "root", "n_records", "skipped": [{"path", "reason"}], "preparation": {...}},
      "model_order": ["baseline", "finetuned"],
      "models": {name: SECTION, ...}
    }

Schema 1 files also repeated the first model's SECTION at the top level (``results["overall"]``); schema 2 keeps
each model once, under ``models``: read ``results["models"][results["model_order"][0]]["overall"]``, or load either
schema with :meth:`EvaluationResult.load`.

SECTION (all-pairs protocol): ``data`` (counts), ``pair_grouping``, ``intervals`` (how ``*_ci`` were made),
``overall`` {threshold, target_fmr, realised_fmr, fmr, fnmr, fmr_ci, fnmr_ci (subject bootstrap), fmr_pairs_ci,
fnmr_pairs_ci (Clopper-Pearson, pairs assumed independent), eer, eer_threshold, auc, d_prime, fnmr_at_fmr {"0.01",
"0.001", "0.0001"}, fnmr_at_fmr_detail, ...}, ``groups`` {label: {n_genuine, n_impostor, fmr, fnmr, fmr_ci,
fnmr_ci, fmr_pairs_ci, fnmr_pairs_ci (all at the global threshold), eer, auc, d_prime, fnmr_at_fmr (at the global
threshold for each target FMR, from the pooled impostors), fnmr_at_group_fmr (at the group's own threshold for
each target FMR, from the group's impostors), ...}}, ``groups_small_gap`` (same-group genuine pairs with a small
age gap), ``fairness`` {garbe, fdr, ir, alpha, garbe_ci, fdr_ci, bootstrap, disparities, ...},
``fairness_vs_fmr`` [{target_fmr, threshold, garbe, fdr, group_fmr, group_fnmr}], ``impostor_table`` (age group x
age group FMR), ``age_gap`` (genuine FNMR by age gap), ``curves`` (DET data per group), ``histograms``,
``genuine_vs_gap``, ``instance_level``, ``identification``, ``warnings``. The ``msc`` protocol's section is
described in :mod:`agebias.evaluate.msc`.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agebias.data.records import FaceRecord, Problem
from agebias.errors import DataError, SettingsError
from agebias.evaluate.settings import EvalSettings

log = logging.getLogger(__name__)

SCHEMA = "agebias.evaluate/2"


def evaluate_section(records: Sequence[FaceRecord], embeddings: np.ndarray, st: EvalSettings, *,
                     identification_embeddings: np.ndarray | None = None, flip_fused: bool | None = None) -> dict:
    """One model's results section (no files written). ``identification_embeddings``: flip-fused embeddings for
    FR-NAS's identification metrics (default: ``embeddings``; ``flip_fused`` says whether those were fused)."""
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise DataError(f"embeddings of shape {emb.shape} for {len(records)} images: need an (N, D) array, one row "
                        "per image")
    if emb.shape[0] != len(records):
        raise DataError(f"{emb.shape[0]} embeddings for {len(records)} images (need one (N, D) row per image)")
    if not np.issubdtype(emb.dtype, np.number):
        raise DataError(f"embeddings of type {emb.dtype}: need numbers")
    unusable = ~np.isfinite(emb).all(axis=1) | ~emb.any(axis=1)
    if unusable.any():
        first = int(np.flatnonzero(unusable)[0])
        raise DataError(f"{int(unusable.sum())} embedding row(s) are all zeros or hold NaN/infinite values, e.g. "
                        f"row {first} ({records[first].path}); a cosine score needs a finite, non-zero row")
    if len(records) < 2:
        raise DataError("need at least two images to form pairs")
    subjects = [r.subject for r in records]
    ages = [r.age for r in records]
    if len(set(subjects)) < 2:
        raise DataError("all images belong to one subject: impostor pairs need at least two subjects")
    if st.protocol == "msc":
        from agebias.evaluate.msc import evaluate_msc

        return evaluate_msc(emb, subjects, ages, st, paths=[str(r.path) for r in records])
    from agebias.evaluate.allpairs import evaluate_embeddings_allpairs

    return evaluate_embeddings_allpairs(emb, subjects, ages, st, identification_emb=identification_embeddings,
                                        flip_fused=flip_fused)


def evaluate_records(records: Sequence[FaceRecord], embeddings_by_model: dict[str, np.ndarray],
                     settings: EvalSettings | None = None, *, dataset_name: str = "", dataset_root: str = "",
                     skipped: Sequence[Problem] = (), preparation: dict[str, Any] | None = None,
                     identification_embeddings: dict[str, np.ndarray] | None = None):
    """Evaluate one or more models on the same images (``embeddings_by_model``: name -> (N, D) array in
    ``records`` order). ``identification_embeddings``: per model, embeddings fused with their mirror images for
    FR-NAS's identification metrics (without them those metrics use the given embeddings and say whether
    ``preparation`` records them as fused). Returns an :class:`~agebias.evaluate.result.EvaluationResult`;
    nothing is written."""
    from agebias.evaluate.result import EvaluationResult

    st = settings or EvalSettings()
    if not embeddings_by_model:
        raise SettingsError("no model to evaluate")
    models = {}
    for name, emb in embeddings_by_model.items():
        log.info(f"evaluating {name} on {len(records)} images ({st.protocol})")
        fused = (identification_embeddings or {}).get(name)
        models[name] = evaluate_section(records, emb, st, identification_embeddings=fused,
                                        flip_fused=True if fused is not None else (preparation or {}).get("flip"))
    return EvaluationResult({
        "schema": SCHEMA,
        "settings": st.to_dict(),
        "dataset": {"name": dataset_name, "root": str(dataset_root), "n_records": len(records),
                    "skipped": [p.as_dict() for p in skipped], "preparation": dict(preparation or {})},
        "model_order": list(models),
        "models": models,
    })


def evaluate_embeddings(records: Sequence[FaceRecord], embeddings: np.ndarray, out_dir: str | os.PathLike,
                        settings: EvalSettings | None = None, model_name: str = "model") -> dict:
    """One model evaluated and its files written to ``out_dir``; returns the results dict."""
    result = evaluate_records(records, {model_name: embeddings}, settings)
    result.save(out_dir)
    return result.to_dict()


def evaluate_scores(path: str | os.PathLike, group_column: str | None = "group", target_fmr: float = 1e-3,
                    threshold: float | None = None, alpha: float = 0.5,
                    fmr_targets: Sequence[float] = (1e-2, 1e-3, 1e-4)) -> dict:
    """Metrics from a CSV of any system's scores: columns ``score``, ``genuine`` (1/0), optional group column."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"score file {p} is a folder, not a CSV file")
    if not p.is_file():
        raise DataError(f"score file {p} not found")
    try:
        return _evaluate_scores_file(p, group_column, target_fmr, threshold, alpha, fmr_targets)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{p}: not a readable UTF-8 CSV file ({type(err).__name__}: {str(err)[:120]})") from None


def _evaluate_scores_file(p: Path, group_column: str | None, target_fmr: float, threshold: float | None,
                          alpha: float, fmr_targets: Sequence[float]) -> dict:
    from agebias.evaluate import metrics as M
    from agebias.evaluate.fairness import GroupTable

    with p.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        for need in ("score", "genuine"):
            if need not in cols:
                raise DataError(f"{p}: column {need!r} missing (columns: {', '.join(cols) or 'none'})")
        if group_column and group_column != "group" and group_column not in cols:
            raise DataError(f"{p}: group column {group_column!r} missing (columns: {', '.join(cols)})")
        use_group = group_column is not None and group_column in cols
        scores, gen, groups, bad = [], [], [], []
        for n, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k is not None}
            try:
                s = float(row["score"])
                g = str(row["genuine"]).strip().lower()
                if g in ("1", "true", "yes", "1.0"):
                    gv = True
                elif g in ("0", "false", "no", "0.0"):
                    gv = False
                else:
                    raise ValueError(f"genuine must be 1 or 0, not {row['genuine']!r}")
                if s != s or s in (float("inf"), float("-inf")):
                    raise ValueError("score is not a finite number")
            except (ValueError, TypeError) as err:
                bad.append({"line": n, "reason": str(err)})
                continue
            scores.append(s)
            gen.append(gv)
            groups.append(str(row.get(group_column, "")).strip() if use_group else "")
    s = np.asarray(scores, dtype=np.float64)
    gm = np.asarray(gen, dtype=bool)
    grp = np.asarray(groups, dtype=object)
    if s.size == 0:
        raise DataError(f"{p}: no usable rows")
    if threshold is not None:
        tau, realised = float(threshold), M.rate(int((s[~gm] >= threshold).sum()), int((~gm).sum()))
    else:
        tau, realised = M.threshold_at_fmr(s[~gm], target_fmr)
    overall = M.summarize(s[gm], s[~gm], tau, fmr_targets)
    result = {"schema": "agebias.scores/1",
              "settings": {"target_fmr": None if threshold is not None else target_fmr, "threshold": threshold,
                           "alpha": alpha, "group_column": group_column if use_group else None,
                           "source": str(p)},
              "overall": {**overall.as_dict(), "realised_fmr": realised}, "skipped_rows": bad}
    if use_group:
        names = sorted(set(grp.tolist()) - {""})
        rates, extra = {}, {}
        for name in names:
            m = grp == name
            sm = M.summarize(s[m & gm], s[m & ~gm], tau, fmr_targets)
            rates[name] = sm.rates
            d = sm.as_dict()
            extra[name] = {k: d[k] for k in ("eer", "eer_threshold", "auc", "d_prime")}
            extra[name]["fnmr_at_group_fmr"] = d["fnmr_at_fmr"]  # at the group's own threshold for each FMR
        table = GroupTable(tau, rates, overall.rates, alpha, extra)
        result["groups"] = {name: {"n_genuine": r.n_genuine, "n_impostor": r.n_impostor,
                                   "false_matches": r.false_matches, "false_non_matches": r.false_non_matches,
                                   "fmr": r.fmr, "fnmr": r.fnmr, "fmr_pairs_ci": list(r.fmr_ci),
                                   "fnmr_pairs_ci": list(r.fnmr_ci), **extra[name]} for name, r in rates.items()}
        result["fairness"] = table.fairness()
    return result


def match_embeddings(records: Sequence[FaceRecord], npz_path: str | os.PathLike, root: str | os.PathLike = ""
                     ) -> tuple[list[FaceRecord], np.ndarray, list[Problem]]:
    """Rows of an ``agebias embed`` .npz matched to records on ``paths`` (the same spelling, then the same absolute
    path, then relative to ``root``, then file name when unique). Records without an embedding are returned as
    problems."""
    p = Path(npz_path)
    if not p.is_file():
        raise DataError(f"embeddings file {p} not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "paths" not in z or "embeddings" not in z:
                raise DataError(f"{p}: needs arrays 'paths' and 'embeddings' (as written by 'agebias embed')")
            paths = np.asarray(z["paths"]).astype(str).tolist()
            emb = np.asarray(z["embeddings"], dtype=np.float32)
    except (OSError, ValueError) as err:
        raise DataError(f"{p}: not a readable .npz ({err})") from None
    if emb.ndim != 2 or emb.shape[0] != len(paths):
        raise DataError(f"{p}: 'embeddings' must be (N, D) with one row per path")
    base = os.fspath(root) if root else None

    def keys(path: str) -> list[str]:
        out = [os.path.normcase(os.path.abspath(path))]
        if base is not None and not os.path.isabs(path):
            out.append(os.path.normcase(os.path.abspath(os.path.join(base, path))))
        return out

    spelled: dict[str, int] = {}
    for i, path in enumerate(paths):
        spelled.setdefault(path, i)
    index: dict[str, int] = {}
    names: dict[str, list[int]] = {}

    def normalised_match(path: str) -> int | None:
        if not index:  # built on the first path spelled differently
            for i, other in enumerate(paths):
                for k in keys(other):
                    index.setdefault(k, i)
                names.setdefault(os.path.basename(other), []).append(i)
        cand = [index[k] for k in keys(path) if k in index]
        if not cand and len(names.get(os.path.basename(path), [])) == 1:
            cand = names[os.path.basename(path)]
        return cand[0] if cand else None

    finite = np.isfinite(emb).all(axis=1)
    nonzero = np.any(emb != 0, axis=1)
    kept, rows, problems = [], [], []
    for r in records:
        path = os.fspath(r.path)
        i = spelled.get(path)
        if i is None:
            i = normalised_match(path)
        if i is None:
            problems.append(Problem(path, f"no embedding in {p.name}"))
            continue
        if not (finite[i] and nonzero[i]):
            problems.append(Problem(path, f"its embedding in {p.name} is "
                                          + ("not finite (NaN/inf)" if not finite[i] else "all zeros")))
            continue
        kept.append(r)
        rows.append(i)
    return kept, emb[np.asarray(rows, dtype=np.int64)] if rows else emb[:0], problems
