"""[evaluate] identities = "held-out" is validated up front, and the report's "what changed" paragraph says only what
the intervals in results.json support."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from agebias.errors import SettingsError
from agebias.pipeline.report import what_changed
from agebias.pipeline.schema import load_experiment

EXPERIMENT = """
[experiment]
name = "t"
[generate]
method = "cardioid"
sources = "package-photos"
ages = [5, 30]
[finetune]
backbone = "sface"
epochs = 1
val_fraction = 0.4
[evaluate]
models = ["sface", "finetuned"]
identities = "held-out"
"""


def _load(tmp_path: Path, text: str):
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return load_experiment(path)


def test_held_out_needs_a_fine_tuning_split_of_the_evaluation_set(tmp_path):
    exp = _load(tmp_path, EXPERIMENT)
    assert exp.section("evaluate")["identities"] == "held-out" and exp.section("finetune")["backbone"] == "sface"
    assert _load(tmp_path, EXPERIMENT.replace('identities = "held-out"', "")).section("evaluate")["identities"] == "all"
    for edit in (("val_fraction = 0.4", "val_fraction = 0"), ("epochs = 1", "epochs = 1\nenabled = false"),
                 ('identities = "held-out"', 'identities = "held-out"\ndataset = "fgnet"\nroot = "."')):
        with pytest.raises(SettingsError, match="identities = 'held-out' needs"):
            _load(tmp_path, EXPERIMENT.replace(*edit))
    with pytest.raises(SettingsError, match="unknown value 'some'"):
        _load(tmp_path, EXPERIMENT.replace('"held-out"', '"some"'))


def _section(eer, fnmr, fnmr_ci, garbe, garbe_ci, d_prime):
    return {"data": {"n_subjects": 4, "n_images": 28, "n_genuine": 84, "n_impostor": 294},
            "overall": {"eer": eer, "fnmr": fnmr, "fnmr_ci": fnmr_ci, "target_fmr": 0.01, "d_prime": d_prime},
            "fairness": {"garbe": garbe, "garbe_ci": garbe_ci, "fdr": 0.9, "fdr_ci": [0.8, 1.0]}}


RESULTS = {"all-pairs": {
    "settings": {"confidence": 0.95, "target_fmr": 0.01}, "model_order": ["sface", "finetuned"],
    "models": {"sface": _section(0.05, 0.10, [0.05, 0.18], 0.20, [0.10, 0.30], 9.0),
               "finetuned": _section(0.02, 0.30, [0.21, 0.40], 0.25, [0.15, 0.35], 3.0)}}}
SUMMARIES = {"finetune": {"enabled": True, "epochs": 8, "trained_identities": ["a", "b", "c", "d", "e"]},
             "evaluate": {"models": {"sface": "sface", "finetuned": "run/backbone.pth"}}}


def test_what_changed_reads_the_intervals(tmp_path):
    exp = _load(tmp_path, EXPERIMENT)
    text = what_changed(exp, SUMMARIES, RESULTS)
    assert text.startswith("sface (the pretrained starting point) against finetuned (sface fine-tuned for 8 epochs "
                           "on 5 identities, frozen: 1,2,3), both on 4 identities that fine-tuning never saw")
    assert "FNMR at FMR 0.01 0.100 [0.050, 0.180] -> 0.300 [0.210, 0.400]" in text
    assert "EER 0.050 (no interval in results.json) -> 0.020 (no interval in results.json)" in text
    assert "d' (genuine/impostor separation, no interval) 9.00 -> 3.00" in text
    # disjoint FNMR intervals: a change; overlapping GARBE intervals: no change shown; EER has no interval: no verdict
    assert "FNMR at FMR 0.01 moved beyond both intervals (up)" in text
    assert "the GARBE intervals overlap, so this run does not show a change in GARBE" in text
    assert "EER moved" not in text and "EER intervals" not in text
    assert "FDR 0.900 [0.800, 1.000] -> 0.900 [0.800, 1.000]" in text and "a change in FDR" in text
    assert text.endswith("they are no evidence of what fine-tuning does to age bias.")
    # both perfect: says so; undefined GARBE is not compared
    perfect = copy.deepcopy(RESULTS)
    for name in ("sface", "finetuned"):
        perfect["all-pairs"]["models"][name] = _section(0.0, 0.0, [0.0, 0.043], None, [None, None], 5.0)
    text = what_changed(exp, SUMMARIES, perfect)
    assert "Both models separate every genuine pair from every impostor pair here (EER 0)" in text
    assert "GARBE undefined -> undefined" in text and "see the evaluation's warnings" in text
    # no fine-tuned model, or no model that fine-tuning started from: no paragraph
    assert what_changed(exp, SUMMARIES, {}) is None
    other = {"evaluate": {"models": {"sface": "other.onnx", "finetuned": "x"}}, "finetune": SUMMARIES["finetune"]}
    assert what_changed(exp, other, RESULTS) is None
