"""Checkpoint reading/writing: tolerated variants load strictly; bad, foreign and hostile files give one clear line."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from agebias.cli import main
from agebias.errors import UserError
from agebias.models.checkpoints import infer_arch, load_backbone, load_state_dict_file, save_backbone
from agebias.models.registry import create_backbone

TINY = "iresnet:1,1,1,1@8,8,16,16"


def _tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_backbone(TINY)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def _same_output(a: nn.Module, b: nn.Module) -> None:
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    model = _tiny()
    path = save_backbone(model, tmp_path / f"backbone{suffix}")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # atomic: no temporary file left behind
    loaded = load_backbone(path)
    assert not loaded.training
    _same_output(model, loaded)
    raw = load_state_dict_file(path)
    assert set(raw) == set(model.state_dict())


def test_saved_pth_is_a_plain_state_dict_in_arcface_layout(tmp_path):
    wrapper = nn.Module()
    wrapper.module = _tiny()  # like DDP: save_backbone must drop the wrapper
    path = save_backbone(wrapper, tmp_path / "backbone.pth")
    sd = torch.load(path, weights_only=True)
    assert type(sd) is dict and "layer1.0.downsample.0.weight" in sd and "features.running_var" in sd
    assert not any(k.startswith("module.") for k in sd)


def test_tolerated_variants_load_strictly(tmp_path):
    model = _tiny()
    sd = model.state_dict()
    prefixed = {f"module.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(prefixed, tmp_path / "ddp.pth")
    _same_output(model, load_backbone(tmp_path / "ddp.pth"))
    torch.save({"state_dict": prefixed, "epoch": 3}, tmp_path / "wrapped.pth")
    _same_output(model, load_backbone(tmp_path / "wrapped.pth"))
    torch.save({"model": sd, "optimizer": {}}, tmp_path / "model.pt")
    _same_output(model, load_backbone(tmp_path / "model.pt", arch=TINY))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in prefixed.items()}, str(tmp_path / "ddp.safetensors"))
    _same_output(model, load_backbone(tmp_path / "ddp.safetensors"))
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    torch.save(half, tmp_path / "fp16.pth")  # fp16 tensors load into the fp32 model
    loaded = load_backbone(tmp_path / "fp16.pth")
    assert loaded.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.conv1.weight, model.conv1.weight.half().float())


def test_infer_arch_names():
    for name in ("iresnet18", "iresnet34", "iresnet100"):
        with torch.device("meta"):
            sd = create_backbone(name).state_dict()
        assert infer_arch(sd) == name
    assert infer_arch(_tiny().state_dict()) == TINY
    with pytest.raises(UserError, match="--arch"):
        infer_arch({"weight": torch.zeros(3)})


def test_wrong_arch_names_keys_and_shapes(tmp_path):
    path = save_backbone(_tiny(), tmp_path / "tiny.pth")
    with pytest.raises(UserError) as err:
        load_backbone(path, arch="iresnet:2,1,1,1@8,8,16,32")
    msg = str(err.value)
    assert "missing keys: layer1.1." in msg and "shape conflicts: layer4.0.conv1.weight" in msg
    assert "\n" not in msg
    sd = _tiny().state_dict()
    sd["head.kernel"] = torch.zeros(2)
    del sd["fc.bias"]
    torch.save(sd, tmp_path / "odd.pth")
    with pytest.raises(UserError) as err:
        load_backbone(tmp_path / "odd.pth")
    assert "unexpected keys: head.kernel" in str(err.value) and "missing keys: fc.bias" in str(err.value)
    many = {f"extra.{i}": torch.zeros(1) for i in range(30)}
    torch.save({**_tiny().state_dict(), **many}, tmp_path / "many.pth")
    with pytest.raises(UserError, match=r"\(24 more\)"):  # long lists are truncated
        load_backbone(tmp_path / "many.pth")


def test_unknown_arch_and_non_iresnet_keys(tmp_path):
    torch.save({"encoder.weight": torch.zeros(4, 4)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="pass --arch"):
        load_backbone(tmp_path / "other.pth")
    with pytest.raises(UserError, match="unknown architecture"):
        load_backbone(tmp_path / "other.pth", arch="resnet9000")


def test_corrupt_files(tmp_path):
    good = save_backbone(_tiny(), tmp_path / "good.pth").read_bytes()
    cases = {
        "missing.pth": None,
        "empty.pth": b"",
        "truncated.pth": good[: len(good) // 2],
        "noise.pth": bytes(range(256)) * 8,
        "text.safetensors": b"hello, not safetensors",
    }
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(UserError) as err:
            load_backbone(path)
        assert name in str(err.value) and "\n" not in str(err.value)
    assert "not found" in _message(load_backbone, tmp_path / "missing.pth")
    assert "empty" in _message(load_backbone, tmp_path / "empty.pth")


def _message(fn, *args) -> str:
    with pytest.raises(UserError) as err:
        fn(*args)
    return str(err.value)


class _Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _write_hostile(path: Path, marker: Path) -> None:
    sd = _tiny().state_dict()
    sd["payload"] = _Hostile(marker)
    torch.save(sd, path)
    legacy = path.with_suffix(".legacy.pth")
    with open(legacy, "wb") as fh:  # plain pickle, not torch's zip format
        pickle.dump({"conv1.weight": _Hostile(marker)}, fh)


def test_hostile_pickle_does_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    _write_hostile(path, marker)
    assert not marker.exists()
    for candidate in (path, path.with_suffix(".legacy.pth")):
        msg = _message(load_backbone, candidate)
        assert "--trust-checkpoint" in msg and "refused" in msg
        assert not marker.exists()


def test_hostile_pickle_cli_exit_2_one_line(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    _write_hostile(path, marker)
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    rc = main(["--quiet", "embed", str(img), "--model", str(path), "--aligned", "--out", str(tmp_path / "o.npz")])
    err = capsys.readouterr().err
    assert rc == 2
    assert not marker.exists()
    assert len(err.strip().splitlines()) == 1 and "--trust-checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "o.npz").exists()


def test_trusted_full_module_pickle(tmp_path):
    model = _tiny()
    path = tmp_path / "full.pth"
    torch.save(model, path)  # a whole pickled module, as some training scripts write
    with pytest.raises(UserError, match="--trust-checkpoint"):
        load_backbone(path)
    loaded = load_backbone(path, trust_checkpoint=True)
    _same_output(model, loaded)


def test_hostile_pickle_reason_names_the_global(tmp_path):
    """torch >= 2.6 words the refusal 'Trying to load unsupported GLOBAL posix.system ...': name the global."""
    import os

    class _System:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pth"
    torch.save({"x": _System()}, path)
    msg = _message(load_backbone, path)
    assert "references posix.system" in msg or "references nt.system" in msg
    assert "Weights only load failed" not in msg
