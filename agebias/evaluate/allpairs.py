"""The all-pairs protocol: every metric of one model's embeddings as a JSON-ready results section.

Order of work: one pass over all pairs (:func:`agebias.evaluate.pairs.score_all_pairs`, told by :func:`exact_needs`
what must be exact), the metrics (an extra pass only if a bin they need was not kept, see
:func:`agebias.evaluate.pairs.exactly`), then the subject bootstrap (the ``fmr_ci``/``fnmr_ci`` intervals), the
instance-level protocol and the identification metrics.

Two thresholds per target FMR, named apart: ``fnmr_at_fmr`` (overall and per group) is the FNMR at the *global*
tau for that target (from the pooled impostors, the same tau for every group); ``fnmr_at_group_fmr`` (per group)
is the FNMR at the group's *own* tau for that target (from the group's impostors only).
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np

from agebias.evaluate import metrics as M
from agebias.evaluate.bootstrap import subject_bootstrap
from agebias.evaluate.fairness import GroupTable, fdr, garbe
from agebias.evaluate.grouping import AgeBins, ages_array, describe_mode, image_groups, make_grouping
from agebias.evaluate.identification import identification_by_group, rank1_from_pairs
from agebias.evaluate.instance import instance_level, mixfair_threshold
from agebias.evaluate.bins import HI, LO, NB, tau_bin
from agebias.evaluate.pairs import ExactNeeds, PairScores, exactly, normalise, score_all_pairs
from agebias.evaluate.settings import EvalSettings

log = logging.getLogger(__name__)


IDENTIFICATION_AUTO_MAX = 20000
"""``identification = "auto"`` computes full ranks up to this many images (rank-1 from the pair pass above)."""


def identification_ranks(st: EvalSettings, n_images: int) -> bool:
    """Whether the all-pairs protocol computes FR-NAS's identification ranks (and so wants flip-fused embeddings)
    for a set of ``n_images``."""
    return st.protocol == "all-pairs" and (st.identification == "on" or (st.identification == "auto"
                                                                         and n_images <= IDENTIFICATION_AUTO_MAX))


def exact_needs(st: EvalSettings) -> ExactNeeds:
    """Everything :func:`_metrics` asks of the impostor scores at exact resolution, from the settings (the
    instance level needs the order statistics at its target FPR and at 1.1 times it)."""
    ops = () if st.threshold is not None else (st.target_fmr,)
    inst = (st.instance_fpr, 1.1 * st.instance_fpr)
    return ExactNeeds(fmrs=(*ops, *st.fmr_targets, *st.curve_fmrs, *inst), group_fmrs=tuple(st.fmr_targets),
                      accept_fmrs=(*ops, *inst),
                      thresholds=() if st.threshold is None else (float(st.threshold),),
                      eer=True, group_eer=True, max_accepted=st.max_accepted_pairs)


def _metrics(ps: PairScores, st: EvalSettings) -> dict:
    """Every pair metric; in planning mode (streamed, bins missing) some numbers are stand-ins."""
    gp = ps.grouping
    gen_groups = gp.genuine_groups(ps.gen_i, ps.gen_j)
    gen_all = M.ExactDist(ps.gen_score)
    imp_all = ps.impostor_dist(None)
    if st.threshold is not None:
        tau, realised = float(st.threshold), M.rate(imp_all.count_ge(st.threshold), imp_all.n)
    else:
        tau, realised = M.threshold_at_fmr(imp_all, st.target_fmr)
    overall = M.summarize(gen_all, imp_all, tau, st.fmr_targets)
    global_taus = {t: v["threshold"] for t, v in overall.fnmr_at_fmr.items()}  # target FMR -> global tau
    group_rates, extra, dists = {}, {}, {}
    for g, lab in enumerate(gp.labels):
        gd = M.ExactDist(ps.gen_score[gen_groups == g])
        idist = ps.impostor_dist(gp.keys_of_group(g))
        dists[lab] = (gd, idist)
        sm = M.summarize(gd, idist, tau, st.fmr_targets)
        group_rates[lab] = sm.rates
        d = sm.as_dict()
        extra[lab] = {k: d[k] for k in ("eer", "eer_threshold", "auc", "d_prime", "mean_genuine", "mean_impostor")}
        at_global = {M.target_key(t): {"target_fmr": t, "threshold": tt,
                                       "fmr": M.rate(idist.count_ge(tt), idist.n) if tt == tt else math.nan,
                                       "fnmr": M.rate(gd.count_lt(tt), gd.n) if tt == tt else math.nan}
                     for t, tt in global_taus.items()}
        extra[lab]["fnmr_at_fmr"] = {key: v["fnmr"] for key, v in at_global.items()}
        extra[lab]["fnmr_at_fmr_detail"] = at_global
        extra[lab]["fnmr_at_group_fmr"] = d["fnmr_at_fmr"]
        extra[lab]["fnmr_at_group_fmr_detail"] = d["fnmr_at_fmr_detail"]
        if hasattr(idist, "auc_error_bound"):
            extra[lab]["auc_error_bound"] = idist.auc_error_bound
    table = GroupTable(tau, group_rates, overall.rates, st.alpha, extra)
    # fairness over a range of target FMRs (one global tau each)
    curve = []
    for t in st.curve_fmrs:
        tt, rf = M.threshold_at_fmr(imp_all, t)
        fm = [M.rate(d[1].count_ge(tt), d[1].n) for d in dists.values()]
        fn = [M.rate(d[0].count_lt(tt), d[0].n) for d in dists.values()]
        curve.append({"target_fmr": t, "threshold": tt, "fmr": rf, "garbe": garbe(fm, fn, st.alpha),
                      "fdr": fdr(fm, fn, st.alpha), "group_fmr": dict(zip(dists, fm, strict=True)),
                      "group_fnmr": dict(zip(dists, fn, strict=True))})
    # age group x age group impostor table (every grouping mode)
    cells = {}
    rows = gp.cell_labels
    for (a, b), keys in gp.cell_keys().items():
        dd = ps.impostor_dist(keys)
        k = dd.count_ge(tau)
        cells[f"{rows[a]}|{rows[b]}"] = {"row": rows[a], "col": rows[b], "n_impostor": dd.n, "false_matches": k,
                                         "fmr": M.rate(k, dd.n)}
    curves = {"overall": M.det_curve(gen_all, imp_all)}
    for lab, (gd, idist) in dists.items():
        curves[lab] = M.det_curve(gd, idist)
    inst_thr, inst_fpr, inst_converged = mixfair_threshold(imp_all, st.instance_fpr)
    od = overall.as_dict()
    if hasattr(imp_all, "auc_error_bound"):
        od["auc_error_bound"] = imp_all.auc_error_bound
    inst_tau = float(np.nextafter(np.float64(inst_thr), np.inf)) if inst_thr == inst_thr else math.nan
    return {"tau": tau, "realised_fmr": realised, "overall": od, "table": table, "fairness_curve": curve,
            "impostor_cells": cells, "curves": curves,
            "instance_tau": (inst_tau, inst_fpr, inst_thr, inst_converged)}


def _gap_sets(ps: PairScores, ages: np.ndarray, gap_bins: str) -> dict[str, np.ndarray]:
    """Genuine pairs by age gap |a1 - a2| (both ages known): bin label -> mask over the genuine pairs."""
    a, b = ages[ps.gen_i], ages[ps.gen_j]
    known = (a >= 0) & (b >= 0)
    gap = np.abs(a - b)
    bins = AgeBins.parse(gap_bins)
    return {lab: known & (gap >= lo) & (gap <= hi) for lab, (lo, hi) in zip(bins.labels, bins.edges, strict=True)}


def _small_gap_sets(ps: PairScores, ages: np.ndarray, age_bins: str, max_gap: int) -> dict[str, np.ndarray]:
    """Same-group, small-gap genuine pairs: both images in age group g and |a1 - a2| <= max_gap."""
    a, b = ages[ps.gen_i], ages[ps.gen_j]
    bins = AgeBins.parse(age_bins)
    ga, gb = bins.assign(a), bins.assign(b)  # unknown ages (-1) fall in no bin
    ok = (a >= 0) & (b >= 0) & (ga == gb) & (np.abs(a - b) <= max_gap)
    return {lab: ok & (ga == g) for g, lab in enumerate(bins.labels)}


def reported_ci(bootstrap: list[float] | None, pairs: list[float]) -> list[float]:
    """The default ``fmr_ci``/``fnmr_ci``: the subject-bootstrap interval, never narrower than Clopper-Pearson over
    pairs (the bootstrap cannot see uncertainty where no error occurred: FNMR 0 resamples to [0, 0]); Clopper-Pearson
    alone when the bootstrap is off or undefined."""
    boot = [math.nan, math.nan] if bootstrap is None else list(bootstrap)
    if not all(math.isfinite(v) for v in boot):
        return list(pairs)
    if not all(math.isfinite(v) for v in pairs):
        return boot
    return [min(boot[0], pairs[0]), max(boot[1], pairs[1])]


def _genuine_table(ps: PairScores, sets: dict[str, np.ndarray], tau: float, cis: dict | None) -> dict:
    """FNMR at tau of each set of genuine pairs, with its subject-bootstrap and Clopper-Pearson intervals."""
    out = {}
    for lab, m in sets.items():
        r = M.rates_at(ps.gen_score[m], [], tau)
        out[lab] = {"n_genuine": r.n_genuine, "false_non_matches": r.false_non_matches, "fnmr": r.fnmr,
                    "fnmr_ci": reported_ci((cis or {}).get(lab), list(r.fnmr_ci)),
                    "fnmr_pairs_ci": list(r.fnmr_ci),
                    "mean_score": float(ps.gen_score[m].mean()) if m.any() else math.nan}
    return out


def _genuine_sample(ps: PairScores, ages: np.ndarray, max_points: int = 5000, seed: int = 0) -> dict:
    """Genuine (age gap, score) points for the score-vs-gap plot (a seeded sample when there are many)."""
    a, b = ages[ps.gen_i], ages[ps.gen_j]
    m = np.flatnonzero((a >= 0) & (b >= 0))
    if m.size > max_points:
        m = np.sort(np.random.default_rng(seed).choice(m, max_points, replace=False))
    return {"age_gap": np.abs(a[m] - b[m]).tolist(), "score": ps.gen_score[m].astype(float).tolist()}


def _histograms(ps: PairScores, gen_groups: np.ndarray, labels: list[str], bins: int = 100) -> dict:
    """Score histograms per group (genuine and impostor) on a common grid, for the distribution plots."""
    edges = np.linspace(-1, 1, 2 * bins + 1)
    out = {"edges": edges.tolist(), "groups": {}}

    def imp_hist(keys):
        if not ps.streamed:
            s = ps.imp_score if keys is None else ps.imp_score[np.isin(ps.imp_key, keys)]
            return np.histogram(np.clip(s, -1, 1), edges)[0]
        h = ps.hist.sum(axis=0) if keys is None else ps.hist[np.asarray(keys)].sum(axis=0)
        centres = LO + (np.arange(NB) + 0.5) * ((HI - LO) / NB)  # the engine's bins
        pos = np.clip(np.searchsorted(edges, centres, side="right") - 1, 0, edges.size - 2)
        return np.bincount(pos, weights=h, minlength=edges.size - 1)

    for g, lab in enumerate(["overall", *labels]):
        gm = np.ones(gen_groups.size, bool) if g == 0 else gen_groups == g - 1
        keys = None if g == 0 else ps.grouping.keys_of_group(g - 1)
        out["groups"][lab] = {"genuine": np.histogram(np.clip(ps.gen_score[gm], -1, 1), edges)[0].tolist(),
                              "impostor": np.asarray(imp_hist(keys)).astype(int).tolist()}
    return out


def undefined_fairness_warnings(fmr: list[float], fnmr: list[float]) -> list[str]:
    """Say in plain words why GARBE or IR is undefined (n/a) rather than leaving a bare blank."""
    out = []
    for rate, rates in (("FMR", fmr), ("FNMR", fnmr)):
        values = [x for x in rates if x == x]  # NaN (empty group) left out
        if len(values) >= 2 and max(values) == 0:
            out.append(f"GARBE and IR are undefined: {rate} is 0 in every age group at this threshold (no "
                       f"{'false matches' if rate == 'FMR' else 'false non-matches'}), so its Gini and max/min "
                       f"ratio have no value.")
        elif len(values) >= 2 and min(values) == 0:
            out.append(f"IR is undefined: {rate} is 0 in some age group, so the max/min ratio is infinite.")
    return out


def evaluate_embeddings_allpairs(emb: np.ndarray, subjects: Sequence, ages: Sequence[int | None],
                                 st: EvalSettings, identification_emb: np.ndarray | None = None,
                                 flip_fused: bool | None = None) -> dict:
    """The all-pairs results section for one model (see :mod:`agebias.evaluate.api` for the layout). ``emb`` as
    given: the pair engine normalises it (once, so that every caller of the engine scores identical bits).
    ``identification_emb``: the flip-fused embeddings FR-NAS's identification metrics use (default ``emb``;
    ``flip_fused`` says whether the embeddings used there were fused with their mirror images)."""
    gp = make_grouping(ages, st.pair_grouping, st.age_bins, st.gap_bins)
    ps = score_all_pairs(emb, subjects, gp, block=st.block, keep_all_pairs=st.keep_all_pairs, needs=exact_needs(st),
                         seed=st.seed)

    def accepted_from(res: dict) -> int | None:
        """The lowest bin whose accepted pairs the bootstrap and the instance level need, if not yet listed."""
        taus = [t for t in (res["tau"], res["instance_tau"][0]) if t == t and abs(t) != math.inf]
        if not ps.streamed or not taus:
            return None
        need = min(tau_bin(t) for t in taus)
        if ps.accepted_from_bin is not None and ps.accepted_from_bin <= need:
            return None
        return need if int(ps.hist[:, need:].sum()) <= st.max_accepted_pairs else None

    res = exactly(ps, lambda p: _metrics(p, st), accepted_from)
    ages_arr = ages_array(ages)
    table: GroupTable = res["table"]
    gen_groups = gp.genuine_groups(ps.gen_i, ps.gen_j)
    tau = res["tau"]
    gap_sets = _gap_sets(ps, ages_arr, st.gap_bins)
    small_sets = _small_gap_sets(ps, ages_arr, st.age_bins, st.small_gap)
    warnings = []
    # subject bootstrap (the default intervals), instance level: both need the accepted impostor pairs
    try:
        ai, aj, _ = ps.accepted_impostors(tau)
        have_pairs = True
    except RuntimeError:
        ai = aj = np.zeros(0, np.int64)
        have_pairs = False
        warnings.append("Too many impostor pairs above the threshold to list: bootstrap intervals and "
                        "instance-level results were skipped.")
    bs: dict = {}
    if have_pairs and st.bootstrap > 0:
        sets = {**{f"gap {k}": v for k, v in gap_sets.items()}, **{f"small {k}": v for k, v in small_sets.items()}}
        bs = subject_bootstrap(gp, ps.subjects, ps.gen_i, ps.gen_j, ps.gen_score.astype(np.float64) >= tau,
                               ai, aj, alpha=st.alpha, n_boot=st.bootstrap, seed=st.seed, level=st.confidence,
                               genuine_sets=sets)
        bs.pop("replicate_fmr", None)
        bs.pop("replicate_fnmr", None)
    none = [math.nan, math.nan]
    set_cis = bs.pop("genuine_set_fnmr_ci", {})
    gap_cis = {k[len("gap "):]: v for k, v in set_cis.items() if k.startswith("gap ")}
    small_cis = {k[len("small "):]: v for k, v in set_cis.items() if k.startswith("small ")}
    groups = {}
    for lab, r in table.groups.items():
        e = table.extra[lab]
        groups[lab] = {"n_genuine": r.n_genuine, "n_impostor": r.n_impostor, "false_matches": r.false_matches,
                       "false_non_matches": r.false_non_matches, "fmr": r.fmr, "fnmr": r.fnmr,
                       "fmr_ci": reported_ci(bs.get("group_fmr_ci", {}).get(lab), list(r.fmr_ci)),
                       "fnmr_ci": reported_ci(bs.get("group_fnmr_ci", {}).get(lab), list(r.fnmr_ci)),
                       "fmr_pairs_ci": list(r.fmr_ci), "fnmr_pairs_ci": list(r.fnmr_ci), **e}
        if r.n_genuine == 0 and r.n_impostor == 0:
            warnings.append(f"Age group {lab} has no pairs; its rates are undefined.")
        elif r.n_genuine < st.min_group_pairs or r.n_impostor < st.min_group_pairs:
            warnings.append(f"Age group {lab} has only {r.n_genuine} genuine and {r.n_impostor} impostor pairs; "
                            f"its rates are very uncertain" + (" (FNMR undefined)" if r.n_genuine == 0 else
                                                               " (FMR undefined)" if r.n_impostor == 0 else "")
                            + ".")
    fair = table.fairness()
    warnings += undefined_fairness_warnings([r.fmr for r in table.groups.values()],
                                            [r.fnmr for r in table.groups.values()])
    if bs.get("n_boot"):
        fair["bootstrap"] = {k: v for k, v in bs.items() if k not in ("group_fmr_ci", "group_fnmr_ci")}
        fair["garbe_ci"], fair["fdr_ci"] = bs.get("garbe_ci"), bs.get("fdr_ci")
    overall = {**res["overall"],
               "fmr_ci": reported_ci(bs.get("overall_fmr_ci"), res["overall"].get("fmr_pairs_ci", none)),
               "fnmr_ci": reported_ci(bs.get("overall_fnmr_ci"), res["overall"].get("fnmr_pairs_ci", none))}
    img_groups = image_groups(ages, st.age_bins)
    bin_labels = AgeBins.parse(st.age_bins).labels
    instance = None
    it, ifpr, ithr, iconv = res["instance_tau"]
    if have_pairs and it == it:
        try:
            ii, ij, _ = ps.accepted_impostors(it)
            instance = instance_level(ps.subjects, img_groups, bin_labels, ps.gen_i, ps.gen_j, ps.gen_score, ii, ij,
                                      it, ifpr, st.instance_fpr, thr=ithr, converged=iconv)
        except RuntimeError:
            instance = None
    ident = None
    n = emb.shape[0]
    if identification_ranks(st, n):
        ident = identification_by_group(normalise(emb if identification_emb is None else identification_emb),
                                        ps.subjects, img_groups, bin_labels, flip_fused=flip_fused)
    elif st.identification == "auto":
        ident = rank1_from_pairs(n, ps.gen_i, ps.gen_j, ps.gen_score, ps.max_impostor, img_groups, bin_labels,
                                 flip_fused=False if identification_emb is not None else flip_fused)
        warnings.append(f"Identification: rank-1 accuracy only (more than {IDENTIFICATION_AUTO_MAX:,} images); "
                        "mean ranks need --identification on (one more pass over all pairs).")
    if ident is not None and ident.get("flip_fused") is False:
        warnings.append("Identification (FR-NAS): the embeddings were not fused with their mirror images, as "
                        "FR-NAS's are; rank-1 accuracies may differ from FR-NAS's protocol.")
    n_subj = int(np.unique(ps.subjects).size)
    unknown_age = int((ages_arr < 0).sum())
    if unknown_age:
        warnings.append(f"{unknown_age} images have no age; their pairs count only in the overall row.")
    cross_gen = int((gen_groups < 0).sum())
    return {
        "data": {"n_images": n, "n_subjects": n_subj, "n_genuine": int(ps.gen_score.size),
                 "n_impostor": ps.n_impostor_total, "images_per_group": {
                     lab: int((img_groups == g).sum()) for g, lab in enumerate(bin_labels)},
                 "genuine_cross_group": cross_gen, "unknown_age": unknown_age,
                 "engine": "streamed one-pass histogram" if ps.streamed else "all scores in memory",
                 "passes": ps.passes, "tile_counting": ps.counting or None},
        "pair_grouping": {"mode": st.pair_grouping, "description": describe_mode(st.pair_grouping),
                          "labels": gp.labels, "cell_labels": gp.cell_labels},
        "intervals": {"fmr_ci, fnmr_ci": (f"{st.confidence:.0%} percentile intervals over {st.bootstrap} "
                                          f"resamples of subjects (seed {st.seed}), widened to the Clopper-Pearson "
                                          f"interval where that is wider (e.g. no error observed)"
                                          if bs.get("n_boot") else "Clopper-Pearson over pairs (bootstrap off)"),
                      "fmr_pairs_ci, fnmr_pairs_ci": "95% Clopper-Pearson over pairs, which assumes independent "
                                                     "pairs (too narrow when subjects have many pairs)"},
        "overall": {**overall, "threshold": tau, "target_fmr": st.target_fmr if st.threshold is None else None,
                    "realised_fmr": res["realised_fmr"]},
        "groups": groups,
        "groups_small_gap": {"max_gap": st.small_gap,
                             "description": f"genuine pairs with both images in the age group and an age gap of at "
                                            f"most {st.small_gap} years, at the global threshold",
                             "groups": _genuine_table(ps, small_sets, tau, small_cis)},
        "fairness": fair,
        "fairness_vs_fmr": res["fairness_curve"],
        "impostor_table": res["impostor_cells"],
        "age_gap": _genuine_table(ps, gap_sets, tau, gap_cis),
        "genuine_vs_gap": _genuine_sample(ps, ages_arr, seed=st.seed),
        "histograms": _histograms(ps, gen_groups, gp.labels),
        "curves": {k: {kk: np.asarray(vv).tolist() for kk, vv in v.items()} for k, v in res["curves"].items()},
        "instance_level": instance,
        "identification": ident,
        "warnings": warnings,
    }
