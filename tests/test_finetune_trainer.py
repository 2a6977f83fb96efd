"""End-to-end fine-tuning on tiny iresnets and tiny synthetic face sets (each run takes about a second)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agebias.errors import UserError
from agebias.finetune.trainer import FinetuneConfig, run_finetune
from agebias.models.iresnet import IResNet

TINY = "iresnet:1,1,1,1@8,8,16,16"


def make_generated_set(root: Path, n_ids: int = 8, per_id: int = 4, seed: int = 0, size: int = 112) -> Path:
    """``<id>/<id>_<age>.png``: each identity a coarse random colour pattern plus per-image noise."""
    rng = np.random.default_rng(seed)
    for i in range(n_ids):
        base = np.kron(rng.integers(0, 256, (7, 7, 3)).astype(np.float32), np.ones((16, 16, 1)))
        sid = f"id{i:03d}"
        (root / sid).mkdir(parents=True, exist_ok=True)
        for a in range(per_id):
            img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            if size != 112:
                img = np.asarray(Image.fromarray(img).resize((size, size)))
            Image.fromarray(img).save(root / sid / f"{sid}_{5 + 12 * a}.png")
    return root


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("AGEBIAS_QUIET", "1")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_generated_set(tmp_path_factory.mktemp("data") / "synth")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    from agebias.models.checkpoints import save_backbone
    from agebias.models.registry import create_backbone

    torch.manual_seed(123)
    model = create_backbone(TINY)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that drifting ones would show
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return save_backbone(model, tmp_path_factory.mktemp("weights") / "backbone.pth")


def config(dataset: Path, out: Path, **kw) -> FinetuneConfig:
    base = dict(data=[str(dataset)], backbone=TINY, init="random", out=str(out), aligned=True, epochs=2,
                batch_size=8, frozen_layers="1,2,3", tensorboard=False, align_cache=str(out.parent / "align"))
    base.update(kw)
    return FinetuneConfig(**base)


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_frozen_parts_bit_identical_and_layer4_moves(dataset, pretrained, tmp_path):
    before = load(pretrained)
    res = run_finetune(config(dataset, tmp_path / "run", backbone=str(pretrained), init="pretrained"))
    after = load(res.backbone_path)
    frozen = [k for k in before if k.split(".")[0] in ("conv1", "bn1", "prelu", "layer1", "layer2", "layer3")]
    assert any("running_mean" in k for k in frozen) and any("num_batches_tracked" in k for k in frozen)
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    assert torch.equal(after["features.weight"], before["features.weight"])  # fixed at 1 as in arcface_torch
    moved = [k for k in before if k.startswith("layer4.") and not torch.equal(before[k], after[k])]
    assert any(k.endswith("conv1.weight") for k in moved)
    assert any(k.endswith("running_mean") for k in moved)  # trainable BatchNorms do update
    assert not torch.equal(before["fc.weight"], after["fc.weight"])


def test_non_prefix_freeze_keeps_frozen_middle_layer(dataset, pretrained, tmp_path):
    before = load(pretrained)
    res = run_finetune(config(dataset, tmp_path / "run", backbone=str(pretrained), init="pretrained",
                              frozen_layers="1,3", epochs=1))
    after = load(res.backbone_path)
    for k in before:
        if k.split(".")[0] in ("conv1", "bn1", "prelu", "layer1", "layer3"):
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["layer2.0.conv1.weight"], after["layer2.0.conv1.weight"])
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["frozen_parts"] == ["stem", "layer1", "layer3"]
    assert cfg["model"]["frozen_prefix_stages"] == 2


def test_cached_prefix_equals_recomputing(dataset, tmp_path):
    cached = run_finetune(config(dataset, tmp_path / "cached", cache="ram"))
    recomputed = run_finetune(config(dataset, tmp_path / "plain", cache="off"))
    disk = run_finetune(config(dataset, tmp_path / "disk", cache="disk"))
    a, b, c = load(cached.backbone_path), load(recomputed.backbone_path), load(disk.backbone_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert [r["loss"] for r in cached.rows] == [r["loss"] for r in recomputed.rows]
    assert not (tmp_path / "disk" / "cache").exists()  # the disk memmap is removed at the end


@pytest.mark.parametrize("cache", ["ram", "off"])
def test_the_frozen_prefix_takes_channels_last_images_on_cpu(dataset, tmp_path, monkeypatch, cache):
    from agebias import precision
    from agebias.finetune import trainer

    assert precision.prefix_channels_last("fp32", "cpu") and precision.prefix_channels_last("bf16", "cuda")
    assert not precision.prefix_channels_last("fp32", "cuda")
    layouts = []
    real = trainer.run_stages

    def spy(model, x, start, stop=None):
        if start == 0 and stop:  # the frozen prefix, cached or recomputed
            layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return real(model, x, start, stop)

    monkeypatch.setattr(trainer, "run_stages", spy)
    run_finetune(config(dataset, tmp_path / "run", cache=cache, epochs=1))
    assert layouts and all(layouts)


def test_resume_equals_uninterrupted(dataset, tmp_path):
    # a schedule with warm-up and a randomised, stateful hook (label flip) must continue exactly too
    kw = dict(epochs=3, scheduler="cosine", warmup_epochs=1, mitigation="label-flip:p=0.5")
    full = run_finetune(config(dataset, tmp_path / "full", **kw))
    part = run_finetune(config(dataset, tmp_path / "part", stop_after_epochs=1, **kw))
    assert not part.completed and part.backbone_path is None
    assert not (tmp_path / "part" / "backbone.pth").exists()
    with pytest.raises(UserError, match="--resume"):
        run_finetune(config(dataset, tmp_path / "part", **kw))
    resumed = run_finetune(config(dataset, tmp_path / "part", resume=True, **kw))
    assert [r["lr"] for r in full.rows] == [r["lr"] for r in resumed.rows]
    a, b = load(full.backbone_path), load(resumed.backbone_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in full.rows] == [r["loss"] for r in resumed.rows]
    assert len((tmp_path / "part" / "metrics.csv").read_text().strip().splitlines()) == 4


def test_export_has_exactly_arcface_keys_and_loads(dataset, tmp_path):
    from agebias.models.checkpoints import load_backbone

    res = run_finetune(config(dataset, tmp_path / "run", epochs=1, onnx=True, eval_fgnet=str(tmp_path / "nofg")))
    state = load(res.backbone_path)
    reference = IResNet((1, 1, 1, 1), widths=(8, 8, 16, 16)).state_dict()
    assert list(state) == list(reference)
    assert all(state[k].shape == reference[k].shape for k in state)
    model = load_backbone(res.backbone_path, arch=TINY)
    assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 512)
    assert load(res.best_path).keys() == state.keys()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(res.onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 112, 112)
    expected = model(x).detach().numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(got, expected, atol=1e-3)
    # the exported ONNX is itself a valid --backbone; the frozen layers come through unchanged
    from agebias.models.onnx_import import import_iresnet_onnx

    imported = import_iresnet_onnx(res.onnx_path).state_dict()
    again = run_finetune(config(dataset, tmp_path / "from_onnx", backbone=str(res.onnx_path), init="pretrained",
                                epochs=1))
    after = load(again.backbone_path)
    assert all(torch.equal(imported[k], after[k]) for k in after if k.startswith(("conv1", "layer1", "layer3")))


def test_thesis_settings_loss_falls_and_eer_logged(tmp_path):
    data = make_generated_set(tmp_path / "synth", n_ids=10, per_id=5, seed=3)
    res = run_finetune(config(data, tmp_path / "run", lr=0.01, momentum=0.9, batch_size=25, epochs=4,
                              optimizer="sgd", frozen_layers="1,2,3"))
    losses = [r["loss"] for r in res.rows]
    assert losses[-1] < losses[0]
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[:6] == ["epoch", "loss", "lr", "val_eer", "val_fnmr_at_fmr_1e-3", "time"]
    assert len(rows) == 5 and all(r.split(",")[3] != "" for r in rows[1:])
    assert all(0.0 <= r["val_eer"] <= 1.0 for r in res.rows)
    keys = [(r["val_eer"], r["val_fnmr_at_fmr_1e-3"]) for r in res.rows]
    assert res.best_epoch == max(i for i, k in enumerate(keys) if k == min(keys)) + 1  # ties: the later epoch
    assert json.loads((tmp_path / "run" / "best" / "epoch.json").read_text())["epoch"] == res.best_epoch
    summary = json.loads((tmp_path / "run" / "config.json").read_text())
    assert summary["data"]["val_identities"] == 2 and summary["data"]["train_identities"] == 8
    assert set(summary["data"]["val_identity_names"]).isdisjoint(json.loads((tmp_path / "run" / "classes.json").read_text()))


def test_same_config_returns_finished_run_and_other_config_is_refused(dataset, tmp_path):
    first = run_finetune(config(dataset, tmp_path / "run", epochs=1))
    stamp = first.backbone_path.stat().st_mtime_ns
    again = run_finetune(config(dataset, tmp_path / "run", epochs=1))
    assert again.completed and again.backbone_path.stat().st_mtime_ns == stamp
    assert again.rows == first.rows
    with pytest.raises(UserError, match="another run.*lr"):
        run_finetune(config(dataset, tmp_path / "run", epochs=1, lr=0.5))
    assert first.backbone_path.stat().st_mtime_ns == stamp
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="no fine-tuning run"):
        run_finetune(config(dataset, tmp_path / "other", epochs=1))
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_mixed_sources_with_weights_and_bf16(dataset, tmp_path):
    second = make_generated_set(tmp_path / "second", n_ids=4, per_id=3, seed=9)
    res = run_finetune(config(dataset, tmp_path / "run", data=[f"{dataset}:1.0", f"{second}:0.5", f"{tmp_path / 'unused'}:0"], epochs=1,
                              precision="bf16", head="cosface", scheduler="cosine", warmup_epochs=0.5))
    summary = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert [s["weight"] for s in summary["sources"]] == [1.0, 0.5]
    assert summary["identities"] == 12
    assert np.isfinite(res.rows[0]["loss"])


@pytest.mark.slow
def test_eval_fgnet_every_k_epochs_writes_evaluator_reports(dataset, tmp_path, monkeypatch):
    from agebias.data.faces import load_aligned_faces
    from agebias.data.sources import open_dataset
    from agebias.finetune import fgnet_eval

    def aligned_load(self):  # the synthetic set stands in for FG-NET (already aligned: no face detection)
        faces = load_aligned_faces(open_dataset(self.root).records, aligned=True, cache_dir=False)
        self.records, self.crops = faces.records, faces.crops

    monkeypatch.setattr(fgnet_eval.FgnetEvaluator, "_load", aligned_load)
    res = run_finetune(config(dataset, tmp_path / "run", epochs=2, eval_fgnet=str(dataset), eval_every=2))
    assert (tmp_path / "run" / "fgnet" / "epoch_002" / "results.json").is_file()
    assert not (tmp_path / "run" / "fgnet" / "epoch_001").exists()
    assert 0.0 <= res.rows[-1]["fgnet_eer"] <= 1.0 and "fgnet_eer" not in res.rows[0]


def test_resume_with_more_epochs_continues_a_finished_run_exactly(dataset, tmp_path):
    full = run_finetune(config(dataset, tmp_path / "full", epochs=3))
    short = run_finetune(config(dataset, tmp_path / "ext", epochs=1))
    assert short.completed and short.epochs_done == 1
    with pytest.raises(UserError, match="holds a 1-epoch run; pass --resume to continue it to 3 epochs"):
        run_finetune(config(dataset, tmp_path / "ext", epochs=3))
    # interrupted after epoch 2: the run is unfinished again (no done.json, no final backbone) ...
    part = run_finetune(config(dataset, tmp_path / "ext", epochs=3, resume=True, stop_after_epochs=1))
    assert not part.completed and part.epochs_done == 2
    assert not (tmp_path / "ext" / "done.json").exists() and not (tmp_path / "ext" / "backbone.pth").exists()
    with pytest.raises(UserError, match="--epochs 2 cannot shorten this 3-epoch run"):
        run_finetune(config(dataset, tmp_path / "ext", epochs=2, resume=True))
    # ... and continues to the same weights and history as the uninterrupted 3-epoch run
    extended = run_finetune(config(dataset, tmp_path / "ext", epochs=3, resume=True))
    a, b = load(full.backbone_path), load(extended.backbone_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in extended.rows] == [r["loss"] for r in full.rows]
    assert [r["epoch"] for r in extended.rows] == [1, 2, 3]
    assert len((tmp_path / "ext" / "metrics.csv").read_text().strip().splitlines()) == 4
    recorded = json.loads((tmp_path / "ext" / "config.json").read_text())
    assert recorded["config"]["epochs"] == 3 and recorded["config_hash"] == full.config_hash
    # nothing changed now: the finished run is returned, not trained again
    stamp = extended.backbone_path.stat().st_mtime_ns
    again = run_finetune(config(dataset, tmp_path / "ext", epochs=3, resume=True))
    assert again.rows == extended.rows and extended.backbone_path.stat().st_mtime_ns == stamp


def _recorded_run(run_dir: Path, cfg: FinetuneConfig, finished: bool = True) -> None:
    """A run directory as a run with ``cfg`` leaves it (checkpoint contents are not read by check_run_dir)."""
    from agebias.finetune.run_dir import RUN_KIND

    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    (run_dir / "config.json").write_text(json.dumps({"kind": RUN_KIND, "config_hash": cfg.config_hash(),
                                                     "config": cfg.to_dict()}))
    if finished:
        (run_dir / "done.json").write_text("{}")


@pytest.mark.parametrize("schedule, reason", [
    (dict(scheduler="cosine"), "its cosine schedule depends on the total number of epochs"),
    (dict(scheduler="step"), "its step schedule's default milestones are fractions of the total number of epochs"),
])
def test_more_epochs_refused_when_the_schedule_depends_on_the_total(dataset, tmp_path, schedule, reason):
    from agebias.finetune.run_dir import check_run_dir

    _recorded_run(tmp_path / "run", config(dataset, tmp_path / "run", epochs=2, **schedule))
    with pytest.raises(UserError) as err:
        check_run_dir(tmp_path / "run", config(dataset, tmp_path / "run", epochs=5, resume=True, **schedule))
    assert str(err.value) == f"--epochs 5 cannot extend this run: {reason}; start a new --out"


def test_which_runs_may_be_extended(dataset, tmp_path):
    from agebias.finetune.run_dir import RunDirState, check_checkpoint, check_run_dir

    old = config(dataset, tmp_path / "run", epochs=2, scheduler="step", step_epochs=[1], warmup_epochs=0.5)
    _recorded_run(tmp_path / "run", old, finished=False)
    more = config(dataset, tmp_path / "run", epochs=6, scheduler="step", step_epochs=[1], warmup_epochs=0.5,
                  resume=True)
    assert check_run_dir(tmp_path / "run", more) == RunDirState("resume", extends_from=2)
    assert check_run_dir(tmp_path / "run", config(dataset, tmp_path / "run", epochs=2, scheduler="step",
                                                  step_epochs=[1], warmup_epochs=0.5, resume=True)) \
        == RunDirState("resume")
    with pytest.raises(UserError, match=r"another run \(different epochs, lr\)"):
        check_run_dir(tmp_path / "run", config(dataset, tmp_path / "run", epochs=6, lr=0.5, scheduler="step",
                                               step_epochs=[1], warmup_epochs=0.5, resume=True))
    # a checkpoint written before the extension belongs to the extended run; one of other settings does not
    checkpoint = {"config_hash": old.config_hash(), "config": old.training_dict()}
    check_checkpoint(checkpoint, more, tmp_path / "last.pt")
    with pytest.raises(UserError, match="belongs to a run with other settings"):
        check_checkpoint(checkpoint, config(dataset, tmp_path / "run", epochs=6, scheduler="cosine"),
                         tmp_path / "last.pt")
    with pytest.raises(UserError, match="belongs to a run with other settings"):
        check_checkpoint({"config_hash": old.config_hash()}, more, tmp_path / "last.pt")
