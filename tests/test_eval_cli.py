"""End-to-end `agebias evaluate` runs on tiny synthetic data (embeddings given, no model needed)."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from agebias.cli import main


def _dataset(tmp: Path, n_subj=12, per=6, d=24, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    (tmp / "img").mkdir(parents=True, exist_ok=True)
    rows, paths, emb = [], [], []
    for s in range(n_subj):
        c = rng.standard_normal(d)
        for k in range(per):
            p = tmp / "img" / f"s{s:02d}_{k}.png"
            p.write_bytes(b"not read")
            age = int(rng.integers(0, 70))
            rows.append([f"img/{p.name}", f"s{s:02d}", age])
            paths.append(str(p))
            emb.append(c + (1.0 + shift) * rng.standard_normal(d))
    with open(tmp / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "subject", "age"])
        w.writerows(rows)
    np.savez(tmp / "emb.npz", paths=np.asarray(paths), embeddings=np.asarray(emb, np.float32))
    return tmp / "manifest.csv", tmp / "emb.npz"


def test_evaluate_dataset_embeddings_every_output(tmp_path, monkeypatch):
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    manifest, npz = _dataset(tmp_path)
    rng = np.random.default_rng(9)
    z = np.load(npz)
    np.savez(tmp_path / "emb2.npz", paths=z["paths"], embeddings=z["embeddings"] + rng.standard_normal(z["embeddings"].shape).astype(np.float32))
    out = tmp_path / "out"
    rc = main(["evaluate", "dataset", str(manifest), "--embeddings", str(npz), "--embeddings",
               str(tmp_path / "emb2.npz"), "--out", str(out), "--format", "svg", "--bootstrap", "50",
               "--target-fmr", "0.01"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == "agebias.evaluate/2" and res["model_order"] == ["emb", "emb2"]
    assert "overall" not in res  # schema 2: each model once, under models
    sec = res["models"]["emb"]
    o = sec["overall"]
    for k in ("threshold", "fmr", "fnmr", "eer", "eer_threshold", "auc", "d_prime"):
        assert k in o
    assert set(o["fnmr_at_fmr"]) >= {"0.01", "0.001", "0.0001"}
    assert o["fmr"] <= 0.01
    g = sec["groups"]["0-12"]
    for k in ("n_genuine", "n_impostor", "fmr", "fnmr", "fmr_ci", "fnmr_ci"):
        assert k in g
    for k in ("garbe", "fdr", "ir", "alpha"):
        assert k in sec["fairness"]
    assert res["models"]["emb2"]["overall"]["eer"] > res["models"]["emb"]["overall"]["eer"]
    for stem in ("score_distributions", "genuine_vs_age_gap", "det", "fairness_vs_fmr", "group_rates",
                 "impostor_heatmap"):
        assert (out / "plots" / f"{stem}.svg").stat().st_size > 1000
        assert not (out / "plots" / f"{stem}.png").exists()
    html = (out / "report.html").read_text()
    assert html.count("data:image/svg+xml;base64,") == 6 and "Warnings" in html
    md = (out / "report.md").read_text()
    assert "plots/det.svg" in md and "GARBE" in md
    rows = list(csv.DictReader(open(out / "groups.csv")))
    assert {r["model"] for r in rows} == {"emb", "emb2"} and sum(r["group"] == "overall" for r in rows) == 2


def test_evaluate_scores_csv(tmp_path, monkeypatch):
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    f = tmp_path / "s.csv"
    lines = ["score,genuine,group"]
    rng = np.random.default_rng(0)
    for grp, mu in (("young", 0.5), ("old", 0.7)):
        lines += [f"{x:.4f},1,{grp}" for x in rng.normal(mu, 0.1, 50)]
        lines += [f"{x:.4f},0,{grp}" for x in rng.normal(0.1, 0.1, 500)]
    lines.append("oops,1,young")
    f.write_text("\n".join(lines) + "\n")
    rc = main(["evaluate", "scores", str(f), "--json", str(tmp_path / "r.json"), "--target-fmr", "0.01"])
    assert rc == 1  # one bad row reported
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["skipped_rows"][0]["line"] == 1102
    assert r["overall"]["fmr"] <= 0.01 and r["groups"]["young"]["fnmr"] > r["groups"]["old"]["fnmr"]
    assert r["fairness"]["garbe"] > 0
    rc = main(["evaluate", "scores", str(f), "--json", str(tmp_path / "r2.json"), "--threshold", "0.3"])
    assert json.loads((tmp_path / "r2.json").read_text())["overall"]["threshold"] == 0.3


def test_user_errors_are_one_line(tmp_path, capsys):
    rc = main(["evaluate", "fgnet", "--root", str(tmp_path / "nope"), "--model", "sface", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "datasets/README.md" in err and err.count("\n") == 1
    f = tmp_path / "s.csv"
    f.write_text("a,b\n1,2\n")
    assert main(["evaluate", "scores", str(f), "--json", str(tmp_path / "x.json")]) == 2
    manifest, npz = _dataset(tmp_path)
    assert main(["evaluate", "dataset", str(manifest), "--embeddings", str(npz), "--out", str(tmp_path / "o"),
                 "--age-bins", "0-10,5-20"]) == 2


def test_msc_protocol(tmp_path, monkeypatch):
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    manifest, npz = _dataset(tmp_path, n_subj=10, per=10)
    out = tmp_path / "msc"
    assert main(["evaluate", "dataset", str(manifest), "--embeddings", str(npz), "--out", str(out),
                 "--protocol", "msc", "--format", "png,pdf"]) == 0
    res = json.loads((out / "results.json").read_text())
    res = res["models"][res["model_order"][0]]
    assert res["legacy"] is True and set(res["columns"]) == {"mated_young", "mated_middle", "mated_old",
                                                             "young_vs_old", "non_mated"}
    sw = res["garbe_sweep"]
    assert len(sw["threshold"]) == 40 and sw["threshold"][1] == 0.025 and sw["threshold"][-1] == pytest.approx(0.975)
    # legacy flaw kept: identities without a young pair count as false non-matches even at threshold 0
    assert sw["fnmr_young"][0] > 0 or all(v is not None for v in res["columns"]["mated_young"].values())
    assert (out / "plots" / "msc_garbe.png").exists() and "Legacy" in (out / "report.html").read_text()
    assert (out / "plots" / "msc_columns.pdf").read_bytes()[:4] == b"%PDF"


def test_bin_protocol_folds():
    from agebias.evaluate.verification_bin import kfold_in_order, ten_fold_accuracy

    folds = kfold_in_order(23, 10)
    assert [len(f) for f in folds] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2] and folds[0][0] == 0
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    dist = np.where(same, rng.normal(0.8, 0.2, 600), rng.normal(2.0, 0.2, 600))
    r = ten_fold_accuracy(dist, same)
    assert r["accuracy_mean"] > 0.99 and len(r["fold_accuracies"]) == 10
    assert all(1.0 < t < 1.8 for t in r["fold_thresholds"])
    assert math.isclose(r["accuracy_std"], np.std(r["fold_accuracies"]))


def test_scores_and_option_errors_are_one_line(tmp_path, capsys):
    """Used to end in tracebacks (--target-fmr -1, a binary file, --block 0) or pass silently (--alpha 7,
    --bootstrap -5)."""
    f = tmp_path / "s.csv"
    f.write_text("score,genuine\n0.9,1\n0.1,0\n0.2,0\n")
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xb8\xff\x00\x13" * 20)
    manifest, npz = _dataset(tmp_path)
    runs = [
        (["evaluate", "scores", str(f), "--json", str(tmp_path / "x.json"), "--target-fmr", "-1"], "--target-fmr"),
        (["evaluate", "scores", str(f), "--json", str(tmp_path / "x.json"), "--alpha", "7"], "--alpha"),
        (["evaluate", "scores", str(binary), "--json", str(tmp_path / "x.json")], "UTF-8 CSV"),
        (["evaluate", "dataset", str(manifest), "--embeddings", str(npz), "--out", str(tmp_path / "o"),
          "--block", "0"], "--block"),
        (["evaluate", "dataset", str(manifest), "--embeddings", str(npz), "--out", str(tmp_path / "o"),
          "--bootstrap", "-5"], "--bootstrap"),
        (["evaluate", "fgnet", "--root", str(tmp_path), "--model", "sface", "--out", str(tmp_path / "o"),
          "--batch-size", "0"], "--batch-size"),
    ]
    for args, word in runs:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and word in err and "Traceback" not in err, err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "o").exists()


def test_summary_line_names_target_and_realised_fmr(tmp_path, capsys, monkeypatch):
    """The summary printed 'FNMR@FMR 0 = ...' (the realised FMR formatted as the target)."""
    monkeypatch.delenv("AGEBIAS_QUIET", raising=False)
    manifest, npz = _dataset(tmp_path)
    assert main(["evaluate", "dataset", str(manifest), "--embeddings", str(npz), "--out", str(tmp_path / "o"),
                 "--no-plots", "--bootstrap", "0"]) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "EER" in ln)
    assert "(target FMR 0.001)" in line and "FNMR@FMR 0 " not in line


def test_embedding_cache_follows_image_content(tmp_path, monkeypatch):
    """Cached embeddings were keyed on paths + model only: new pixels at the same paths reused stale rows."""
    import torch
    from PIL import Image

    from agebias.data.records import DatasetScan, FaceRecord
    from agebias.evaluate.runner import embed_records
    from agebias.evaluate.settings import EmbedSettings
    from agebias.models.checkpoints import save_backbone
    from agebias.models.registry import create_backbone

    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    torch.manual_seed(0)
    ckpt = save_backbone(create_backbone("iresnet:1,1,1,1@8,8,16,16"), tmp_path / "tiny.pth")
    rng = np.random.default_rng(0)
    recs = []
    for i in range(2):
        p = tmp_path / f"f{i}.png"
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(p)
        recs.append(FaceRecord(path=p, subject=str(i), age=10))
    cache = tmp_path / "cache"
    scan = DatasetScan("faces", tmp_path, recs)
    first = embed_records(scan, [str(ckpt)], EmbedSettings(aligned=True), cache).by_model
    Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(recs[0].path)
    second = embed_records(scan, [str(ckpt)], EmbedSettings(aligned=True), cache).by_model
    name = next(iter(first))
    assert not np.allclose(first[name][0], second[name][0])
    np.testing.assert_allclose(first[name][1], second[name][1], rtol=1e-5, atol=1e-6)


def test_out_paths_of_the_wrong_kind_are_one_line(tmp_path, capsys):
    """--out naming a file / --json naming a folder ended in FileExistsError / IsADirectoryError tracebacks."""
    manifest, npz = _dataset(tmp_path)
    f = tmp_path / "s.csv"
    f.write_text("score,genuine\n0.9,1\n0.1,0\n")
    runs = [(["evaluate", "dataset", str(manifest), "--embeddings", str(npz), "--out", str(f)], "is a file"),
            (["evaluate", "scores", str(f), "--json", str(tmp_path)], "is a folder")]
    for args, words in runs:
        assert main(["-q", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err


def test_nan_or_zero_embedding_rows_are_skipped_not_fatal(tmp_path, monkeypatch):
    """A NaN or all-zero row in a user's .npz ended the whole evaluation in a ValueError traceback."""
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    manifest, npz = _dataset(tmp_path)
    z = np.load(npz)
    e = z["embeddings"].copy()
    e[0] = np.nan
    e[1] = 0.0
    bad = tmp_path / "bad.npz"
    np.savez(bad, paths=z["paths"], embeddings=e)
    out = tmp_path / "o"
    assert main(["evaluate", "dataset", str(manifest), "--embeddings", str(bad), "--out", str(out), "--no-plots",
                 "--bootstrap", "0"]) == 1
    res = json.loads((out / "results.json").read_text())
    reasons = sorted(s["reason"] for s in res["dataset"]["skipped"])
    assert len(reasons) == 2 and "all zeros" in reasons[0] and "not finite" in reasons[1]
    assert res["models"]["bad"]["data"]["n_images"] == len(z["paths"]) - 2


