"""The ``eg3d`` adapter against the real EG3D-Age code (github johndoe133/eg3d-age, checkout named by
``AGEBIAS_EG3D_AGE_REPO``): its ``TriPlaneGenerator`` built with random weights at the smallest working size
(z 64, w 512 as its superresolution requires, channel_max 32, 128 px, neural rendering 16, 4+4 depth samples),
pickled as its training loop snapshots it, then ``agebias generate --method eg3d`` end to end on CPU.
Skipped, with the reason, without the checkout."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from agebias.cli import main
from helpers_upstream import (checkout_on_path, checkout_or_skip, file_sha256, png, restored_imports,
                              training_snapshot, write_pickle)

pytestmark = [pytest.mark.upstream, pytest.mark.slow]

RES = 128
CALIBRATION = (0.9, 2.0)  # (a, b): age fed = (age - 2) / 0.9


@pytest.fixture
def repo():
    root = checkout_or_skip("AGEBIAS_EG3D_AGE_REPO", "eg3d", "github.com/johndoe133/eg3d-age")
    with restored_imports():
        yield root


def _rendering_kwargs(**over):
    """train.py's rendering options for ``--cfg ffhq --gen_pose_cond True`` (c_scale 1), with 4 + 4 depth
    samples per ray instead of 48 + 48."""
    rk = {"image_resolution": RES, "disparity_space_sampling": False, "clamp_mode": "softplus",
          "superresolution_module": "training.superresolution.SuperresolutionHybrid2X",
          "c_gen_conditioning_zero": False, "gpc_reg_prob": 0.5, "c_scale": 1.0, "superresolution_noise_mode": "none",
          "density_reg": 0.25, "density_reg_p_dist": 0.004, "reg_type": "l1", "decoder_lr_mul": 1.0,
          "sr_antialias": True, "depth_resolution": 4, "depth_resolution_importance": 4, "ray_start": 2.25,
          "ray_end": 3.3, "box_warp": 1, "avg_camera_radius": 2.7, "avg_camera_pivot": [0, 0, 0.2]}
    rk.update(over)
    return rk


def _build_run(repo, run_dir, age_dim, options, **rendering):
    """A training-run folder: ``network-snapshot-000000.pkl`` (G, D, G_ema) + ``training_options.json``."""
    import torch

    with checkout_on_path(repo / "eg3d"):
        from training.dual_discriminator import DualDiscriminator
        from training.triplane import TriPlaneGenerator

        torch.manual_seed(0)
        c_dim = 25 + age_dim
        G = TriPlaneGenerator(z_dim=64, c_dim=c_dim, w_dim=512, img_resolution=RES, img_channels=3,
                              sr_num_fp16_res=0, mapping_kwargs={"num_layers": 2},
                              rendering_kwargs=_rendering_kwargs(**rendering),
                              sr_kwargs={"channel_base": 1024, "channel_max": 32,
                                         "fused_modconv_default": "inference_only"},
                              channel_base=1024, channel_max=32, fused_modconv_default="inference_only",
                              num_fp16_res=0)
        G.neural_rendering_resolution = 16
        D = DualDiscriminator(c_dim=c_dim, img_resolution=RES, img_channels=3, channel_base=1024, channel_max=16,
                              num_fp16_res=0, conv_clamp=None)
        pkl = write_pickle(run_dir / "network-snapshot-000000.pkl",
                           training_snapshot(G, D, {"resolution": RES, "use_labels": True}))
    (run_dir / "training_options.json").write_text(json.dumps({
        "G_kwargs": {"class_name": "training.triplane.TriPlaneGenerator", "rendering_kwargs": G.rendering_kwargs},
        **options}))
    return pkl


def _generate(repo, pkl, out, ages="10,60", *extra):
    return main(["-q", "generate", "--method", "eg3d", "--identities", "2", "--ages", ages, "--checkpoint", str(pkl),
                 "--repo", str(repo), "--trust-checkpoint", "--device", "cpu", "--out", str(out), *extra])


def _manifest(out):
    return list(csv.DictReader((out / "manifest.csv").read_text().splitlines()))


def _check_layout(out, ages, side=RES):
    rows = _manifest(out)
    assert [(r["id"], int(r["age"])) for r in rows] == [(i, a) for i in ("seed0000", "seed0001") for a in ages]
    for r in rows:
        path = out / r["path"]
        assert r["path"] == f"{r['id']}/{r['id']}_{r['age']}.png" and r["method"] == "eg3d"
        assert r["seed"] == str(int(r["id"][4:])) and r["checksum"] == file_sha256(path)
        assert png(path).shape == (side, side, 3)
    return rows


def test_scalar_age_model_with_calibration_end_to_end(repo, tmp_path):
    """c_dim 26 (age_loss_fn MSE, ages 0-75) with calibrate-0.75.npy beside the pickle, the authors' settings."""
    run = tmp_path / "run"
    pkl = _build_run(repo, run, 1, {"age_loss_fn": "MSE", "age_min": 0, "age_max": 75})
    np.save(run / "calibrate-0.75.npy", list(CALIBRATION))
    out = tmp_path / "out"
    assert _generate(repo, pkl, out) == 0
    rows = _check_layout(out, [10, 60])
    p = json.loads(rows[0]["parameters"])
    a, b = CALIBRATION
    assert p["truncation_psi"] == 0.75 and p["truncation_cutoff"] == 14 and p["calibrated"] is True
    assert p["calibration_ab"] == [a, b] and p["age_min"] == 0 and p["age_max"] == 75
    fed = {int(r["age"]): json.loads(r["parameters"]) for r in rows if r["id"] == "seed0000"}
    for age in (10, 60):
        assert fed[age]["age_fed"] == round((age - b) / a, 4)
        assert fed[age]["age_code"] == [round(2 * ((age - b) / a) / 75 - 1, 4)]
    run_info = json.loads((out / "generation.json").read_text())
    assert run_info["parameters"]["calibrated"] is True and run_info["warnings"] == []
    # the age reaches the network: other age, other pixels; the same seed and age give the same pixels again
    assert not np.array_equal(png(out / "seed0000" / "seed0000_10.png"), png(out / "seed0000" / "seed0000_60.png"))
    assert not np.array_equal(png(out / "seed0000" / "seed0000_10.png"), png(out / "seed0001" / "seed0001_10.png"))
    assert _generate(repo, pkl, tmp_path / "again", "60") == 0
    again = {r["id"]: r["checksum"] for r in _manifest(tmp_path / "again")}
    assert again == {r["id"]: r["checksum"] for r in rows if r["age"] == "60"}


