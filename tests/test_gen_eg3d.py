"""Contract tests of the eg3d adapter against a stand-in EG3D-Age checkout (dnnlib/legacy/training modules on a
temp path) and a pickled stand-in ``G_ema`` with the upstream API: ``z_dim``, ``c_dim``, ``rendering_kwargs``,
``mapping(z, c, truncation_psi, truncation_cutoff)`` and ``synthesis(ws, c, **kw) -> {'image': [-1, 1]}``."""

from __future__ import annotations

import csv
import json
import math
import pickle
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from agebias.errors import UserError
from generators.checkout import purge_modules
from generators.registry import create_generator
from generators.sources import seed_identities
from generators.writer import generate_to

STANDIN = '''
import torch

class StandInG(torch.nn.Module):
    def __init__(self, z_dim=8, age_dim=1, res=32, **rendering):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.res = z_dim, 25 + age_dim, 6, 14, res
        self.rendering_kwargs = {"avg_camera_pivot": [0, 0, 0.2], "avg_camera_radius": 2.7,
                                 "c_gen_conditioning_zero": False, "c_scale": 1.0, **rendering}
        self.lin = torch.nn.Linear(z_dim + 25 + age_dim, self.w_dim)
        self.calls = []

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        self.calls.append(("mapping", z.detach().cpu().numpy().copy(), c.detach().cpu().numpy().copy(),
                           truncation_psi, truncation_cutoff))
        w = self.lin(torch.cat([z, c], 1))
        return w[:, None, :].repeat(1, self.num_ws, 1)

    def synthesis(self, ws, c, neural_rendering_resolution=None, update_emas=False, **kw):
        self.calls.append(("synthesis", c.detach().cpu().numpy().copy(), kw))
        b = ws.shape[0]
        age = c[:, 25:].argmax(1).float() if c.shape[1] > 26 else c[:, 25]
        base = torch.linspace(-1, 1, self.res)
        jitter = torch.rand(b, 1, 1, 1) * 0.2  # EG3D's renderer draws random depth samples
        img = torch.tanh(base[None, None, :, None] * 0.5 + age[:, None, None, None] * 2 + ws.mean() * 0.1 + jitter)
        return {"image": img.expand(b, 3, self.res, self.res).contiguous()}
'''

LEGACY = '''
import pickle
import dnnlib  # the real legacy imports dnnlib and torch_utils; the stand-in checks they resolve
import torch_utils
LOADED = []

def load_network_pkl(f, force_fp16=False):
    data = pickle.load(f)
    LOADED.append(True)
    return data
'''


def _checkout(root: Path) -> Path:
    code = root / "eg3d-age" / "eg3d"
    for pkg in ("dnnlib", "torch_utils", "training"):
        (code / pkg).mkdir(parents=True, exist_ok=True)
        (code / pkg / "__init__.py").write_text("")
    (code / "training" / "standin.py").write_text(textwrap.dedent(STANDIN))
    (code / "legacy.py").write_text(textwrap.dedent(LEGACY))
    return root / "eg3d-age"


def _pickle(repo: Path, out: Path, options: dict | None, **kw) -> Path:
    code = str(repo / "eg3d")
    purge_modules()
    sys.path.insert(0, code)
    try:
        import torch
        from training.standin import StandInG

        torch.manual_seed(0)
        G = StandInG(**kw)
        out.mkdir(parents=True, exist_ok=True)
        pkl = out / "network-snapshot.pkl"
        with open(pkl, "wb") as fh:
            pickle.dump({"G_ema": G}, fh)
    finally:
        sys.path.remove(code)
        purge_modules()
    if options is not None:
        (out / "training_options.json").write_text(json.dumps(options))
    return pkl


@pytest.fixture
def repo(tmp_path):
    r = _checkout(tmp_path)
    yield r
    purge_modules()


def _make(repo, pkl, **kw):
    return create_generator("eg3d", checkpoint=pkl, repo=repo, trust_checkpoint=True, device="cpu", **kw)


def _rows(out):
    return list(csv.DictReader(open(out / "manifest.csv")))


def _maps(gen):
    return [c for c in gen.G.calls if c[0] == "mapping"]


