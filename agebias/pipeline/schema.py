"""The experiment file (TOML): its sections, keys, types and defaults, and up-front validation.

Every key of every section is declared here; an unknown key, a value of the wrong type or a path that does not
exist ends in one clear line (a :class:`UserError`) before any stage runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agebias.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STAGES = ("generate", "finetune", "evaluate", "report")


@dataclass(frozen=True)
class Key:
    types: tuple[type, ...]
    default: Any
    help: str = ""
    path: bool = False  # a filesystem path that must exist when non-empty


def _k(types, default, help="", path=False) -> Key:
    return Key(types if isinstance(types, tuple) else (types,), default, help, path)


_NUM = (int, float)
SCHEMA: dict[str, dict[str, Key]] = {
    "experiment": {
        "name": _k(str, "experiment", "short name used in reports"),
        "description": _k(str, "", "one paragraph: what this run reproduces"),
        "out": _k(str, "", "output folder (default runs/<name>); `agebias run --out` overrides it"),
        "seed": _k(int, 0, "seed for every random choice"),
        "device": _k(str, "auto", "auto, cpu, cuda or cuda:N"),
    },
    "generate": {
        "enabled": _k(bool, True, "false: use `dataset` below as the training set"),
        "method": _k(str, "cardioid", "generator name (agebias generate --method)"),
        "sources": _k(str, "", "folder of source photos, or 'package-photos' for the photos shipped in installed packages"),
        "all_faces": _k(bool, True, "one identity per detected face in each source photo"),
        "aligned_sources": _k(bool, False, "sources are already 112x112 aligned crops"),
        "identities": _k(int, 0, "number of seed identities (unconditional generators such as eg3d)"),
        "ages": _k(list, [], "target ages in years, e.g. [3, 8, 14]"),
        "age_bins": _k(list, [], "age bins such as ['0-5', '5-10'] (one or more random ages per bin)"),
        "per_bin": _k(int, 1, "random ages drawn per bin"),
        "checkpoint": _k(str, "", "generator checkpoint (eg3d, cusp)", path=True),
        "repo": _k(str, "", "generator checkout (eg3d, cusp)", path=True),
        "trust_checkpoint": _k(bool, False, "allow loading pickles that execute code (eg3d, cusp)"),
        "batch_size": _k(int, 8, "images per generator call"),
        "qc": _k(bool, False, "reject outputs that lost their identity or their face"),
        "qc_min_similarity": _k(_NUM, 0.3, "QC: minimum cosine to the identity's reference"),
        "dataset": _k(str, "", "an existing training set (generated layout or manifest) when enabled = false", path=True),
        "options": _k(dict, {}, "method-specific options (e.g. truncation_psi, strength, prompt)"),
    },
    "finetune": {
        "enabled": _k(bool, True, "false: evaluate only"),
        "backbone": _k(str, "", "a .pth/.safetensors/.onnx file, or an architecture name with init = 'random'"),
        "init": _k(str, "pretrained", "pretrained (load `backbone`) or random (build `backbone` by name)"),
        "arch": _k(str, "", "architecture when it cannot be inferred from the checkpoint"),
        "aligned": _k(bool, True, "training images are already aligned 112x112 crops"),
        "frozen_layers": _k(str, "1,2,3", "layers kept fixed: stem,1,2,3,4 (freezing 1 freezes the stem)"),
        "head": _k(str, "arcface", "arcface, cosface or combined"),
        "scale": _k(_NUM, 64.0, "logit scale s"),
        "margin": _k(_NUM, 0.5, "angular margin (arcface) or cosine margin (cosface)"),
        "optimizer": _k(str, "sgd", "sgd or adamw"),
        "lr": _k(_NUM, 0.01, "learning rate"),
        "momentum": _k(_NUM, 0.9, "SGD momentum"),
        "weight_decay": _k(_NUM, 5e-4, "weight decay"),
        "scheduler": _k(str, "none", "none, cosine or step"),
        "warmup_epochs": _k(int, 0, "linear warm-up epochs"),
        "epochs": _k(int, 10, "training epochs"),
        "batch_size": _k(int, 25, "batch size"),
        "val_fraction": _k(_NUM, 0.2, "share of identities held out for validation"),
        "precision": _k(str, "fp32", "fp32, bf16 or fp16"),
        "mitigation": _k(str, "", "bias-mitigation method NAME[:key=value,...]"),
        "age_bins": _k(str, "", "age groups for mitigation methods, e.g. 0-12,13-19,20-39,40-69"),
        "extra_data": _k(list, [], "more training sources as 'PATH[:WEIGHT]' (e.g. real images mixed in)"),
        "trust_checkpoint": _k(bool, False, "allow a full-module pickle as backbone"),
        "focal_gamma": _k(_NUM, 0.0, "focal-loss gamma on the head's logits (0 = plain cross-entropy)"),
        "augment": _k(str, "none", "none or flip (random horizontal flips; disables the frozen-prefix cache)"),
        "detector": _k(str, "auto", "face alignment of unaligned training images: auto, mtcnn, landmarks, none"),
    },
    "evaluate": {
        "dataset": _k(str, "generated", "generated (the generated set), fgnet, or a manifest / folder path"),
        "root": _k(str, "datasets/fgnet", "FG-NET folder when dataset = fgnet"),
        "models": _k(list, ["baseline", "finetuned"], "models to compare: baseline, finetuned, sface, or a model file"),
        "protocols": _k(list, ["all-pairs"], "all-pairs and/or msc (the MSc thesis protocol)"),
        "age_bins": _k(str, "", "age groups, e.g. 0-12,13-19,20-39,40-69 (default: the evaluator's FG-NET bins)"),
        "target_fmr": _k(_NUM, 1e-3, "operating point: global threshold at this FMR"),
        "alpha": _k(_NUM, 0.5, "weight of FMR against FNMR in GARBE, FDR and IR"),
        "formats": _k(list, ["png"], "plot formats: png, pdf, svg"),
        "detector": _k(str, "auto", "face alignment: auto, mtcnn, landmarks or none"),
        "aligned": _k(bool, False, "test images are already aligned 112x112 crops"),
        "flip": _k(bool, False, "fuse each embedding with that of the mirrored face"),
    },
}


@dataclass
class Experiment:
    """A validated experiment file: ``sections[name][key]`` always holds a value (defaults filled in)."""

    path: Path
    sections: dict[str, dict[str, Any]]

    @property
    def name(self) -> str:
        return self.sections["experiment"]["name"]

    def section(self, name: str) -> dict[str, Any]:
        return self.sections[name]


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment TOML file; raises :class:`UserError` with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"experiment file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML: {err}") from None
    return validate(raw, path)


def validate(raw: dict[str, Any], path: Path) -> Experiment:
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise UserError(f"{path}: unknown section [{unknown[0]}]; sections are: {', '.join(SCHEMA)}")
    base = path.parent
    sections: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise UserError(f"{path}: [{section}] must be a table")
        bad = sorted(set(given) - set(keys))
        if bad:
            raise UserError(f"{path}: unknown key '{bad[0]}' in [{section}]; known keys: {', '.join(keys)}")
        values: dict[str, Any] = {}
        for key, spec in keys.items():
            value = given.get(key, spec.default)
            if not _type_ok(value, spec.types):
                names = " or ".join(t.__name__ for t in spec.types)
                raise UserError(f"{path}: [{section}] {key} must be {names}, got {type(value).__name__} {value!r}")
            if spec.path and value and key in given:
                resolved = _resolve(value, base)
                if not resolved.exists():
                    raise UserError(f"{path}: [{section}] {key} = '{value}' does not exist (the file's header says what to provide)")
                value = str(resolved)
            values[key] = value
        sections[section] = values
    _check_choices(sections, path)
    return Experiment(path=path, sections=sections)


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _resolve(value: str, base: Path) -> Path:
    """Paths are taken relative to the current folder first, then to the experiment file's folder."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return base / p


