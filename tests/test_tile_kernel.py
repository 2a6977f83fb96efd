"""The compiled tile kernel of the streamed all-pairs engine counts and keeps exactly what the numpy path does."""

import importlib.util

import numpy as np
import pytest

from agebias.evaluate import bins, pairs, tile_kernel
from agebias.evaluate.grouping import make_grouping
from agebias.evaluate.pairs import ExactNeeds, score_all_pairs

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed (pip install 'agebias[fast]')")


def _data(n_subj=45, per=9, d=12, seed=7):
    """Embeddings with many tied scores (coarse values), ages over three groups, subjects shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_subj, d))
    subj = np.repeat(np.arange(n_subj), per)
    emb = np.round(centres[subj] + 1.1 * rng.standard_normal((subj.size, d)), 1).astype(np.float32)
    ages = rng.integers(0, 80, subj.size).tolist()
    perm = rng.permutation(subj.size)
    return emb[perm], [f"s{x}" for x in subj[perm]], [ages[i] for i in perm]


def _score(monkeypatch, compiled: bool, block=29, **kw):
    monkeypatch.setattr(tile_kernel, "_state", {} if compiled else {"ready": False})
    emb, subj, ages = _data()
    gp = make_grouping(ages, "both", "0-12,13-39,40-79")
    needs = ExactNeeds(fmrs=(1e-3, 1e-2, 0.05), group_fmrs=(1e-2, 0.1), accept_fmrs=(1e-2,))
    return score_all_pairs(emb, subj, gp, block=block, keep_all_pairs=0, needs=needs, **kw)


def _assert_identical(a, b):
    assert a.streamed and b.streamed and a.passes == b.passes
    assert np.array_equal(a.hist, b.hist) and np.array_equal(a.exact, b.exact)
    for va, vb, ba, bb in zip(a.kept_values, b.kept_values, a.kept_bins, b.kept_bins, strict=True):
        assert np.array_equal(np.sort(va), np.sort(vb)) and np.array_equal(ba, bb)
    assert a.gen_score.tobytes() == b.gen_score.tobytes()
    assert np.array_equal(a.max_impostor, b.max_impostor)
    assert a.accepted_from_bin == b.accepted_from_bin
    pa = sorted(zip(a.acc_i.tolist(), a.acc_j.tolist(), a.acc_score.tolist(), strict=True))
    pb = sorted(zip(b.acc_i.tolist(), b.acc_j.tolist(), b.acc_score.tolist(), strict=True))
    assert pa == pb and len(pa) > 0


@needs_numba
def test_kernel_is_ready_where_numba_is_installed():
    assert tile_kernel.ready()


@needs_numba
def test_compiled_and_numpy_passes_keep_the_same(monkeypatch):
    """Diagonal tiles (lower triangle skipped by the kernel), tiles with several keys, tied scores, edge tiles."""
    used = []
    real = tile_kernel.count_and_keep
    monkeypatch.setattr(tile_kernel, "count_and_keep", lambda *a: used.append(a[-1]) or real(*a))
    compiled = _score(monkeypatch, True)
    assert used and any(used) and not all(used)  # diagonal and off-diagonal tiles went through the kernel
    n_calls = len(used)
    numpy_path = _score(monkeypatch, False)
    assert len(used) == n_calls  # the numpy pass did not use it
    _assert_identical(compiled, numpy_path)


@needs_numba
def test_more_candidates_than_the_buffer_holds(monkeypatch):
    """A tile with more scores over the first filter than the candidate buffer holds is selected with numpy."""
    found = []
    real = pairs._candidates
    monkeypatch.setattr(pairs, "_candidates", lambda s, rects, rule, f: found.append(f is not None) or real(s, rects,
                                                                                                       rule, f))
    full = _score(monkeypatch, True)
    assert all(found)
    found.clear()
    monkeypatch.setattr(pairs, "CANDIDATES", 2)
    tiny = _score(monkeypatch, True)
    assert not all(found)  # some tiles overflowed and were selected with numpy
    _assert_identical(full, tiny)


@needs_numba
def test_a_kernel_that_bins_differently_is_not_used(monkeypatch, caplog):
    """The check before first use compares the kernel's bins with bin_index on both sides of every boundary."""
    monkeypatch.setattr(tile_kernel, "_state", {})
    real = bins.bin_index
    monkeypatch.setattr(bins, "bin_index", lambda s: np.minimum(real(s) + 1, bins.NB - 1))
    assert tile_kernel.ready() is False
    assert "bins differently" in caplog.text


