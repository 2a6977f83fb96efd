"""`agebias finetune` on the command line: a tiny random-init run, and one clear line per bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from agebias.cli import main
from test_finetune_trainer import TINY, make_generated_set


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    monkeypatch.setenv("AGEBIAS_CACHE", str(tmp_path / "cache"))  # aligned-crop cache inside the test


def run(args, capsys):
    rc = main(["finetune", *args])
    return rc, capsys.readouterr().err


def base_args(data, out):
    return ["--data", str(data), "--backbone", TINY, "--init", "random", "--out", str(out), "--aligned",
            "--epochs", "1", "--batch-size", "8", "--frozen-layers", "none"]


def test_cli_random_init_run(tmp_path, capsys):
    data = make_generated_set(tmp_path / "synth", n_ids=6, per_id=3)
    rc, err = run(base_args(data, tmp_path / "run") + ["--head", "combined", "--margin", "1.0,0.4,0.1",
                                                        "--optimizer", "adamw", "--lr", "0.001"], capsys)
    assert rc == 0, err
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["config"]["head"] == "combined" and cfg["model"]["head_kwargs"]["m3"] == 0.1
    assert (tmp_path / "run" / "backbone.pth").is_file()


def test_cli_bad_inputs_one_line_each(tmp_path, capsys):
    data = make_generated_set(tmp_path / "synth", n_ids=6, per_id=3)
    (tmp_path / "empty").mkdir()
    one = make_generated_set(tmp_path / "one", n_ids=1, per_id=4)
    singles = make_generated_set(tmp_path / "singles", n_ids=5, per_id=1)
    cases = [
        (tmp_path / "empty", "no training images"),
        (one, "at least 2 identities"),
        (singles, "at least 2 identities with >= 2 images"),
        (tmp_path / "missing", "not found"),
    ]
    for source, message in cases:
        rc, err = run(base_args(source, tmp_path / "out"), capsys)
        assert rc == 2 and message in err, (source, err)
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()
    rc, err = run(["--data", str(data), "--backbone", "iresnet50", "--out", str(tmp_path / "o2"), "--aligned"], capsys)
    assert rc == 2 and "--init random" in err
    rc, err = run(base_args(data, tmp_path / "o3") + ["--head", "softmax"], capsys)
    assert rc == 2 and "--head" in err


def test_cli_other_arch_and_wrong_size_images(tmp_path, capsys):
    from agebias.models.checkpoints import save_backbone
    from agebias.models.registry import create_backbone

    data = make_generated_set(tmp_path / "synth", n_ids=6, per_id=3)
    weights = save_backbone(create_backbone(TINY), tmp_path / "tiny.pth")
    rc, err = run(["--data", str(data), "--backbone", str(weights), "--arch", "iresnet50", "--out",
                   str(tmp_path / "o"), "--aligned", "--epochs", "1"], capsys)
    assert rc == 2 and "iresnet50" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    # one 100x100 image among 112x112 aligned crops: skipped with its reason, the run goes on (exit 1)
    bad = data / "id000" / "id000_77.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(bad)
    rc, err = run(base_args(data, tmp_path / "run"), capsys)
    assert rc == 1, err
    skipped = (tmp_path / "run" / "skipped.csv").read_text()
    assert "id000_77.png" in skipped