def test_scalar_age_conditioning_camera_truncation_and_layout(repo, tmp_path):
    pkl = _pickle(repo, tmp_path / "run", {"age_min": 0, "age_max": 75, "age_loss_fn": "MSE"})
    gen = _make(repo, pkl, batch_size=2)
    assert gen.truncation_psi == 0.75 and gen.truncation_cutoff == 14  # the authors' defaults
    out = tmp_path / "out"
    res = generate_to(out, gen, seed_identities(2), [7, 30])
    assert res.written == 4
    note = ("no calibrate-0.75.npy beside network-snapshot.pkl: target ages are fed uncalibrated (the authors "
            "calibrate with eg3d/calibrate_network.py)")
    assert res.warnings == [note]
    maps = _maps(gen)
    syn = [c for c in gen.G.calls if c[0] == "synthesis"]
    assert len(maps) == 2 and len(syn) == 2  # batches of two
    z0 = maps[0][1][0]
    assert np.allclose(z0, np.random.RandomState(0).randn(1, 8)[0].astype(np.float32), atol=1e-6)
    c = np.concatenate([m[2] for m in maps])  # rows: (seed0, 7), (seed0, 30), (seed1, 7), (seed1, 30)
    assert c.shape == (4, 26)
    frontal = np.array([1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1], np.float32)
    assert np.allclose(c[:, :16], frontal, atol=1e-5)
    f = 1 / (math.tan(18.837 * 3.14159 / 360) * 1.414)
    assert abs(f - 4.2647) < 2e-3  # the FFHQ label focal; FOV_to_intrinsics(18.837) gives 4.2634
    assert np.allclose(c[:, 16:25], [f, 0, 0.5, 0, f, 0.5, 0, 0, 1], atol=1e-5)
    assert np.allclose(c[:, 25], [2 * 7 / 75 - 1, 2 * 30 / 75 - 1] * 2, atol=1e-4)
    assert all(m[3] == 0.75 and m[4] == 14 for m in maps)
    assert all(np.allclose(s[1], m[2]) for s, m in zip(syn, maps, strict=True))  # same (frontal) c for synthesis
    assert syn[0][2] == {"noise_mode": "const"}
    rows = _rows(out)
    assert [(r["id"], r["age"]) for r in rows] == [("seed0000", "7"), ("seed0000", "30"), ("seed0001", "7"),
                                                   ("seed0001", "30")]
    assert (out / "seed0000" / "seed0000_7.png").is_file()
    assert rows[0]["method"] == "eg3d" and rows[0]["seed"] == "0" and rows[2]["seed"] == "1"
    params = json.loads(rows[0]["parameters"])
    assert params["truncation_psi"] == 0.75 and params["truncation_cutoff"] == 14 and params["age_max"] == 75
    assert params["calibrated"] is False and params["calibration"] is None and params["age_fed"] == 7
    from PIL import Image

    a7 = np.asarray(Image.open(out / "seed0000" / "seed0000_7.png"), np.float32)
    a30 = np.asarray(Image.open(out / "seed0000" / "seed0000_30.png"), np.float32)
    assert a7.shape == (32, 32, 3) and np.abs(a7 - a30).mean() > 1


def test_categorical_and_101_onehot(repo, tmp_path):
    pkl = _pickle(repo, tmp_path / "cat", {"age_min": 0, "age_max": 80, "categories": [0, 5, 10, 20, 40, 80]},
                  age_dim=5)
    gen = _make(repo, pkl, truncation_psi=1.0, truncation_cutoff=14)
    generate_to(tmp_path / "o1", gen, seed_identities(1), [3, 7, 25, 80])
    c = np.concatenate([m[2] for m in _maps(gen)])
    assert np.array_equal(c[:, 25:].argmax(1), [0, 1, 3, 4]) and np.allclose(c[:, 25:].sum(1), 1)
    assert all(m[3] == 1.0 and m[4] == 14 for m in _maps(gen))
    with pytest.raises(UserError, match="outside this model's range 0-80"):
        generate_to(tmp_path / "o1b", gen, seed_identities(1), [81])

    pkl = _pickle(repo, tmp_path / "oh", {"age_min": 0, "age_max": 100, "age_loss_fn": "CAT"}, age_dim=101)
    gen = _make(repo, pkl)
    generate_to(tmp_path / "o2", gen, seed_identities(1), [0, 33, 100])
    c = np.concatenate([m[2] for m in _maps(gen)])
    assert c.shape[1] == 126 and np.array_equal(c[:, 25:].argmax(1), [0, 33, 100])
    pkl = _pickle(repo, tmp_path / "oh75", {"age_min": 0, "age_max": 75, "age_loss_fn": "CAT"}, age_dim=101)
    with pytest.raises(UserError, match="outside this model's range 0-75"):  # trained on ages 0-75 only
        _make(repo, pkl).load().check_ages([80])


