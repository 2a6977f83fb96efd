"""Face-recognition backbones, heads, checkpoints, ONNX and embedders.

Modules, each depending only on those listed before it: ``iresnet``, ``sface_net`` (SFace's network in torch),
``timm_backbone``, ``registry`` (backbones by name), ``heads``, ``preprocess``, ``embedder_base``, ``torch_embedder``,
``onnx_file``, ``onnx_embedder`` (onnxruntime), ``onnx_export``, ``onnx_dequantize`` (exact ``DequantizeLinear`` of
quantised weights), ``onnx_import`` (ONNX graph -> torch iresnet), ``sface`` (the shipped SFace ONNX),
``sface_import`` (SFace ONNX -> torch SFaceNet), ``onnx_backbone`` (either importer, by graph structure),
``checkpoints`` and ``embedder`` (``build_embedder``: any spec -> an embedder).
"""

from agebias.models.iresnet import IResNet, iresnet18, iresnet34, iresnet50, iresnet100, iresnet200
from agebias.models.registry import create_backbone, list_backbones, register_backbone

__all__ = [
    "IResNet", "iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200",
    "create_backbone", "list_backbones", "register_backbone",
]
