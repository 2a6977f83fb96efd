"""Finding and importing upstream research checkouts (EG3D-Age, CUSP) and their pickles, safely.

A checkout is found at ``--repo PATH`` or, by default, ``third_party/<name>`` under the current folder or under
the project root. Its code folder is the first of ``PATH``, ``PATH/<subdir>`` ... holding ``legacy.py``.
StyleGAN-family checkouts all define top-level modules named ``legacy``, ``dnnlib``, ``torch_utils`` and
``training``; importing one checkout therefore first drops any same-named modules another checkout loaded.

Network pickles execute code when loaded (Python pickle), so loading one requires ``trust_checkpoint=True``
(``--trust-checkpoint``): only load pickles from people you trust.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from agebias.errors import ModelError, UserError

STYLEGAN_MODULES = ("legacy", "dnnlib", "torch_utils", "training", "camera_utils", "metrics")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def candidate_dirs(name: str, repo: str | Path | None) -> list[Path]:
    if repo is not None:
        return [Path(repo).expanduser()]
    return [Path.cwd() / "third_party" / name, PROJECT_ROOT / "third_party" / name]


def find_code_dir(name: str, repo: str | Path | None, subdirs: Sequence[str] = ("",),
                  marker: str = "legacy.py", flag: str = "--repo") -> Path:
    """The folder holding ``marker`` inside the checkout; ``UserError`` (with what to do) when missing."""
    tried = []
    for base in candidate_dirs(name, repo):
        for sub in subdirs:
            d = base / sub if sub else base
            tried.append(d)
            if (d / marker).is_file():
                return d.resolve()
    where = repo if repo is not None else f"third_party/{name}"
    raise UserError(f"{name} checkout not found at {where} (no {marker}); clone it there or pass {flag} PATH "
                    f"(see third_party/README.md)")


def require_checkpoint(name: str, checkpoint: str | Path | None, trust: bool, what: str) -> Path:
    """Validate a pickle path and the user's trust; ``UserError`` with one clear line otherwise."""
    if checkpoint is None or str(checkpoint) == "":
        raise UserError(f"{name} needs {what}: pass --checkpoint PATH (see third_party/README.md)")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise UserError(f"{name}: checkpoint {path} not found")
    if not trust:
        raise UserError(f"{name}: {path.name} is a Python pickle, which runs code when loaded; pass "
                        f"--trust-checkpoint if you trust its origin")
    return path


def purge_modules(names: Sequence[str] = STYLEGAN_MODULES, keep_under: Path | None = None) -> None:
    """Drop imported modules named ``names`` (and their submodules) unless they come from ``keep_under``."""
    for mod_name in list(sys.modules):
        root = mod_name.split(".")[0]
        if root not in names:
            continue
        mod = sys.modules.get(mod_name)
        file = getattr(mod, "__file__", None) or ""
        if keep_under is not None and file and Path(file).resolve().is_relative_to(keep_under):
            continue
        del sys.modules[mod_name]


def import_from_checkout(code_dir: Path, module: str) -> ModuleType:
    """Import ``module`` (e.g. ``legacy``) from ``code_dir``, which is put first on ``sys.path``."""
    code_dir = Path(code_dir).resolve()
    purge_modules(keep_under=code_dir)
    if str(code_dir) in sys.path:
        sys.path.remove(str(code_dir))
    sys.path.insert(0, str(code_dir))
    importlib.invalidate_caches()
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"cannot import {module} from the checkout {code_dir}: {err} "
                        f"(install the checkout's requirements)") from err


def load_g_ema(name: str, code_dir: Path, checkpoint: Path, requirements: str) -> Any:
    """The ``G_ema`` network of an upstream training snapshot, read with the checkout's ``legacy.load_network_pkl``
    (which runs the pickle's code: call :func:`require_checkpoint` first). ``requirements``: what to install when
    the pickle's code imports a module that is missing here."""
    import_from_checkout(code_dir, "dnnlib")
    legacy = import_from_checkout(code_dir, "legacy")
    try:
        with open(checkpoint, "rb") as fh:
            data = legacy.load_network_pkl(fh)
    except ImportError as err:  # the pickle's embedded code imports the checkout's requirements
        raise ModelError(f"{name}: loading {checkpoint.name} needs {err.name or err} ({requirements})") from None
    if not isinstance(data, dict) or "G_ema" not in data:
        raise ModelError(f"{name}: {checkpoint} holds no 'G_ema' network")
    return data["G_ema"]


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def pick_device(device: str | None) -> str:
    """``None``/``"auto"`` -> ``cuda`` when available, else ``cpu``; a CUDA request without CUDA is an error."""
    from agebias.devices import resolve_device

    return str(resolve_device(device))


def doctor_rows(name: str, repo, checkpoint, subdirs: Sequence[str], missing_checkpoint_hint: str
                ) -> tuple[list[tuple[str, bool, str]], Path | None]:
    """``agebias doctor`` rows for a checkout and a checkpoint; also returns the code folder (None if not found)."""
    rows: list[tuple[str, bool, str]] = []
    code = None
    try:
        code = find_code_dir(name, repo, subdirs=subdirs)
        rows.append(("checkout", True, str(code)))
    except UserError as err:
        rows.append(("checkout", False, str(err)))
    if checkpoint:
        ok = Path(checkpoint).is_file()
        rows.append(("checkpoint", ok, str(checkpoint) if ok else f"{checkpoint} not found"))
    else:
        rows.append(("checkpoint", False, missing_checkpoint_hint))
    return rows, code