def test_calibration_feeds_age_minus_b_over_a(repo, tmp_path):
    """calibrate-{psi}.npy = (a, b) beside the checkpoint: the age fed is (age - b) / a, then normalised."""
    pkl = _pickle(repo, tmp_path / "run", {"age_min": 0, "age_max": 75, "age_loss_fn": "MSE"})
    a, b = 0.8, 5.0
    np.save(tmp_path / "run" / "calibrate-0.75", [a, b])  # as the authors' calibrate_network.py saves it
    gen = _make(repo, pkl)
    out = tmp_path / "out"
    res = generate_to(out, gen, seed_identities(1), [20, 50])
    assert not res.warnings
    c = np.concatenate([m[2] for m in _maps(gen)])
    fed = [(20 - b) / a, (50 - b) / a]  # 18.75, 56.25
    assert np.allclose(c[:, 25], [round(2 * x / 75 - 1, 4) for x in fed], atol=1e-6)
    rows = _rows(out)
    p = json.loads(rows[0]["parameters"])
    assert p["calibrated"] is True and p["calibration_ab"] == [a, b]
    assert p["calibration"] == str(tmp_path / "run" / "calibrate-0.75.npy")
    assert [json.loads(r["parameters"])["age_fed"] for r in rows] == [18.75, 56.25]
    assert json.loads((out / "generation.json").read_text())["parameters"]["calibrated"] is True

    # an explicit file for another psi; "none" turns calibration off
    np.save(tmp_path / "cal-other.npy", [2.0, -10.0])
    gen = _make(repo, pkl, truncation_psi=0.6, calibration=str(tmp_path / "cal-other.npy"))
    generate_to(tmp_path / "o2", gen, seed_identities(1), [20])
    assert np.isclose(_maps(gen)[0][2][0, 25], round(2 * ((20 + 10) / 2.0) / 75 - 1, 4))
    gen = _make(repo, pkl, calibration="none")
    res = generate_to(tmp_path / "o3", gen, seed_identities(1), [20])
    assert not res.warnings and np.isclose(_maps(gen)[0][2][0, 25], round(2 * 20 / 75 - 1, 4))
    assert gen.parameters()["calibrated"] is False


def test_calibration_in_onehot_mode_and_file_names(repo, tmp_path):
    from generators.eg3d_age import calibration_file

    assert calibration_file(Path("/r/net.pkl"), 0.75).name == "calibrate-0.75.npy"
    assert calibration_file(Path("/r/net.pkl"), 1).name == "calibrate-1.0.npy"  # click's float, as upstream
    pkl = _pickle(repo, tmp_path / "oh", {"age_min": 0, "age_max": 75, "age_loss_fn": "CAT"}, age_dim=101)
    np.save(tmp_path / "oh" / "calibrate-1.0.npy", [1.25, -2.0])
    gen = _make(repo, pkl, truncation_psi=1.0)
    generate_to(tmp_path / "o", gen, seed_identities(1), [10, 60])
    c = np.concatenate([m[2] for m in _maps(gen)])
    assert np.array_equal(c[:, 25:].argmax(1), [int((10 + 2) / 1.25), int((60 + 2) / 1.25)])  # 9, 49


def test_calibration_and_conditioning_errors(repo, tmp_path):
    from agebias.errors import ModelError, SettingsError

    pkl = _pickle(repo, tmp_path / "run", {"age_min": 0, "age_max": 75, "age_loss_fn": "MSE"})
    with pytest.raises(SettingsError, match="calibration file .* not found"):
        _make(repo, pkl, calibration=str(tmp_path / "missing.npy"))
    with pytest.raises(SettingsError, match="no calibration file calibrate-0.75.npy"):
        _make(repo, pkl, calibration=True)
    np.save(tmp_path / "bad.npy", [0.0, 3.0])
    with pytest.raises(ModelError, match="a != 0"):
        _make(repo, pkl, calibration=str(tmp_path / "bad.npy"))
    (tmp_path / "text.npy").write_text("a, b")
    with pytest.raises(ModelError, match="cannot read calibration file"):
        _make(repo, pkl, calibration=str(tmp_path / "text.npy"))
    for rendering, why in (({"c_gen_conditioning_zero": True}, "zeroes the conditioning, age included"),
                           ({"c_scale": 0}, "c_scale is 0"), ({"c_scale": None}, "c_scale is None")):
        bad = _pickle(repo, tmp_path / f"bad{len(why)}", {"age_min": 0, "age_max": 75}, **rendering)
        with pytest.raises(ModelError, match=why):
            _make(repo, bad).load()
    wrong = _pickle(repo, tmp_path / "wrong", {"age_min": 0, "age_max": 75, "age_loss_fn": "CAT"})
    with pytest.raises(ModelError, match="age_loss_fn CAT"):
        _make(repo, wrong).load()


