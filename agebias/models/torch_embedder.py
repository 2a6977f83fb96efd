"""A torch backbone as an embedder (arcface_torch input convention: ``(x/255-0.5)/0.5`` RGB NCHW)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from agebias.devices import resolve_device
from agebias.models.embedder_base import BatchedEmbedder
from agebias.models.iresnet import IResNet
from agebias.models.preprocess import to_tensor


class TorchEmbedder(BatchedEmbedder):
    """A torch backbone taking ``(x/255-0.5)/0.5`` RGB NCHW input (arcface_torch convention).

    The model is put in eval mode and moved to ``device`` in place (and converted to channels_last when asked);
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forward under autocast, outputs stay float32.
    """

    def __init__(self, model: nn.Module, name: str = "torch", device: str | torch.device | None = None,
                 batch_size: int = 64, flip: bool = False, channels_last: bool = False,
                 autocast_dtype: torch.dtype | None = None):
        super().__init__(batch_size=batch_size, flip=flip)
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self.autocast_dtype = autocast_dtype
        self.model = model.eval().to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.name = name
        self.dim = int(model.num_features) if isinstance(model, IResNet) else self._probe_dim()

    def _probe_dim(self) -> int:
        return int(self._forward(np.zeros((1, self.input_size, self.input_size, 3), np.uint8)).shape[1])

    @torch.inference_mode()
    def _forward(self, faces: np.ndarray) -> np.ndarray:
        x = to_tensor(faces).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is not None:
            with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
                y = self.model(x)
        else:
            y = self.model(x)
        return y.float().cpu().numpy()
