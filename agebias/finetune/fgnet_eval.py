"""``--eval-fgnet ROOT --eval-every K``: evaluate the current backbone on FG-NET (or any dataset the evaluator
reads) during training (every K epochs and after the last one), with the evaluator's library API; its reports go to
``RUN_DIR/fgnet/epoch_NNN/``.

Faces are aligned once per run (the evaluator's defaults: landmarks when the dataset ships them, else MTCNN);
each evaluation embeds them with the model in eval mode (L2-normalised, no flip) and calls
:func:`agebias.evaluate.api.evaluate_embeddings`. The epoch's row in ``metrics.csv`` gets ``fgnet_eer``,
``fgnet_fnmr_at_fmr_1e-3`` and ``fgnet_garbe``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agebias.evaluate.api import evaluate_embeddings
from agebias.models.preprocess import to_tensor


class FgnetEvaluator:
    """Aligns the faces under ``root`` on the first call; each call embeds them with ``model`` and writes the
    evaluator's report to ``out_dir``, returning the row's ``fgnet_*`` values."""

    def __init__(self, root: str, align_cache: str | None = None):
        self.root = root
        self.align_cache = align_cache
        self.records = None
        self.crops: np.ndarray | None = None

    def _load(self) -> None:
        from agebias.data.faces import load_aligned_faces
        from agebias.data.sources import open_dataset

        scan = open_dataset(self.root)
        faces = load_aligned_faces(scan.records, detector="auto", cache_dir=self.align_cache)
        self.records, self.crops = faces.records, faces.crops

    def __call__(self, model: nn.Module, out_dir: Path, device: torch.device) -> dict[str, Any]:
        if self.crops is None:
            self._load()
        was = model.training
        model.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(self.crops), 64):
                out.append(model(to_tensor(self.crops[start:start + 64]).to(device)).float().cpu().numpy())
        model.train(was)
        emb = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        results = evaluate_embeddings(self.records, emb, out_dir, model_name=out_dir.name)
        section = results["models"][out_dir.name]
        overall = section.get("overall") or {}
        row = {"fgnet_eer": overall.get("eer"),
               "fgnet_fnmr_at_fmr_1e-3": (overall.get("fnmr_at_fmr") or {}).get("0.001"),
               "fgnet_garbe": (section.get("fairness") or {}).get("garbe")}
        return {k: (float(v["fnmr"]) if isinstance(v, dict) and "fnmr" in v else v) for k, v in row.items()
                if isinstance(v, (int, float, dict))}