def test_a_kernel_that_cannot_be_built_leaves_the_numpy_path(monkeypatch, caplog):
    """E.g. numba finding no writable cache folder: a warning, then numpy counts."""
    def broken():
        raise RuntimeError("cannot cache function 'count_tile': no locator available")

    monkeypatch.setattr(tile_kernel, "_state", {})
    monkeypatch.setattr(tile_kernel, "_compiled", broken)
    assert tile_kernel.ready() is False
    assert "not usable here" in caplog.text and "no locator" in caplog.text


def test_without_numba_the_numpy_path_counts(monkeypatch):
    monkeypatch.setenv("AGEBIAS_NO_JIT", "1")
    tile_kernel._compiled.cache_clear()
    monkeypatch.setattr(tile_kernel, "_state", {})
    try:
        assert tile_kernel.ready() is False
        ps = _score(monkeypatch, False)
        assert ps.hist.sum() == ps.n_impostor_total > 0
    finally:
        tile_kernel._compiled.cache_clear()


def test_results_say_which_path_counted(monkeypatch):
    from agebias.evaluate.allpairs import evaluate_embeddings_allpairs
    from agebias.evaluate.settings import EvalSettings

    emb, subj, ages = _data()
    st = EvalSettings(keep_all_pairs=0, bootstrap=0, block=64)
    monkeypatch.setattr(tile_kernel, "_state", {"ready": False})
    assert evaluate_embeddings_allpairs(emb, subj, ages, st)["data"]["tile_counting"] == "numpy"
    kept_all = evaluate_embeddings_allpairs(emb, subj, ages, EvalSettings(bootstrap=0))
    assert kept_all["data"]["engine"] == "all scores in memory" and kept_all["data"]["tile_counting"] is None
    if HAVE_NUMBA:
        monkeypatch.setattr(tile_kernel, "_state", {})
        assert evaluate_embeddings_allpairs(emb, subj, ages, st)["data"]["tile_counting"].startswith("compiled")