def _check_choices(sections: dict[str, dict[str, Any]], path: Path) -> None:
    gen, ft, ev = sections["generate"], sections["finetune"], sections["evaluate"]
    if gen["enabled"] and not (gen["ages"] or gen["age_bins"]):
        raise UserError(f"{path}: [generate] needs `ages` or `age_bins`")
    if gen["enabled"] and not (gen["sources"] or gen["identities"]):
        raise UserError(f"{path}: [generate] needs `sources` (photos) or `identities` (seeds)")
    if gen["sources"] and gen["sources"] != "package-photos":
        src = _resolve(gen["sources"], path.parent)
        if not src.exists():
            raise UserError(f"{path}: [generate] sources = '{gen['sources']}' does not exist")
        gen["sources"] = str(src)
    if not gen["enabled"] and ft["enabled"] and not gen["dataset"]:
        raise UserError(f"{path}: [generate] enabled = false needs `dataset` (the training set)")
    if ft["enabled"]:
        if ft["init"] not in ("pretrained", "random"):
            raise UserError(f"{path}: [finetune] init must be 'pretrained' or 'random', got '{ft['init']}'")
        if not ft["backbone"]:
            raise UserError(f"{path}: [finetune] needs `backbone` (a backbone.pth / .onnx file, or a name with init = 'random')")
        if ft["init"] == "pretrained":
            bb = _resolve(ft["backbone"], path.parent)
            if not bb.exists() and "/" not in ft["backbone"] and not ft["backbone"].endswith((".pth", ".onnx", ".safetensors")):
                pass  # a registered embedder name (e.g. sface) is checked when the stage runs
            elif not bb.exists():
                raise UserError(f"{path}: [finetune] backbone '{ft['backbone']}' does not exist")
            else:
                ft["backbone"] = str(bb)
    for proto in ev["protocols"]:
        if proto not in ("all-pairs", "msc"):
            raise UserError(f"{path}: [evaluate] unknown protocol '{proto}'; use all-pairs and/or msc")
    for fmt in ev["formats"]:
        if fmt not in ("png", "pdf", "svg"):
            raise UserError(f"{path}: [evaluate] unknown plot format '{fmt}'; use png, pdf or svg")
    if not 0 < float(ev["target_fmr"]) < 1:
        raise UserError(f"{path}: [evaluate] target_fmr must be between 0 and 1")
    if ev["dataset"] == "fgnet":
        root = _resolve(ev["root"], path.parent)
        if not root.exists():
            raise UserError(
                f"{path}: FG-NET not found at '{ev['root']}': get it from its distributor and unpack it there "
                "(see datasets/README.md)")
        ev["root"] = str(root)
    elif ev["dataset"] not in ("generated",):
        ds = _resolve(ev["dataset"], path.parent)
        if not ds.exists():
            raise UserError(f"{path}: [evaluate] dataset '{ev['dataset']}' does not exist")
        ev["dataset"] = str(ds)
