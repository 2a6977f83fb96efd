"""ONNX export -> onnxruntime -> import back into torch: all three agree (cosine >= 0.9999)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from agebias.errors import UserError
from agebias.models.onnx_embedder import OnnxEmbedder
from agebias.models.onnx_export import export_onnx
from agebias.models.onnx_file import insightface_input_normalisation
from agebias.models.onnx_import import import_iresnet_onnx
from agebias.models.torch_embedder import TorchEmbedder
from agebias.models.registry import create_backbone

TINY = "iresnet:1,2,1,1@8,8,16,16"


def _tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_backbone(TINY)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.7, 1.3)
                m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.0, 0.4)
    model.features.weight.data.fill_(1.0)
    return model.eval()


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(1).min())


@pytest.mark.parametrize("folding,fold_bn,opset", [(True, False, 17), (False, False, 17), (True, True, 17),
                                                    (True, True, 11)])  # 11: as arcface_torch's torch2onnx
def test_export_import_round_trip(tmp_path, faces, folding, fold_bn, opset):
    model = _tiny()
    path = export_onnx(model, tmp_path / "m.onnx", opset=opset, do_constant_folding=folding, fold_batchnorm=fold_bn)
    graph = onnx.load(str(path))
    ops = [n.op_type for n in graph.graph.node]
    if fold_bn:  # the exporter folded Conv+BN: fewer BNs and anonymous initializer names
        assert ops.count("BatchNormalization") < sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert any(t.name.startswith("onnx::") for t in graph.graph.initializer)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param  # dynamic batch axis
    ort_emb = OnnxEmbedder(path, device="cpu", batch_size=3)  # batches of 3 and 2 exercise the dynamic axis
    assert (ort_emb.input_mean, ort_emb.input_std) == (127.5, 127.5)
    e_ort = ort_emb.embed(faces)
    e_torch = TorchEmbedder(model, device="cpu").embed(faces)
    imported = import_iresnet_onnx(path)
    assert imported.layers_config == (1, 2, 1, 1) and imported.widths == (8, 8, 16, 16)
    e_imp = TorchEmbedder(imported, device="cpu").embed(faces)
    assert _cos(e_ort, e_torch) >= 0.9999
    assert _cos(e_imp, e_ort) >= 0.9999
    # the imported model is a normal trainable IResNet: it saves in arcface_torch layout and reloads
    from agebias.models.checkpoints import load_backbone, save_backbone

    reloaded = load_backbone(save_backbone(imported, tmp_path / "imp.pth"))
    assert _cos(TorchEmbedder(reloaded, device="cpu").embed(faces), e_ort) >= 0.9999
    if opset == 17 and not fold_bn:  # load_backbone also takes the .onnx itself (fine-tuning from an ONNX file)
        direct = load_backbone(path, arch=TINY)
        assert _cos(TorchEmbedder(direct, device="cpu").embed(faces), e_ort) >= 0.9999
        with pytest.raises(UserError, match="not 'iresnet50'"):
            load_backbone(path, arch="iresnet50")


class _WithInputNorm(nn.Module):
    """A graph with mxnet-style normalisation baked in: raw 0..255 input, (x - 127.5) * 0.0078125."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x - 127.5) * 0.0078125)


def test_import_with_sub_mul_input_normalisation(tmp_path, faces):
    model = _tiny(1)
    path = export_onnx(_WithInputNorm(model), tmp_path / "raw.onnx")
    graph = onnx.load(str(path))
    ops = [n for n in graph.graph.node if n.op_type != "Constant"]
    assert [n.op_type for n in ops[:3]] == ["Sub", "Mul", "Conv"]
    ops[0].name, ops[1].name = "Sub_0", "Mul_1"  # the names insightface's loader looks for
    onnx.save(graph, str(path))
    assert insightface_input_normalisation(graph) == (0.0, 1.0)
    ort_emb = OnnxEmbedder(path, device="cpu")
    assert (ort_emb.input_mean, ort_emb.input_std) == (0.0, 1.0)
    e_ort = ort_emb.embed(faces)
    imported = import_iresnet_onnx(path)  # 127.5/128 scale folded into the stem conv
    e_imp = TorchEmbedder(imported, device="cpu").embed(faces)
    assert _cos(e_imp, e_ort) >= 0.9999
    # the graph's 1/128 differs from our 1/127.5: ignoring it would not reach this agreement exactly
    assert not torch.allclose(imported.conv1.weight, model.conv1.weight)


class _ExtraTail(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.relu(self.net(x))


def test_import_verifies_against_onnxruntime(tmp_path):
    """A graph with an op the importer does not map (ReLU after the embedding) is caught, not silently wrong."""
    path = export_onnx(_ExtraTail(_tiny(2)), tmp_path / "relu.onnx")
    with pytest.raises(UserError, match="disagrees with onnxruntime"):
        import_iresnet_onnx(path)
    assert import_iresnet_onnx(path, verify=False).layers_config == (1, 2, 1, 1)


def test_import_rejects_other_graphs(tmp_path):
    from agebias.models.sface import sface_path

    with pytest.raises(UserError, match="iresnet"):
        import_iresnet_onnx(sface_path())
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(UserError):
        import_iresnet_onnx(bad)
    with pytest.raises(UserError, match="not found"):
        OnnxEmbedder(tmp_path / "missing.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        OnnxEmbedder(tmp_path / "empty.onnx")
