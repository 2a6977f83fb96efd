"""Cache of the frozen prefix's outputs (e.g. layer3's feature maps when stem + layer1..3 are frozen).

A frozen prefix is a fixed function of the image (no gradient, BatchNorms in eval mode), so without random
augmentation its output can be computed once and read back every epoch: training is then the same as recomputing
it each step, at a fraction of the cost. Storage:

- ``fp32`` (default): bit-exact with recomputing. ``bf16`` and ``fp16`` halve the memory; ``bf16`` is exact as
  well when the prefix's outputs are bf16 already (autocast with ``--precision bf16``: iresnet's stages end in bf16
  sums), else both round the features (training then differs slightly from the uncached run), so they are used only
  on request. bf16 values are kept as their 16-bit patterns (numpy has no bf16 type).
- RAM when the cache is small (``auto``: at most 4 GiB and at most a third of the available memory), else a disk
  ``np.memmap`` (``RUN_DIR/cache/*.f32``, ``.bf16``, ``.f16``), removed at the end of the run. iresnet50 with stem
  + layer1..3 frozen stores 256x14x14 values per image: 196 KiB in fp32 (11,200 images: 2.1 GiB), 98 KiB in bf16.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from agebias.progress import bar

RAM_LIMIT_BYTES = 4 << 30
# element type -> (numpy storage type, disk file suffix); bf16 is stored as its bit pattern in uint16
STORAGE = {"fp32": (np.float32, "f32"), "bf16": (np.uint16, "bf16"), "fp16": (np.float16, "f16")}


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable``; 8 GiB if unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def choose_storage(n_bytes: int, mode: str = "auto") -> str:
    """``ram`` or ``disk`` for a cache of ``n_bytes`` (``mode`` ram/disk forces it)."""
    if mode in ("ram", "disk"):
        return mode
    return "ram" if n_bytes <= min(RAM_LIMIT_BYTES, available_memory() // 3) else "disk"


class FeatureCache:
    """Prefix outputs for N images, shape ``(N, C, H, W)``, stored as ``dtype`` (see :data:`STORAGE`); :meth:`get`
    returns float32 tensors."""

    def __init__(self, data: np.ndarray, storage: str, path: Path | None = None, dtype: str = "fp32"):
        self.data = data
        self.storage = storage
        self.path = path
        self.dtype = dtype

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def get(self, idx: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64)
        sorted_ok = self.storage == "ram"
        block = torch.from_numpy(np.ascontiguousarray(
            self.data[idx] if sorted_ok else self.data[np.sort(idx)][np.argsort(np.argsort(idx))]))
        if self.dtype == "bf16":
            block = block.view(torch.bfloat16)
        return block.to(device=device, dtype=torch.float32)

    def close(self) -> None:
        """Drop the data; a disk cache's file is deleted."""
        path, self.data = self.path, np.zeros((0,), np.float32)
        if path is not None:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


def build_cache(prefix: Callable[[torch.Tensor], torch.Tensor], images: Callable[[np.ndarray], torch.Tensor],
                n: int, *, sample_shape: tuple[int, ...], dtype: str = "fp32", mode: str = "auto",
                folder: Path | None = None, name: str = "train", batch_size: int = 64,
                device: torch.device | str = "cpu", autocast=None, desc: str = "caching frozen layers") -> FeatureCache:
    """Run ``prefix`` (no grad) over images ``0..n-1`` (``images(idx) -> input tensor``) and store the outputs."""
    np_dtype, suffix = STORAGE[dtype]
    n_bytes = int(np.prod(sample_shape)) * np.dtype(np_dtype).itemsize * n
    storage = choose_storage(n_bytes, mode)
    path = None
    if storage == "ram":
        data = np.empty((n, *sample_shape), dtype=np_dtype)
    else:
        folder = Path(folder or ".")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}-{os.getpid()}.{suffix}"
        data = np.lib.format.open_memmap(path, mode="w+", dtype=np_dtype, shape=(n, *sample_shape))
    with torch.no_grad(), bar(n, desc, unit="img") as progress:
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(n, start + batch_size))
            with autocast() if autocast is not None else nullcontext():
                out = prefix(images(idx).to(device))
            data[start:start + len(idx)] = _stored(out, dtype)
            progress.update(len(idx))
    if isinstance(data, np.memmap):
        data.flush()
    return FeatureCache(data, storage, path, dtype)


def _stored(out: torch.Tensor, dtype: str) -> np.ndarray:
    """Prefix outputs as the cache stores them (``bf16``: the uint16 bit patterns of the rounded values)."""
    if dtype == "bf16":
        return out.to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)
    return out.float().cpu().numpy().astype(STORAGE[dtype][0], copy=False)
