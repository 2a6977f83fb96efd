"""The evaluate stage prepares faces per protocol: the thesis's `msc` on squashed whole images, `all-pairs` as the
data says (here aligned crops used as given), side by side, as experiments/msc_*.toml run them."""

from __future__ import annotations

import json
import textwrap

import pytest

from agebias.cli import main


@pytest.mark.slow
def test_msc_and_all_pairs_side_by_side_with_their_own_face_preparation(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(textwrap.dedent("""
        [experiment]
        name = "protocols"
        out = "run"
        seed = 0
        [generate]
        method = "cardioid"
        sources = "package-photos"
        all_faces = true
        ages = [4, 12, 25, 60]
        [finetune]
        enabled = false
        [evaluate]
        dataset = "generated"
        models = ["sface"]
        protocols = ["all-pairs", "msc"]
        age_bins = "0-9,10-19,20-69"
        target_fmr = 0.01
        bootstrap = 20
        formats = ["png"]
    """), encoding="utf-8")
    assert main(["-q", "run", str(exp)]) == 0
    out = tmp_path / "run" / "evaluate"
    prep = {p: json.loads((out / p / "results.json").read_text())["dataset"]["preparation"] for p in
            ("all-pairs", "msc")}
    n = sum(prep["all-pairs"]["methods"].values())
    assert prep["all-pairs"]["methods"] == {"as given": n} and prep["msc"]["methods"] == {"squash": n}
    assert "squash" in prep["msc"]["detector_rule"]
    assert (out / "embeddings" / "sface.npz").is_file() and (out / "embeddings-squash" / "sface.npz").is_file()
    ident = json.loads((out / "all-pairs" / "results.json").read_text())["models"]["sface"]["identification"]
    assert ident["flip_fused"] is True  # FR-NAS's flip fusion, from a second, mirrored embedding
    summary = json.loads((out / "stage.json").read_text())["summary"]
    assert "all-pairs:" in summary["preparation"] and "msc: Faces:" in summary["preparation"]