def test_embeddings_need_no_images_on_disk(tmp_path, monkeypatch):
    """With --embeddings the manifest's paths are keys only: the same numbers with the image files deleted."""
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    manifest, npz = _dataset(tmp_path)
    args = ["evaluate", "dataset", str(manifest), "--embeddings", str(npz), "--no-plots", "--bootstrap", "0"]
    assert main([*args, "--out", str(tmp_path / "with")]) == 0
    for image in (tmp_path / "img").iterdir():
        image.unlink()
    assert main([*args, "--out", str(tmp_path / "without")]) == 0
    with_images = json.loads((tmp_path / "with" / "results.json").read_text())
    without = json.loads((tmp_path / "without" / "results.json").read_text())
    assert without["dataset"]["skipped"] == [] and without["dataset"]["n_records"] == 72
    assert without["models"] == with_images["models"]


def test_python_api_gives_the_cli_numbers(tmp_path, monkeypatch):
    """agebias.evaluate on arrays == agebias evaluate dataset --embeddings on the same data."""
    import agebias

    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    manifest, npz = _dataset(tmp_path)
    assert main(["evaluate", "dataset", str(manifest), "--embeddings", str(npz), "--out", str(tmp_path / "o"),
                 "--no-plots", "--bootstrap", "100", "--target-fmr", "0.01"]) == 0
    cli = json.loads((tmp_path / "o" / "results.json").read_text())["models"]["emb"]
    rows = list(csv.DictReader(open(manifest)))
    emb = np.load(npz)["embeddings"]
    res = agebias.evaluate(emb, [r["subject"] for r in rows], [int(r["age"]) for r in rows], bootstrap=100,
                           target_fmr=0.01)
    res.save(tmp_path / "api", plots=False)  # results.json writes undefined values (NaN in memory) as null
    api = json.loads((tmp_path / "api" / "results.json").read_text())["models"]["model"]
    assert api["overall"] == cli["overall"] and api["groups"] == cli["groups"] and api["fairness"] == cli["fairness"]
    assert list(res.by_group.index) == list(cli["groups"]) and res.overall["eer"] == cli["overall"]["eer"]
