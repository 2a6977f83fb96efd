"""`agebias embed`: npz output, skipped files, flip, detection path, and one-line user errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agebias.cli import main
from agebias.models.checkpoints import save_backbone
from agebias.models.embedder import TorchEmbedder
from agebias.models.registry import create_backbone

TINY = "iresnet:1,1,1,1@8,8,16,16"


@pytest.fixture()
def tiny_ckpt(tmp_path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_backbone(TINY).eval()
    return save_backbone(model, tmp_path / "tiny.pth"), model


def _write_crops(folder: Path, n: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    crops = rng.integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(crops):
        Image.fromarray(c).save(folder / f"{i:02d}.png")
    return crops


def test_aligned_folder_with_bad_files(tmp_path, tiny_ckpt, capsys):
    ckpt, model = tiny_ckpt
    crops = _write_crops(tmp_path / "faces" / "sub", 3)
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(tmp_path / "faces" / "small.png")
    (tmp_path / "faces" / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg")
    out = tmp_path / "out" / "emb.npz"
    rc = main(["--quiet", "embed", str(tmp_path / "faces"), "--model", str(ckpt), "--aligned", "--batch-size", "2",
               "--device", "cpu", "--out", str(out)])
    assert rc == 1  # finished, but something was skipped
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "small.png" in err and "112x112" in err
    data = np.load(out)
    assert [Path(p).name for p in data["paths"]] == ["00.png", "01.png", "02.png"]
    expected = TorchEmbedder(model, device="cpu").embed(crops)
    np.testing.assert_allclose(data["embeddings"], expected, atol=1e-5)
    assert sorted(Path(p).name for p in data["skipped_paths"]) == ["broken.jpg", "small.png"]
    assert [p.name for p in out.parent.iterdir()] == ["emb.npz"]  # written atomically


def test_flip_and_single_files(tmp_path, tiny_ckpt):
    ckpt, model = tiny_ckpt
    crops = _write_crops(tmp_path / "c", 2)
    files = [str(tmp_path / "c" / "01.png"), str(tmp_path / "c" / "00.png")]
    out = tmp_path / "e.npz"
    rc = main(["--quiet", "embed", *files, "--model", str(ckpt), "--aligned", "--flip", "--out", str(out)])
    assert rc == 0
    data = np.load(out)
    assert list(data["paths"]) == files  # the order given
    expected = TorchEmbedder(model, device="cpu", flip=True).embed(crops[::-1].copy())
    np.testing.assert_allclose(data["embeddings"], expected, atol=1e-5)


@pytest.mark.slow
def test_detect_and_align_path(tmp_path, tiny_ckpt):
    """Without --aligned, faces are detected (MTCNN) and aligned before embedding."""
    import matplotlib

    ckpt, _ = tiny_ckpt
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank)
    out = tmp_path / "d.npz"
    rc = main(["--quiet", "embed", str(photo), str(blank), "--model", str(ckpt), "--out", str(out)])
    data = np.load(out)
    assert rc == 1 and list(data["paths"]) == [str(photo)]
    assert data["embeddings"].shape == (1, 512)
    assert list(data["skipped_paths"]) == [str(blank)]


@pytest.mark.parametrize("args,needle", [
    (["--model", "MISSING.pth"], "not found"),
    (["--model", "iresnet50"], "random:iresnet50"),
    (["--arch", "bogus"], "unknown architecture"),
    (["--batch-size", "0"], "batch"),
    (["--device", "tpu-9"], "device"),
])
def test_user_errors_one_line(tmp_path, tiny_ckpt, capsys, args, needle):
    ckpt, _ = tiny_ckpt
    _write_crops(tmp_path / "c", 1)
    argv = ["--quiet", "embed", str(tmp_path / "c"), "--aligned", "--out", str(tmp_path / "x.npz")]
    if "--model" not in args:
        argv += ["--model", str(ckpt)]
    rc = main(argv + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.npz").exists()


def test_missing_input_is_a_user_error(tmp_path, tiny_ckpt, capsys):
    ckpt, _ = tiny_ckpt
    rc = main(["--quiet", "embed", str(tmp_path / "nope"), "--model", str(ckpt), "--out", str(tmp_path / "x.npz")])
    assert rc == 2 and "input not found" in capsys.readouterr().err


@pytest.mark.parametrize("backend, min_cos", [("onnxruntime", 0.9999), ("torch-bf16", 0.99)])
def test_fast_backends_agree_with_fp32(tmp_path, tiny_ckpt, backend, min_cos):
    ckpt, model = tiny_ckpt
    crops = _write_crops(tmp_path / "c", 2)
    out = tmp_path / "fast.npz"
    rc = main(["--quiet", "embed", str(tmp_path / "c"), "--model", str(ckpt), "--aligned", "--backend", backend,
               "--out", str(out)])
    assert rc == 0
    emb = np.load(out)["embeddings"]
    ref = TorchEmbedder(model, device="cpu").embed(crops)
    assert float((emb * ref).sum(1).min()) >= min_cos


def test_out_that_is_a_folder_is_a_user_error(tmp_path, tiny_ckpt, capsys):
    """--out naming an existing folder ended in IsADirectoryError from the atomic rename."""
    ckpt, _ = tiny_ckpt
    _write_crops(tmp_path / "c", 1)
    rc = main(["--quiet", "embed", str(tmp_path / "c"), "--aligned", "--model", str(ckpt), "--out",
               str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "is a folder" in err and len(err.splitlines()) == 1, err
