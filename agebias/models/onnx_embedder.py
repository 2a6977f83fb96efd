"""Run an insightface-style recognition ONNX in onnxruntime as an embedder.

Input convention: see :mod:`agebias.models.onnx_file` (NCHW float32 RGB, ``(x - mean) / std``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch

from agebias.devices import resolve_device
from agebias.errors import ModelError
from agebias.models.embedder_base import BatchedEmbedder
from agebias.models.onnx_file import clean_inputs, input_normalisation, read_onnx


def _providers(device: torch.device) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxEmbedder(BatchedEmbedder):
    """Run a recognition ONNX (NCHW float RGB input ``(x - mean) / std``) in onnxruntime.

    ``input_mean``/``input_std`` default to insightface's rule (:func:`agebias.models.onnx_file.input_normalisation`).
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None, batch_size: int = 64,
                 flip: bool = False, input_mean: float | None = None, input_std: float | None = None,
                 name: str | None = None):
        import onnxruntime as ort  # a core dependency, imported here only to keep `import agebias` light

        super().__init__(batch_size=batch_size, flip=flip)
        path = Path(path)
        model = read_onnx(path)
        if input_mean is None or input_std is None:
            mean, std = input_normalisation(path, model)
            input_mean = mean if input_mean is None else input_mean
            input_std = std if input_std is None else input_std
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        self.device = resolve_device(device)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._options, self._providers = options, _providers(self.device)
        clean = clean_inputs(copy.deepcopy(model))
        self.session = self._session(clean, path)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise ModelError(f"{path}: expected a recognition model with NCHW 3-channel input, got input shape {shape}")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.input_size = shape[2] if isinstance(shape[2], int) and shape[2] > 0 else 112
        if self.fixed_batch == 1:
            self._try_dynamic_batch(clean, path)
        self.output_name = self.session.get_outputs()[0].name
        self.name = name or path.name
        self.path = path
        self.dim = int(self._forward(np.zeros((1, self.input_size, self.input_size, 3), np.uint8)).shape[1])

    def _session(self, model, path: Path):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(model.SerializeToString(), sess_options=self._options,
                                        providers=self._providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime reports unsupported graphs with its own exception types
            raise ModelError(f"{path}: onnxruntime cannot run this model ({str(err).splitlines()[0][:160]})") from None

    def _try_dynamic_batch(self, model, path: Path) -> None:
        """Files exported with batch 1 (e.g. SFace) often run any batch: relax the axis when results agree."""
        relaxed = copy.deepcopy(model)
        for value in (relaxed.graph.input[0], relaxed.graph.output[0]):
            dims = value.type.tensor_type.shape.dim
            if dims:
                dims[0].dim_param = "batch"
        try:
            session = self._session(relaxed, path)
            out_name = session.get_outputs()[0].name
            x = np.random.default_rng(0).uniform(-1, 1, (2, 3, self.input_size, self.input_size)).astype(np.float32)
            both = session.run([out_name], {self.input_name: x})[0]
            single = np.concatenate([self.session.run([out_name], {self.input_name: x[i:i + 1]})[0] for i in range(2)])
        except Exception:  # noqa: BLE001 - any failure of the relaxed graph means: keep the fixed batch
            return
        if both.shape == single.shape and np.allclose(both, single, rtol=1e-4, atol=1e-4 * np.abs(single).max()):
            self.session, self.fixed_batch = session, None

    def _blob(self, faces: np.ndarray) -> np.ndarray:
        x = (faces.astype(np.float32) - np.float32(self.input_mean)) / np.float32(self.input_std)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def _forward(self, faces: np.ndarray) -> np.ndarray:
        blob = self._blob(faces)
        if self.fixed_batch is None:
            out = self.session.run([self.output_name], {self.input_name: blob})[0]
        else:
            step = self.fixed_batch
            parts = []
            for i in range(0, len(blob), step):
                chunk = blob[i:i + step]
                pad = step - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)])
                parts.append(self.session.run([self.output_name], {self.input_name: chunk})[0][:step - pad])
            out = np.concatenate(parts)
        return np.asarray(out, dtype=np.float32).reshape(len(faces), -1)
