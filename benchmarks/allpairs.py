"""Benchmark: `agebias evaluate dataset --embeddings` on N = 30,000 embeddings (450 M pairs), end to end, against two
float32 matrix-product baselines measured in the same run.

- blocked GEMM: E times E^T in 4096-row blocks, results discarded (every ordered pair scored once, little memory);
- full-output matmul: one E @ E^T into an N x N array (3.6 GB at N = 30,000).

The evaluation runs as a subprocess, the ``agebias`` program itself (start-up, reading the manifest and the .npz,
the one streamed pass over the pairs, every metric, the bootstrap, results.json, groups.csv, the reports and the
exit), which reports its own peak RSS (VmHWM). The measured evaluation is ``--no-plots`` (targets: <= 1.5 x the
blocked GEMM, peak RSS < 2 GiB). On a shared machine the same work varies by 20% or more from minute to minute (the
GEMM alone took 4.0-6.6 s at N = 30,000 on this project's 2-core machine within an hour), so each evaluation runs
between two runs of the blocked GEMM and is compared with their mean, in three rounds, and the ratio is the median
of the rounds' ratios. Each round also runs the evaluation with the compiled tile kernel switched off
(``AGEBIAS_NO_JIT=1``: numpy counts the tiles, as without numba installed), also between two GEMMs; the full-output
matmul and the evaluation with the six figures (matplotlib's drawing time) are shown for information. Data: random
unit embeddings, about 10 images per subject, ages 0-69. Run it on a quiet machine (the load average is printed).
Usage: ``python benchmarks/allpairs.py [N] [D]``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BLOCK = 4096


def blocked_gemm_seconds(emb: np.ndarray) -> float:
    t = time.perf_counter()
    for r0 in range(0, emb.shape[0], BLOCK):
        np.matmul(emb[r0:r0 + BLOCK], emb.T)
    return time.perf_counter() - t


def full_matmul_seconds(emb: np.ndarray) -> float:
    out = np.empty((emb.shape[0], emb.shape[0]), dtype=np.float32)
    t = time.perf_counter()
    np.matmul(emb, emb.T, out=out)
    dt = time.perf_counter() - t
    del out
    return dt


def write_inputs(root: Path, n: int, d: int, per_subject: int) -> None:
    rng = np.random.default_rng(0)
    n_subj = n // per_subject
    subj = np.repeat(np.arange(n_subj), per_subject)[:n]
    centres = rng.standard_normal((n_subj, d)).astype(np.float32)
    emb = centres[subj] + 2.0 * rng.standard_normal((n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ages = rng.integers(0, 70, n)
    (root / "img").mkdir()
    paths = []
    for i in range(n):
        p = root / "img" / f"{i:06d}.png"
        p.touch()
        paths.append(str(p))
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "subject", "age"])
        for i in range(n):
            w.writerow([f"img/{i:06d}.png", f"id{subj[i]:05d}", int(ages[i])])
    np.savez(root / "emb.npz", paths=np.asarray(paths), embeddings=emb)


def run_evaluation(root: Path, plots: bool, env: dict[str, str] | None = None) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS GiB, return code, stderr) of the CLI run (``env``: added to the environment)."""
    # the `agebias` program itself (python -m agebias), which reports its peak RSS as it exits
    wrapper = ("import atexit, runpy, sys; sys.argv[0] = 'agebias'; "
               "atexit.register(lambda: print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0], "
               "file=sys.stderr)); runpy.run_module('agebias', run_name='__main__')")
    cmd = [sys.executable, "-c", wrapper, "--quiet", "evaluate", "dataset", str(root / "manifest.csv"),
           "--embeddings", str(root / "emb.npz"), "--out", str(root / "out")] + ([] if plots else ["--no-plots"])
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t
    hwm = [line for line in proc.stderr.splitlines() if line.startswith("VmHWM")]
    rss_gib = int(hwm[-1].split()[1]) / 2 ** 20 if hwm else float("nan")  # kB
    return wall, rss_gib, proc.returncode, proc.stderr


ROUNDS = 3


