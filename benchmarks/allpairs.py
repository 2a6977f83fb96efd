"""Benchmark: `agebias evaluate dataset --embeddings` on N = 30,000 embeddings (450 M pairs), end to end.

Prints the wall time of the evaluation (a subprocess: reading the manifest and the .npz, both streamed passes,
every metric, bootstrap, plots and reports), the time of one float32 N x N x 512 matrix product measured in this
run (numpy, same machine, before and after), their ratio (target: <= 3) and the evaluation's peak RSS (target:
< 2 GiB). Usage: ``python benchmarks/allpairs.py [N] [D]``.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def matmul_seconds(emb: np.ndarray) -> float:
    out = np.empty((emb.shape[0], emb.shape[0]), dtype=np.float32)
    t = time.perf_counter()
    np.matmul(emb, emb.T, out=out)
    dt = time.perf_counter() - t
    del out
    return dt


def main(n: int = 30_000, d: int = 512, per_subject: int = 10) -> int:
    rng = np.random.default_rng(0)
    n_subj = n // per_subject
    subj = np.repeat(np.arange(n_subj), per_subject)[:n]
    centres = rng.standard_normal((n_subj, d)).astype(np.float32)
    emb = centres[subj] + 2.0 * rng.standard_normal((n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ages = rng.integers(0, 70, n)
    with tempfile.TemporaryDirectory(prefix="agebias-bench-") as tmp:
        root = Path(tmp)
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
        before = matmul_seconds(emb)
        # the CLI, run so that it reports its own peak RSS (VmHWM) on exit
        wrapper = ("import sys; from agebias.cli import main; rc = main(sys.argv[1:]); "
                   "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr); "
                   "sys.exit(rc)")
        cmd = [sys.executable, "-c", wrapper, "--quiet", "evaluate", "dataset", str(root / "manifest.csv"), "--embeddings",
               str(root / "emb.npz"), "--out", str(root / "out")]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        hwm = [l for l in proc.stderr.splitlines() if l.startswith("VmHWM")]
        rss_gib = int(hwm[-1].split()[1]) / 2 ** 20 if hwm else float("nan")  # kB
        after = matmul_seconds(emb)
        if proc.returncode not in (0, 1):
            print(proc.stderr[-3000:])
            return 1
        import json

        res = json.loads((root / "out" / "results.json").read_text())
    mm = min(before, after)  # the faster (warm) run: the conservative baseline
    print(f"N={n} D={d}: {n * (n - 1) // 2:,} pairs; engine: {res['data']['engine']}, {res['data']['passes']} passes")
    print(f"one float32 {n}x{n}x{d} matmul: {before:.2f} s before, {after:.2f} s after (baseline: the faster, {mm:.2f} s)")
    print(f"agebias evaluate dataset --embeddings: {wall:.2f} s end to end")
    print(f"ratio evaluate / matmul: {wall / mm:.2f} (target <= 3)")
    print(f"peak RSS of the evaluation: {rss_gib:.2f} GiB (target < 2 GiB)")
    o = res["overall"]
    print(f"EER {o['eer']:.4f}, tau@1e-3 {o['threshold']:.5f}, FNMR {o['fnmr']:.4f}, GARBE "
          f"{res['fairness']['garbe']:.4f}")
    return 0 if wall / mm <= 3 and rss_gib < 2 else 1


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    sys.exit(main(*args))
