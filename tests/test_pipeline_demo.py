"""Newcomer tests: `agebias run` on a trimmed demo config, interrupted during fine-tuning and resumed; and the shipped
demo (SFace fine-tuned, evaluated on held-out identities)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from agebias.cli import main

pytestmark = pytest.mark.slow

TRIMMED_DEMO = """
[experiment]
name = "demo-trimmed"
seed = 0

[generate]
method = "cardioid"
sources = "package-photos"
all_faces = true
ages = [6, 12, 30, 60]

[finetune]
backbone = "iresnet:1,1,1,1@8,16,16,32"
init = "random"
aligned = true
frozen_layers = ""
scale = 32.0
margin = 0.3
lr = 0.05
epochs = 3
batch_size = 8
val_fraction = 0.25

[evaluate]
dataset = "generated"
models = ["sface", "finetuned"]
age_bins = "0-17,18-69"
target_fmr = 0.01
aligned = true
"""


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_demo_runs_resumes_and_reports(tmp_path, monkeypatch):
    exp = tmp_path / "demo.toml"
    exp.write_text(TRIMMED_DEMO)
    out = tmp_path / "run"

    # first attempt: Ctrl-C arrives after the first epoch's checkpoint
    import agebias.finetune.trainer as trainer

    real = trainer.run_finetune

    def interrupted(config):
        config.stop_after_epochs = 1
        real(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "run_finetune", interrupted)
    assert main(["-q", "run", str(exp), "--out", str(out)]) == 130
    state = json.loads((out / "generate" / "stage.json").read_text())
    assert state["status"] == "complete" and state["summary"]["identities"] >= 8
    assert json.loads((out / "finetune" / "stage.json").read_text())["status"] == "running"  # not complete
    run_dirs = list((out / "finetune").glob("run-*"))
    assert len(run_dirs) == 1 and (run_dirs[0] / "checkpoints" / "last.pt").is_file()

    # second attempt: generation is skipped, fine-tuning continues from epoch 2 and everything completes
    monkeypatch.setattr(trainer, "run_finetune", real)
    assert main(["-q", "run", str(exp), "--out", str(out)]) == 0
    fin = json.loads((out / "finetune" / "stage.json").read_text())["summary"]
    assert [h["epoch"] for h in fin["history"]] == [1, 2, 3]
    assert fin["run_dir"] == str(run_dirs[0])

    results = json.loads((out / "evaluate" / "all-pairs" / "results.json").read_text())
    assert results["model_order"] == ["sface", "finetuned"]
    for name in ("sface", "finetuned"):
        section = results["models"][name]
        assert set(section["groups"]) == {"0-17", "18-69"}
        for group in section["groups"].values():
            assert group["n_genuine"] > 0 and group["n_impostor"] > 0
            assert _finite(group["fmr"]) and _finite(group["fnmr"])
        assert _finite(section["overall"]["eer"])
        assert "garbe" in section["fairness"]
    # the pretrained SFace model separates these real identities far better than chance
    assert results["models"]["sface"]["overall"]["auc"] > 0.9

    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    first_screen = md[:1500]
    assert "RANDOM" in first_screen and "cardioid" in first_screen
    assert "| sface |" in md and "| finetuned |" in md
    assert html.count("data:image/png;base64,") >= 5

    # a third run has nothing to do
    assert main(["-q", "run", str(exp), "--out", str(out)]) == 0

    _check_renders_in_browser(out / "report.html", tmp_path / "shot.png")


def _check_renders_in_browser(report: Path, shot: Path) -> None:
    """Headless Chromium renders the self-contained report with its figures (when Chromium is installed)."""
    import shutil
    import subprocess

    import numpy as np
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        return  # the HTML checks above still ran; the screenshot needs a browser on the machine
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={shot.parent / 'chrome-profile'}", "--window-size=1200,4000",
                    f"--screenshot={shot}", report.resolve().as_uri()], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    # the lower part of the page holds the embedded figures: many distinct colours, not a blank page
    figures = pixels[2000:]
    assert figures.std() > 20
    assert len(np.unique(figures.reshape(-1, 3)[::97], axis=0)) > 200


def test_real_demo_fine_tunes_sface_and_evaluates_held_out_identities(tmp_path):
    """experiments/demo.toml as shipped: SFace and the fine-tuned SFace, evaluated only on identities that fine-tuning
    never trained on (its seeded held-out split); the report compares them with intervals."""
    demo = Path(__file__).resolve().parents[1] / "experiments" / "demo.toml"
    out = tmp_path / "demo"
    assert main(["-q", "run", str(demo), "--out", str(out)]) == 0
    fin = json.loads((out / "finetune" / "stage.json").read_text())["summary"]
    run_dir = Path(fin["run_dir"])
    trained = set(json.loads((run_dir / "classes.json").read_text()))
    record = json.loads((run_dir / "config.json").read_text())
    assert record["model"]["arch"] == "sface" and record["model"]["frozen_parts"] == ["stem", "layer1", "layer2",
                                                                                       "layer3"]
    held_out = set(record["data"]["val_identity_names"])
    assert len(trained) >= 4 and len(held_out) >= 3 and not trained & held_out

    results = json.loads((out / "evaluate" / "all-pairs" / "results.json").read_text())
    assert results["model_order"] == ["sface", "finetuned"]
    evaluated = json.loads((out / "evaluate" / "stage.json").read_text())["summary"]
    assert evaluated["identities"] == "held-out" and set(evaluated["held_out_identities"]) == held_out
    assert evaluated["models"]["finetuned"] == fin["final_backbone"]  # no epoch chosen on the evaluated identities
    for name in ("sface", "finetuned"):
        assert results["models"][name]["data"]["n_subjects"] == len(held_out)
    embedded = np.load(out / "evaluate" / "embeddings" / "sface.npz")
    subjects = {Path(p).parent.name for p in embedded["paths"]}
    assert subjects == held_out
    md = (out / "report.md").read_text()
    assert "RANDOM" not in md and "fine-tuning never saw" in md[:2500]
    assert "## What changed" in md and "sface (the pretrained starting point) against finetuned" in md
