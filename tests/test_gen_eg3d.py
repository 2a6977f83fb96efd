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
    def __init__(self, z_dim=8, age_dim=1, res=32):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.res = z_dim, 25 + age_dim, 6, 14, res
        self.rendering_kwargs = {"avg_camera_pivot": [0, 0, 0.2], "avg_camera_radius": 2.7}
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
        img = torch.tanh(base[None, None, :, None] * 0.5 + age[:, None, None, None] * 2 + ws.mean() * 0.1)
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
        from training.standin import StandInG

        import torch

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


def test_scalar_age_conditioning_camera_truncation_and_layout(repo, tmp_path):
    pkl = _pickle(repo, tmp_path / "run", {"age_min": 0, "age_max": 75})
    gen = _make(repo, pkl, batch_size=2)
    assert gen.truncation_psi == 0.7 and gen.truncation_cutoff is None  # defaults: psi 0.7, all layers
    out = tmp_path / "out"
    res = generate_to(out, gen, seed_identities(2), [7, 30])
    assert res.written == 4 and not res.warnings
    maps = [c for c in gen.G.calls if c[0] == "mapping"]
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
    assert all(m[3] == 0.7 and m[4] is None for m in maps)
    assert all(np.allclose(s[1], m[2]) for s, m in zip(syn, maps))  # same (frontal) c for synthesis
    assert syn[0][2] == {"noise_mode": "const"}
    rows = _rows(out)
    assert [(r["id"], r["age"]) for r in rows] == [("seed0000", "7"), ("seed0000", "30"), ("seed0001", "7"),
                                                   ("seed0001", "30")]
    assert (out / "seed0000" / "seed0000_7.png").is_file()
    assert rows[0]["method"] == "eg3d" and rows[0]["seed"] == "0" and rows[2]["seed"] == "1"
    params = json.loads(rows[0]["parameters"])
    assert params["truncation_psi"] == 0.7 and params["truncation_cutoff"] is None and params["age_max"] == 75
    from PIL import Image

    a7 = np.asarray(Image.open(out / "seed0000" / "seed0000_7.png"), np.float32)
    a30 = np.asarray(Image.open(out / "seed0000" / "seed0000_30.png"), np.float32)
    assert a7.shape == (32, 32, 3) and np.abs(a7 - a30).mean() > 1


def test_categorical_and_101_onehot(repo, tmp_path):
    pkl = _pickle(repo, tmp_path / "cat", {"age_min": 0, "age_max": 80, "categories": [0, 5, 10, 20, 40, 80]},
                  age_dim=5)
    gen = _make(repo, pkl, truncation_psi=1.0, truncation_cutoff=14)
    generate_to(tmp_path / "o1", gen, seed_identities(1), [3, 7, 25, 80])
    c = np.concatenate([m[2] for m in gen.G.calls if m[0] == "mapping"])
    assert np.array_equal(c[:, 25:].argmax(1), [0, 1, 3, 4]) and np.allclose(c[:, 25:].sum(1), 1)
    assert all(m[3] == 1.0 and m[4] == 14 for m in gen.G.calls if m[0] == "mapping")
    with pytest.raises(UserError, match="outside this model's range 0-80"):
        generate_to(tmp_path / "o1b", gen, seed_identities(1), [81])

    pkl = _pickle(repo, tmp_path / "oh", {"age_min": 0, "age_max": 100}, age_dim=101)
    gen = _make(repo, pkl)
    generate_to(tmp_path / "o2", gen, seed_identities(1), [0, 33, 100])
    c = np.concatenate([m[2] for m in gen.G.calls if m[0] == "mapping"])
    assert c.shape[1] == 126 and np.array_equal(c[:, 25:].argmax(1), [0, 33, 100])


def test_missing_training_options_and_cutoff_zero_are_flagged(repo, tmp_path):
    pkl = _pickle(repo, tmp_path / "bare", None)
    gen = _make(repo, pkl, truncation_cutoff=0)
    out = tmp_path / "out"
    res = generate_to(out, gen, seed_identities(1), [50])
    assert any("training_options.json not found" in w for w in res.warnings)
    assert any("disables truncation" in w for w in res.warnings)
    assert [m[4] for m in gen.G.calls if m[0] == "mapping"] == [0]  # passed through as asked
    c = [m[2] for m in gen.G.calls if m[0] == "mapping"][0]
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
    out = tmp_path / "out"
    rc = main(["-q", "generate", "--method", "eg3d", "--identities", "3", "--age-bins", "0-5,5-10,50-70",
               "--checkpoint", str(pkl), "--repo", str(repo), "--trust-checkpoint", "--device", "cpu",
               "--truncation-psi", "0.5", "--out", str(out)])
    assert rc == 0
    rows = _rows(out)
    assert len(rows) == 9 and {r["id"] for r in rows} == {"seed0000", "seed0001", "seed0002"}
    assert all(json.loads(r["parameters"])["truncation_psi"] == 0.5 for r in rows)
    assert main(["generate", "--method", "eg3d", "--identities", "1", "--ages", "5", "--checkpoint", str(pkl),
                 "--repo", str(repo), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-checkpoint" in err[0]