def test_age_code_calibration_unit():
    from generators.eg3d_age import AgeCode

    code = AgeCode(1, {"age_min": 0, "age_max": 75}, calibration=(0.9, 3.0))
    for age in (0, 10, 33, 75):
        assert code.fed_age(age) == (age - 3.0) / 0.9
        assert code(age)[0] == round(2 * ((age - 3.0) / 0.9) / 75 - 1, 4)
    plain = AgeCode(1, {"age_min": 0, "age_max": 75})
    assert plain.fed_age(33) == 33 and plain(33)[0] == round(2 * 33 / 75 - 1, 4)
    onehot = AgeCode(101, {"age_min": 0, "age_max": 100}, calibration=(0.5, 0.0))
    assert onehot(80).argmax() == 100 and onehot(20).argmax() == 40  # (age - b) / a, clamped to 0..100


def test_rendering_is_seeded_per_identity(repo, tmp_path):
    """EG3D's renderer draws random depth samples: same seed and age -> same pixels, run after run, and the
    caller's torch RNG state is left alone."""
    import torch

    pkl = _pickle(repo, tmp_path / "run", {"age_min": 0, "age_max": 75})
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    generate_to(tmp_path / "a", _make(repo, pkl), seed_identities(2), [30])
    assert torch.equal(torch.rand(1), before)
    generate_to(tmp_path / "b", _make(repo, pkl), seed_identities(2), [30])
    a = _rows(tmp_path / "a")
    assert [r["checksum"] for r in a] == [r["checksum"] for r in _rows(tmp_path / "b")]
    assert a[0]["checksum"] != a[1]["checksum"]


def test_missing_training_options_and_cutoff_zero_are_flagged(repo, tmp_path):
    pkl = _pickle(repo, tmp_path / "bare", None)
    gen = _make(repo, pkl, truncation_cutoff=0)
    out = tmp_path / "out"
    res = generate_to(out, gen, seed_identities(1), [50])
    assert any("training_options.json not found" in w for w in res.warnings)
    assert any("disables truncation" in w for w in res.warnings)
    assert [m[4] for m in _maps(gen)] == [0]  # passed through as asked
    c = _maps(gen)[0][2]
    assert abs(c[0, 25] - 0.0) < 1e-6  # 50 on the assumed 0-100 range
    run = json.loads((out / "generation.json").read_text())
    assert any("training_options.json" in w for w in run["warnings"])


def test_trust_checkout_and_checkpoint_errors(repo, tmp_path):
    pkl = _pickle(repo, tmp_path / "run", {"age_min": 0, "age_max": 75})
    with pytest.raises(UserError, match="--trust-checkpoint"):
        create_generator("eg3d", checkpoint=pkl, repo=repo)
    with pytest.raises(UserError, match="checkout not found"):
        create_generator("eg3d", checkpoint=pkl, repo=tmp_path / "nowhere", trust_checkpoint=True)
    with pytest.raises(UserError, match="needs an EG3D-Age network pickle"):
        create_generator("eg3d", repo=repo, trust_checkpoint=True)
    with pytest.raises(UserError, match="not found"):
        create_generator("eg3d", checkpoint=tmp_path / "missing.pkl", repo=repo, trust_checkpoint=True)
    gen = _make(repo, pkl)
    with pytest.raises(UserError, match="outside this model's range 0-75"):
        gen.check_ages([80])


def test_cli_eg3d_with_standin(repo, tmp_path, capsys):
    from agebias.cli import main

    pkl = _pickle(repo, tmp_path / "run", {"age_min": 0, "age_max": 75})
    np.save(tmp_path / "cal.npy", [1.0, 2.0])
    out = tmp_path / "out"
    rc = main(["-q", "generate", "--method", "eg3d", "--identities", "3", "--age-intervals", "0-5,5-10,50-70",
               "--checkpoint", str(pkl), "--repo", str(repo), "--trust-checkpoint", "--device", "cpu",
               "--truncation-psi", "0.5", "--calibration", str(tmp_path / "cal.npy"), "--out", str(out)])
    assert rc == 0
    rows = _rows(out)
    assert len(rows) == 9 and {r["id"] for r in rows} == {"seed0000", "seed0001", "seed0002"}
    params = [json.loads(r["parameters"]) for r in rows]
    assert all(p["truncation_psi"] == 0.5 and p["calibration_ab"] == [1.0, 2.0] for p in params)
    assert all(p["age_fed"] == int(r["age"]) - 2 for p, r in zip(params, rows, strict=True))
    assert main(["generate", "--method", "eg3d", "--identities", "1", "--ages", "5", "--checkpoint", str(pkl),
                 "--repo", str(repo), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-checkpoint" in err[0]