def main(n: int = 30_000, d: int = 512, per_subject: int = 10) -> int:
    print(f"load average before: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} cores; quiet means < 1.5)")
    with tempfile.TemporaryDirectory(prefix="agebias-bench-") as tmp:
        root = Path(tmp)
        write_inputs(root, n, d, per_subject)
        emb = np.load(root / "emb.npz")["embeddings"]
        full = full_matmul_seconds(emb)
        # (GEMM s, evaluation s, GEMM s, numpy-counting evaluation s, GEMM s) per round; a round's last GEMM is the
        # next round's first: G E G E' G E G E' G ...
        rounds = []
        gemm = blocked_gemm_seconds(emb)
        rss_gib, failures = 0.0, []
        for _ in range(ROUNDS):
            wall, rss, rc, err = run_evaluation(root, plots=False)
            gemm_mid = blocked_gemm_seconds(emb)
            wall_numpy, _, rc_numpy, err_numpy = run_evaluation(root, plots=False, env={"AGEBIAS_NO_JIT": "1"})
            rounds.append((gemm, wall, gemm_mid, wall_numpy, blocked_gemm_seconds(emb)))
            gemm = rounds[-1][-1]
            rss_gib = max(rss_gib, rss)
            failures += [e for c, e in ((rc, err), (rc_numpy, err_numpy)) if c not in (0, 1)]
        wall_plots, _, rc_plots, err_plots = run_evaluation(root, plots=True)
        if rc_plots not in (0, 1):
            failures.append(err_plots)
        if failures or not (root / "out" / "results.json").is_file():
            print(f"the evaluation failed:\n{(failures or [''])[0][-3000:]}")
            return 1
        report = json.loads((root / "out" / "results.json").read_text())
    res = report["models"][report["model_order"][0]]
    ratios = [w / ((g0 + g1) / 2) for g0, w, g1, _, _ in rounds]
    ratios_numpy = [w / ((g1 + g2) / 2) for _, _, g1, w, g2 in rounds]
    ratio = float(np.median(ratios))
    print(f"N={n} D={d}: {n * (n - 1) // 2:,} pairs; engine: {res['data']['engine']}, {res['data']['passes']} "
          f"pass(es); tiles counted by: {res['data'].get('tile_counting')}")
    print(f"{ROUNDS} rounds, each: `agebias evaluate dataset --embeddings --no-plots` end to end, then the same with "
          f"AGEBIAS_NO_JIT=1, each between two runs of the blocked GEMM ({BLOCK}-row blocks of E times E^T, results "
          "discarded) whose mean is its baseline")
    print("round  gemm_s  evaluate_s  gemm_s  numpy_counting_s  gemm_s  ratio  numpy_ratio")
    for k, ((g0, w, g1, wn, g2), r, rn) in enumerate(zip(rounds, ratios, ratios_numpy, strict=True), 1):
        print(f"{k:5d}  {g0:6.2f}  {w:10.2f}  {g1:6.2f}  {wn:16.2f}  {g2:6.2f}  {r:5.2f}  {rn:11.2f}")
    print(f"ratio to the blocked GEMM (median of the rounds): {ratio:.2f} (target <= 1.5); numpy counting: "
          f"{np.median(ratios_numpy):.2f}")
    print(f"full-output matmul (E @ E^T into {n}x{n}): {full:.2f} s; the median evaluation is "
          f"{np.median([r[1] for r in rounds]) / full:.2f} x that")
    print(f"the same with the six figures: {wall_plots:.2f} s")
    print(f"peak RSS of the evaluation: {rss_gib:.2f} GiB (target < 2 GiB)")
    o = res["overall"]
    print(f"EER {o['eer']:.4f}, tau@1e-3 {o['threshold']:.5f}, FNMR {o['fnmr']:.4f}, GARBE "
          f"{res['fairness']['garbe']:.4f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0 if ratio <= 1.5 and rss_gib < 2 else 1


if __name__ == "__main__":
    if any(not a.isdigit() for a in sys.argv[1:3]):
        print(__doc__)
        sys.exit(0 if sys.argv[1] in ("-h", "--help") else 2)
    sys.exit(main(*(int(a) for a in sys.argv[1:3])))