@needs_numba
@pytest.mark.parametrize("upper", [False, True])
def test_kernel_counts_and_keeps_the_bins_its_table_marks(upper):
    """Against numpy on one tile: several rectangles and keys, the diagonal; a buffer that fills up part way still
    gives complete counts."""
    assert tile_kernel.ready()
    rng = np.random.default_rng(3)
    s = np.round(rng.uniform(-0.3, 0.9, (40, 50)), 2).astype(np.float32)  # ties
    rects = np.array([[0, 17, 0, 50, 0], [17, 40, 0, 23, 1], [17, 40, 23, 50, 0]], np.int64)
    keep = np.zeros((2, bins.NB), np.uint8)
    b = bins.bin_index(s)
    keep[0, np.unique(b)[::3]] = 1  # every third occupied bin
    keep[1, bins.bin_index(np.float32([0.8]))[0]:] = 1  # a cut
    want_counts = np.zeros((2, bins.NB), np.int64)
    want_kept, want_ends = [], []
    for ra, rb, ca, cb, sl in rects:
        rows, cols = np.meshgrid(np.arange(ra, rb), np.arange(ca, cb), indexing="ij")
        inside = cols > rows if upper else np.ones_like(rows, bool)
        bb = b[rows[inside], cols[inside]]
        want_counts[sl] += np.bincount(bb, minlength=bins.NB)
        kept = keep[sl][bb] == 1
        want_kept += (rows[inside][kept] * s.shape[1] + cols[inside][kept]).tolist()  # row-major, as the kernel
        want_ends.append(len(want_kept))
    assert 0 < len(want_kept) < 0.5 * s.size

    counts = np.zeros((2, bins.NB), np.int32)
    cand, ends = np.empty(s.size, np.int64), np.empty(3, np.int64)
    n = tile_kernel.count_and_keep(s, rects, counts, keep, cand, ends, upper)
    assert n == len(want_kept) and cand[:n].tolist() == want_kept and ends.tolist() == want_ends
    assert np.array_equal(counts, want_counts)

    for size in (len(want_kept) // 2, len(want_kept)):  # filled part way, and exactly: both say "full"
        small = np.empty(size, np.int64)
        counts[:] = 0
        assert tile_kernel.count_and_keep(s, rects, counts, keep, small, ends, upper) >= small.size
        assert np.array_equal(counts, want_counts)
    counts[:] = 0
    assert tile_kernel.count_and_keep(s, rects, counts, keep, np.empty(len(want_kept) + 1, np.int64), ends,
                                      upper) == len(want_kept)


def test_a_rules_keep_table_agrees_with_the_rule_on_every_score():
    """The table the kernel reads (per bin) keeps exactly the scores ``select`` and ``v_acc`` keep (per value),
    on both sides of every threshold."""
    emb, subj, ages = _data()
    gp = make_grouping(ages, "both", "0-12,13-39,40-79")
    keep = pairs._Keep(gp, 50, np.full(len(gp.labels), 20), 30, None,
                       [[(30000, 30100), (36000, 36003)]] * gp.n_keys, np.zeros(gp.n_keys, bool), 1 << 30,
                       start=np.array([33000, 34000, 35000, 32500, 31000]))  # listing from below the cuts
    rule = keep.rule
    assert rule.v_acc < rule.v_cut.min()  # listing reaches scores no cut or window keeps
    edges = np.unique(np.concatenate([rule.v_cut, [rule.v_acc]] + [[x for w in rule.windows[k] for x in w]
                                                                  for k in range(gp.n_keys)])).astype(np.float32)
    edges = edges[np.isfinite(edges)]
    v = np.concatenate([edges, np.nextafter(edges, np.float32(-2)), np.nextafter(edges, np.float32(2)),
                        np.random.default_rng(0).uniform(-1, 1, 5000).astype(np.float32)])
    assert edges.size >= 4
    for k in range(gp.n_keys):
        by_value = rule.select(k, v) | (v >= rule.v_acc)
        assert np.array_equal(rule.keep_table(k)[bins.bin_index(v)] == 1, by_value), k
        assert 0 < by_value.sum() < v.size


def test_the_kernel_starts_loading_once_per_process(monkeypatch):
    started = []

    class FakeThread:
        def __init__(self, target, name, daemon):
            started.append(name)

        def start(self):
            pass

    monkeypatch.setattr(tile_kernel, "_state", {})
    monkeypatch.setattr(tile_kernel.threading, "Thread", FakeThread)
    tile_kernel.warm_up()
    tile_kernel.warm_up()
    assert started == ["agebias-tile-kernel"]
    monkeypatch.setattr(tile_kernel, "_state", {"ready": True})
    tile_kernel.warm_up()
    assert started == ["agebias-tile-kernel"]


@pytest.mark.parametrize("compiled", [True, False] if HAVE_NUMBA else [False])
def test_a_threshold_below_every_score_lists_every_impostor_pair_and_nothing_else(monkeypatch, compiled):
    """tau <= -1: every impostor pair is accepted; the masked entries (genuine pairs, the diagonal tiles' lower
    half) are never listed."""
    monkeypatch.setattr(tile_kernel, "_state", {} if compiled else {"ready": False})
    emb, subj, ages = _data()
    gp = make_grouping(ages, "both", "0-12,13-39,40-79")
    ps = score_all_pairs(emb, subj, gp, block=29, keep_all_pairs=0, needs=ExactNeeds(thresholds=(-2.0,)))
    s = np.asarray(subj)
    assert ps.streamed and ps.acc_i.size == ps.n_impostor_total
    assert not (s[ps.acc_i] == s[ps.acc_j]).any()
    lo, hi = np.minimum(ps.acc_i, ps.acc_j).tolist(), np.maximum(ps.acc_i, ps.acc_j).tolist()
    pairs_listed = set(zip(lo, hi, strict=True))
    assert len(pairs_listed) == ps.acc_i.size
    i, j, _ = ps.accepted_impostors(-2.0)
    assert i.size == ps.n_impostor_total
