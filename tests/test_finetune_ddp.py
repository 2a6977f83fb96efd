"""Two CPU processes under torchrun (gloo): `torchrun --nproc_per_node 2 -m agebias finetune ...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from test_finetune_trainer import TINY, make_generated_set


@pytest.mark.slow
def test_two_process_ddp_run(tmp_path):
    from agebias.models.checkpoints import save_backbone
    from agebias.models.registry import create_backbone

    data = make_generated_set(tmp_path / "synth", n_ids=8, per_id=4)
    torch.manual_seed(0)
    start = save_backbone(create_backbone(TINY), tmp_path / "start.pth")
    out = tmp_path / "run"
    env = {**os.environ, "AGEBIAS_QUIET": "1", "OMP_NUM_THREADS": "1",
           "AGEBIAS_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "agebias", "finetune", "--data", str(data), "--backbone", str(start), "--arch", TINY,
           "--out", str(out), "--aligned", "--epochs", "2", "--batch-size", "4", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3
    before = torch.load(start, weights_only=True)
    after = torch.load(out / "backbone.pth", weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("layer1", "layer3", "bn1")))
    assert not torch.equal(before["layer4.0.conv1.weight"], after["layer4.0.conv1.weight"])
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2  # one RNG state per process
