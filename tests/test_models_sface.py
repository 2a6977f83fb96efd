"""SFace as a torch module: exact dequantisation of its int8 block-quantised weights, the import into SFaceNet, parity
with onnxruntime on the original quantised file, and checkpoints that load back as SFace."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from agebias.errors import ModelError
from agebias.models.checkpoints import infer_arch, load_backbone, save_backbone
from agebias.models.embedder import build_embedder
from agebias.models.onnx_backbone import import_onnx_backbone
from agebias.models.onnx_dequantize import dequantize_linear, dequantize_weights, dequantized_constants
from agebias.models.sface import sface_path
from agebias.models.onnx_import import worst_cosine
from agebias.models.sface_import import load_pretrained_sface
from agebias.models.sface_net import SFaceNet
from agebias.models.torch_embedder import TorchEmbedder


@pytest.fixture(scope="module")
def sface() -> SFaceNet:
    return load_pretrained_sface()


def _ort_dequantize(nodes, initializers):
    """Run DequantizeLinear nodes in onnxruntime (no graph optimisation) and return their outputs."""
    import onnxruntime as ort

    outputs = [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in nodes]
    model = helper.make_model(helper.make_graph(nodes, "dq", [], outputs, initializers),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {})


def test_dequantize_linear_by_hand():
    q = np.array([[1, -2, 3, 4, -5], [0, 6, -7, 8, 9]], np.int8)
    # blocked along axis 1, block 2: scale/zero point per (row, column // 2), 3 blocks for 5 columns
    scale = np.array([[0.5, 2.0, 0.25], [1.0, 0.1, 4.0]], np.float32)
    zp = np.array([[1, 0, -1], [0, 2, 0]], np.int8)
    expected = np.array([[0.0, -1.5, 6.0, 8.0, -1.0], [0.0, 6.0, (-7 - 2) * np.float32(0.1), (8 - 2) * np.float32(0.1),
                                                        36.0]], np.float32)
    np.testing.assert_array_equal(dequantize_linear(q, scale, zp, axis=1, block_size=2), expected)
    # per axis (axis 0) and per tensor; no zero point means 0
    np.testing.assert_array_equal(dequantize_linear(q, np.array([2.0, 0.5], np.float32), axis=0),
                                  q.astype(np.float32) * np.array([[2.0], [0.5]], np.float32))
    np.testing.assert_array_equal(dequantize_linear(q, np.float32(0.5), np.int8(-1)), (q.astype(np.float32) + 1) * 0.5)
    # blocked along axis 0 with a negative axis index (-2), block 3 > rows: one block
    np.testing.assert_array_equal(dequantize_linear(q, np.full((1, 5), 0.5, np.float32), axis=-2, block_size=3),
                                  q.astype(np.float32) * 0.5)
    with pytest.raises(ModelError, match="blocked scale shape"):
        dequantize_linear(q, scale[:, :2], axis=1, block_size=2)


def test_dequantize_matches_onnxruntime_on_a_blocked_node():
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (4, 70), dtype=np.int8)
    scale = rng.uniform(0.001, 0.1, (4, 3)).astype(np.float32)
    zp = rng.integers(-20, 20, (4, 3), dtype=np.int8)
    inits = [numpy_helper.from_array(q, "q"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")]
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1, block_size=32)
    (ort_y,) = _ort_dequantize([node], inits)
    np.testing.assert_array_equal(dequantize_linear(q, scale, zp, axis=1, block_size=32), ort_y)


def test_sface_weights_dequantised_bit_identical_to_onnxruntime():
    model = onnx.load(str(sface_path()))
    nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(nodes) == 29 and {a.name for n in nodes for a in n.attribute} == {"axis", "block_size"}
    used = {i for n in nodes for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    ours = dequantized_constants(model, {t.name: numpy_helper.to_array(t) for t in inits})
    for node, ort_y in zip(nodes, _ort_dequantize(nodes, inits), strict=True):
        assert ours[node.output[0]].dtype == np.float32
        np.testing.assert_array_equal(ours[node.output[0]], ort_y, err_msg=node.name)
    # the float graph (weights dequantised, DequantizeLinear gone) computes the same embeddings
    floats = dequantize_weights(model)
    assert not any(n.op_type == "DequantizeLinear" for n in floats.graph.node)
    assert not any(t.data_type == TensorProto.INT8 for t in floats.graph.initializer)


def test_import_matches_onnxruntime_on_the_quantised_file(sface, tmp_path):
    assert isinstance(sface, SFaceNet) and not sface.training
    assert [name for name, _ in sface.stages()] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert sface.stem.input_mean.tolist() == [127.5] * 3 and sface.stem.input_scale.tolist() == [1 / 128] * 3
    assert sum(p.numel() for p in sface.parameters()) == 9_642_880
    faces = np.random.default_rng(1).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    assert worst_cosine(sface, sface_path(), faces, input_mean=0.0, input_std=1.0) > 0.99999  # SFace's RGB 0..255
    # `--backbone path/to/sface.onnx`: the ONNX importer recognises the SFace layout
    assert isinstance(import_onnx_backbone(sface_path(), verify=False), SFaceNet)
    assert isinstance(load_backbone("sface"), SFaceNet) and infer_arch(sface.state_dict()) == "sface"
    with pytest.raises(ModelError, match="not 'iresnet50'"):
        load_backbone("sface", arch="iresnet50")


@pytest.mark.slow
def test_parity_on_real_faces(sface, tmp_path):
    """The acceptance check: torch SFace against onnxruntime on the original int8 file, real aligned faces (the
    package photos, MTCNN-aligned, and their mirror images): worst cosine >= 0.999 (measured: 0.9999999)."""
    from helpers_faces import astronaut_path, grace_hopper_path, insightface_image, tom_hanks_aligned
    from PIL import Image

    from agebias.data.faces import load_aligned_faces
    from agebias.data.records import FaceRecord

    records = [FaceRecord(insightface_image("t1.jpg"), "t1"), FaceRecord(grace_hopper_path(), "hopper"),
               FaceRecord(astronaut_path(tmp_path), "astronaut")]
    found = load_aligned_faces(records, detector="mtcnn", all_faces=True, cache_dir=False, progress=None)
    tom = np.asarray(Image.open(tom_hanks_aligned()).convert("RGB"))
    crops = np.concatenate([tom[None], found.crops])
    assert len(crops) >= 9
    crops = np.concatenate([crops, crops[:, :, ::-1]])
    reference = build_embedder("sface", device="cpu").embed(crops)  # the shipped model as the demo runs it
    torch_emb = TorchEmbedder(sface, device="cpu", batch_size=8).embed(crops)
    cosines = (reference * torch_emb).sum(1)
    assert cosines.min() >= 0.999
    assert np.abs(reference - torch_emb).max() < 1e-4


def test_checkpoint_round_trip_loads_as_sface(sface, tmp_path):
    sface = copy.deepcopy(sface)
    with torch.no_grad():  # a changed statistic must come back
        sface.layer4[1].pw.bn.running_mean.add_(0.01)
    path = save_backbone(sface, tmp_path / "backbone.pth")
    loaded = load_backbone(path)
    assert isinstance(loaded, SFaceNet)
    state = sface.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    faces = np.random.default_rng(2).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    expected = TorchEmbedder(sface, device="cpu").embed(faces)
    for backend in ("torch", "onnxruntime"):
        got = build_embedder(path, device="cpu", backend=backend)
        assert got.dim == 128
        assert (got.embed(faces) * expected).sum(1).min() > 0.9999


def test_untrained_architecture_and_bad_graph(tmp_path):
    from agebias.models.registry import create_backbone
    from agebias.models.sface_import import import_sface_onnx

    net = create_backbone("sface").eval()
    assert isinstance(net, SFaceNet) and net(torch.zeros(2, 3, 112, 112)).shape == (2, 128)
    # a grouped-conv graph that is not SFace's layout is refused in one line
    w = numpy_helper.from_array(np.ones((3, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], group=3, pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    bad = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(bad))
    with pytest.raises(ModelError, match="not an importable SFace ONNX"):
        import_sface_onnx(bad)


@pytest.mark.parametrize("fold", [False, True])
def test_toolkit_export_of_sface_imports_back(sface, tmp_path, fold):
    """A fine-tuned SFace exported by the toolkit (input ``input.1`` in the toolkit's convention, BatchNorm kept or
    folded) imports back as SFaceNet with the same function, and runs as an ONNX embedder."""
    from agebias.models.onnx_export import export_onnx

    changed = copy.deepcopy(sface)
    with torch.no_grad():
        changed.layer4[0].pw.conv.weight.mul_(1.1)
    path = export_onnx(changed, tmp_path / "model.onnx", fold_batchnorm=fold)
    back = import_onnx_backbone(path)
    assert isinstance(back, SFaceNet)
    assert back.stem.input_mean.tolist() == pytest.approx([127.5] * 3)
    faces = np.random.default_rng(3).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    expected = TorchEmbedder(changed, device="cpu").embed(faces)
    assert (TorchEmbedder(back, device="cpu").embed(faces) * expected).sum(1).min() > 0.9999
    assert (build_embedder(path, device="cpu").embed(faces) * expected).sum(1).min() > 0.9999
