"""Sharded ``agebias embed`` and ``agebias generate`` under ``torchrun --nproc_per_node 2`` (gloo, CPU): the result
equals a single-process run, and a run whose rank 0 died before merging is resumed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agebias.cli import main
from agebias.distributed import DistInfo
from helpers_faces import tom_hanks_aligned
from test_finetune_trainer import TINY, make_generated_set

HERE = Path(__file__).resolve().parent
TOM = tom_hanks_aligned()


def test_shares_are_contiguous_disjoint_and_cover_everything():
    for n, world in [(10, 3), (2, 4), (0, 2), (7, 1)]:
        blocks = [DistInfo(rank, world).share(n) for rank in range(world)]
        assert [i for b in blocks for i in b] == list(range(n))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert DistInfo(1, 3).share(10) == range(3, 6)


def test_each_torchrun_process_gets_its_own_gpu(monkeypatch):
    from agebias.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda:1")  # 4th process, 2 GPUs
    assert resolve_device("cuda:0") == torch.device("cuda:0") and resolve_device("cpu").type == "cpu"
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("cuda") == torch.device("cuda")


def test_other_ranks_log_warnings_only_with_their_rank(monkeypatch, capsys):
    import logging

    from agebias.console import configure
    from agebias.progress import bar

    log = logging.getLogger("agebias.test_shards")
    monkeypatch.delenv("AGEBIAS_QUIET", raising=False)
    configure(quiet=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    log.info("hidden")
    log.warning("shown")
    with bar(3, "work") as progress:
        assert progress.disable
    monkeypatch.setenv("RANK", "0")
    log.info("main")
    assert capsys.readouterr().err.splitlines() == ["[rank 1] warning: shown", "main"]


def _torchrun(args: list[str], cwd: Path, tmp_path: Path, script: list[str] | None = None, **env_extra):
    env = {**os.environ, "AGEBIAS_QUIET": "1", "OMP_NUM_THREADS": "1", "AGEBIAS_CACHE": str(tmp_path / "cache"),
           **env_extra}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *(script or ["-m", "agebias"]), *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _model_and_data(tmp_path: Path) -> tuple[Path, Path]:
    from agebias.models.checkpoints import save_backbone
    from agebias.models.registry import create_backbone

    data = make_generated_set(tmp_path / "synth", n_ids=5, per_id=3)
    torch.manual_seed(0)
    return save_backbone(create_backbone(TINY), tmp_path / "m.pth"), data


def _embed_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["embed", str(data), "--model", str(model), "--arch", TINY, "--out", str(out), "--device", "cpu",
            "--aligned"]


def test_two_process_embed_equals_one_process(tmp_path):
    model, data = _model_and_data(tmp_path)
    assert main(["-q", *_embed_args(model, data, tmp_path / "one.npz")]) == 0
    proc = _torchrun(_embed_args(model, data, tmp_path / "two.npz"), tmp_path, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert list(two["paths"]) == list(one["paths"]) and len(one["paths"]) == 15
    np.testing.assert_allclose(two["embeddings"], one["embeddings"], rtol=1e-5, atol=1e-6)
    assert str(two["model"]) == str(one["model"])
    assert not (tmp_path / "two.npz.parts").exists()


@pytest.mark.slow
def test_embed_reuses_the_parts_of_a_run_that_died_before_merging(tmp_path):
    model, data = _model_and_data(tmp_path)
    out = tmp_path / "emb.npz"
    proc = _torchrun(_embed_args(model, data, out), tmp_path, tmp_path, [str(HERE / "helpers_torchrun_die.py")],
                     DIE_AT="agebias.cli.embed_cmd:write_npz")
    assert proc.returncode != 0 and not out.exists()
    parts = sorted((tmp_path / "emb.npz.parts").glob("*.npz"), key=lambda p: int(p.name.split("-")[0]))
    assert [p.name for p in parts] == ["0-7.npz", "7-15.npz"]  # 15 images: rank 0 takes 0..6, rank 1 7..14
    with np.load(parts[1]) as z:  # mark rank 1's part: a rerun that reuses it returns these rows
        arrays = dict(z)
    arrays["embeddings"] = arrays["embeddings"] * 2
    with open(parts[1], "wb") as fh:
        np.savez(fh, **arrays)
    proc = _torchrun(_embed_args(model, data, out), tmp_path, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["-q", *_embed_args(model, data, tmp_path / "ref.npz")]) == 0
    got, ref = np.load(out)["embeddings"], np.load(tmp_path / "ref.npz")["embeddings"]
    np.testing.assert_allclose(got[:7], ref[:7], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[7:], 2 * ref[7:], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "emb.npz.parts").exists()


def _sources(folder: Path) -> Path:
    """Five aligned faces (the Tom Hanks crop, brightened and mirrored in turn)."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True)
    base = np.asarray(Image.open(TOM).convert("RGB")).astype(int)
    for i in range(5):
        img = Image.fromarray(np.clip(base + 7 * i - 14, 0, 255).astype(np.uint8))
        (ImageOps.mirror(img) if i % 2 else img).save(folder / f"person{i}.png")
    return folder


def _generate_args(sources: Path) -> list[str]:
    # a relative --out: generation.json records the settings, so both runs must spell it alike
    return ["generate", "--method", "cardioid", "--sources", str(sources), "--aligned-sources", "--ages", "3,8,14",
            "--out", "gen"]


def _checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.skipif(TOM is None, reason="insightface test image not installed")
def test_two_process_generate_equals_one_process(tmp_path, monkeypatch):
    sources = _sources(tmp_path / "src")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    assert main(["-q", *_generate_args(sources)]) == 0
    proc = _torchrun(_generate_args(sources), tmp_path / "two", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _checksums(tmp_path / "one" / "gen"), _checksums(tmp_path / "two" / "gen")
    assert len(one) == 5 * 3 + 3  # images, manifest.csv, contact_sheet.png, generation.json
    assert two == one


@pytest.mark.skipif(TOM is None, reason="insightface test image not installed")
def test_generate_resumes_a_run_that_died_before_merging(tmp_path, monkeypatch):
    sources = _sources(tmp_path / "src")
    (tmp_path / "ref").mkdir()
    monkeypatch.chdir(tmp_path / "ref")
    assert main(["-q", *_generate_args(sources)]) == 0
    run = tmp_path / "run"
    run.mkdir()
    proc = _torchrun(_generate_args(sources), run, tmp_path, [str(HERE / "helpers_torchrun_die.py")],
                     DIE_AT="agebias.distributed:finish_share")
    assert proc.returncode != 0 and not (run / "gen" / "manifest.csv").exists()
    assert sorted(p.name for p in (run / "gen" / ".parts").iterdir()) == ["rank-0", "rank-1"]
    monkeypatch.chdir(run)  # one process resumes what two left
    assert main(["-q", *_generate_args(sources)]) == 0
    info = json.loads((run / "gen" / "generation.json").read_text())
    assert (info["written"], info["reused"]) == (0, 15)
    ref, got = _checksums(tmp_path / "ref" / "gen"), _checksums(run / "gen")
    assert {k: v for k, v in got.items() if k != "generation.json"} == \
        {k: v for k, v in ref.items() if k != "generation.json"}
    assert not (run / "gen" / ".parts").exists()
    shutil.rmtree(run / "gen")