def test_conditioning_matches_the_checkouts_camera_utils(repo, tmp_path):
    """The adapter's 25 camera numbers are those of the checkout's LookAtPoseSampler and FOV_to_intrinsics."""
    import torch

    from generators.registry import create_generator

    run = tmp_path / "run"
    pkl = _build_run(repo, run, 1, {"age_loss_fn": "MSE", "age_min": 0, "age_max": 75})
    gen = create_generator("eg3d", checkpoint=pkl, repo=repo, trust_checkpoint=True, device="cpu").load()
    c = gen.conditioning(30)
    from camera_utils import (  # the checkout is on sys.path after load()
        FOV_to_intrinsics,
        LookAtPoseSampler,
    )

    rk = gen.G.rendering_kwargs
    pose = LookAtPoseSampler.sample(math.pi / 2, math.pi / 2, torch.tensor(rk["avg_camera_pivot"]),
                                    radius=rk["avg_camera_radius"])
    assert np.allclose(c[:16], pose.reshape(16).numpy(), atol=1e-6)
    assert np.allclose(c[16:25], FOV_to_intrinsics(18.837).reshape(9).numpy(), atol=1e-6)
    assert c[25] == round(2 * 30 / 75 - 1, 4)
    gen.close()


def test_onehot_age_model_end_to_end(repo, tmp_path):
    """c_dim 126 (age_loss_fn CAT, the thesis run's setting), no calibration file: recorded as uncalibrated."""
    pkl = _build_run(repo, tmp_path / "run", 101, {"age_loss_fn": "CAT", "age_min": 0, "age_max": 75})
    out = tmp_path / "out"
    assert _generate(repo, pkl, out, "5,70") == 0
    rows = _check_layout(out, [5, 70])
    assert [json.loads(r["parameters"])["age_code"] for r in rows] == [5, 70, 5, 70]
    run_info = json.loads((out / "generation.json").read_text())
    assert run_info["parameters"]["calibrated"] is False
    assert any("calibrate-0.75.npy" in w for w in run_info["warnings"])
    assert not np.array_equal(png(out / "seed0001" / "seed0001_5.png"), png(out / "seed0001" / "seed0001_70.png"))
    assert _generate(repo, pkl, tmp_path / "old", "80") == 2  # trained on ages 0-75 only


def test_network_without_generator_conditioning_is_refused(repo, tmp_path, capsys):
    """With c_gen_conditioning_zero (train.py's default --gen_pose_cond False) the real mapping ignores the age."""
    import torch

    pkl = _build_run(repo, tmp_path / "run", 1, {"age_loss_fn": "MSE", "age_min": 0, "age_max": 75},
                     c_gen_conditioning_zero=True)
    with checkout_on_path(repo / "eg3d"):
        import legacy

        with open(pkl, "rb") as fh:
            G = legacy.load_network_pkl(fh)["G_ema"]
        z, c = torch.randn(1, 64), torch.zeros(2, 26)
        c[1, 25] = 1.0
        ws = G.mapping(z.repeat(2, 1), c)
        assert torch.equal(ws[0], ws[1])  # why such a network is refused
    capsys.readouterr()
    assert _generate(repo, pkl, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "c_gen_conditioning_zero" in err and not (tmp_path / "out").exists()  # refused before any output
