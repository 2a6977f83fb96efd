"""The experiment file (TOML), derived from the stages' settings dataclasses.

Tables and where their keys are defined:

- ``[experiment]``: :class:`ExperimentSection` (name, description, out, seed, device; seed and device apply to
  every stage);
- ``[generate]``: :class:`GenerateSection` (enabled, dataset) + :class:`generators.settings.GenerateSettings`
  (everything ``agebias generate`` takes except out, seed and device); ``sources = "package-photos"`` means the
  face photos shipped inside installed packages;
- ``[finetune]``: :class:`FinetuneSection` (enabled, extra_data) + :class:`agebias.finetune.config.FinetuneConfig`
  (except data, out, seed, device and resume, which the pipeline sets);
- ``[evaluate]``: :class:`EvaluateSection` (dataset, root, models, protocols, identities) +
  :class:`agebias.evaluate.settings.EvalSettings` (except protocol and seed) +
  :class:`agebias.evaluate.settings.EmbedSettings` (except batch_size and device).

A key left out takes the dataclass default, the same default as the command line's. Relative paths are taken
relative to the experiment file's folder (so a file runs the same from any working directory). Every problem ends
in one line naming the file and table, before any stage runs.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agebias.data.fgnet import DEFAULT_ROOT as FGNET_ROOT
from agebias.errors import SettingsError, UserError
from agebias.evaluate.settings import PROTOCOLS, EmbedSettings, EvalSettings
from agebias.finetune.config import FinetuneConfig
from agebias.settings import Settings, is_required, setting, settings_fields
from generators.settings import PACKAGE_PHOTOS, GenerateSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STAGES = ("generate", "finetune", "evaluate", "report")


@dataclass
class ExperimentSection(Settings):
    stage = "experiment"

    name: str = setting("experiment", help="short name used in reports")
    description: str = setting("", help="one paragraph: what this run reproduces")
    out: str = setting("", help="output folder, relative to this file (default runs/<name> in the working "
                                "directory); `agebias run --out` overrides it")
    seed: int = setting(0, help="seed of every random choice of every stage")
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N, for every stage")


@dataclass
class GenerateSection(Settings):
    stage = "generate"

    enabled: bool = setting(True, help="false: train on `dataset` instead of generating")
    dataset: str | None = setting(None, help="an existing training set (generated layout or manifest) when "
                                             "enabled = false")


@dataclass
class FinetuneSection(Settings):
    stage = "finetune"

    enabled: bool = setting(True, help="false: evaluate only")
    extra_data: list[str] = setting(help="more training sources 'PATH[:WEIGHT]' mixed with the generated set",
                                    default_factory=list)


@dataclass
class EvaluateSection(Settings):
    stage = "evaluate"

    dataset: str = setting("generated", help="generated (the generated set), fgnet, or a manifest / folder path")
    root: str = setting(FGNET_ROOT, help="FG-NET folder when dataset = fgnet")
    models: list[str] = setting(help="models to compare: baseline (the finetune backbone), finetuned, sface, or a "
                                     "model file", default_factory=lambda: ["baseline", "finetuned"])
    protocols: list[str] = setting(help="all-pairs and/or msc (the MSc thesis protocol)", choices=PROTOCOLS,
                                   default_factory=lambda: ["all-pairs"])
    identities: str = setting("all", help="all: every identity of the evaluation set; held-out: only the identities "
                                          "the fine-tuning run held out (never trained on; its seeded split, "
                                          "[finetune] val_fraction), with the fine-tuned model of the final epoch "
                                          "(no epoch chosen on them); needs the training set as evaluation set",
                              choices=("all", "held-out"))


# table -> (pipeline-only class, [(settings class, keys the pipeline sets itself)])
TABLES: dict[str, tuple[type[Settings], list[tuple[type[Settings], tuple[str, ...]]]]] = {
    "experiment": (ExperimentSection, []),
    "generate": (GenerateSection, [(GenerateSettings, ("out", "seed", "device"))]),
    "finetune": (FinetuneSection, [(FinetuneConfig, ("data", "out", "seed", "device", "resume"))]),
    "evaluate": (EvaluateSection, [(EvalSettings, ("protocol", "seed")), (EmbedSettings, ("batch_size", "device"))]),
}
# settings that name files or folders: relative values are taken relative to the experiment file
PATH_KEYS = {
    "experiment": ("out",),
    "generate": ("dataset", "sources", "checkpoint", "repo", "calibration"),
    "finetune": ("backbone", "extra_data", "eval_fgnet", "cache_dir", "arch"),
    "evaluate": ("root", "dataset", "models"),
}
MAYBE_PATHS = {"backbone", "arch", "dataset", "models", "checkpoint"}  # may also be a name (sface, a hub id, ...)


def table_keys(table: str) -> dict[str, type[Settings]]:
    """Every key of a table -> the settings class that defines it."""
    own, stages = TABLES[table]
    keys = {f.name: own for f in settings_fields(own, toml=True)}
    for cls, set_by_pipeline in stages:
        for f in settings_fields(cls, toml=True):
            if f.name not in set_by_pipeline:
                keys.setdefault(f.name, cls)
    return keys


@dataclass
class Experiment:
    """A validated experiment file: ``sections[table][key]`` holds every key's value (defaults filled in)."""

    path: Path
    sections: dict[str, dict[str, Any]]

    @property
    def name(self) -> str:
        return self.sections["experiment"]["name"]

    def section(self, name: str) -> dict[str, Any]:
        return self.sections[name]

    def settings(self, table: str, cls: type[Settings], **route: Any) -> Settings:
        """The stage's settings object: the table's keys of ``cls`` plus the values the pipeline sets (``route``)."""
        values = {k: v for k, v in self.sections[table].items() if table_keys(table).get(k) is cls}
        return cls.from_dict({**values, **route}, source=f"{self.path} [{table}]")


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment TOML file; raises a :class:`UserError` with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"experiment file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML: {err}") from None
    return validate(raw, path)


def validate(raw: dict[str, Any], path: Path) -> Experiment:
    unknown = sorted(set(raw) - set(TABLES))
    if unknown:
        raise SettingsError(f"{path}: unknown table [{unknown[0]}]; tables are: {', '.join(TABLES)}")
    sections: dict[str, dict[str, Any]] = {}
    for table in TABLES:
        given = raw.get(table, {})
        if not isinstance(given, dict):
            raise SettingsError(f"{path}: [{table}] must be a table")
        keys = table_keys(table)
        bad = sorted(set(given) - set(keys))
        if bad:
            raise SettingsError(f"{path}: unknown key '{bad[0]}' in [{table}]; known keys: {', '.join(sorted(keys))}")
        given = {k: _resolve_paths(table, k, v, path.parent) for k, v in given.items()}
        values: dict[str, Any] = {}
        for cls in dict.fromkeys(keys.values()):
            mine = {k: v for k, v in given.items() if keys[k] is cls}
            values.update(_checked(cls, mine, table, path))
        sections[table] = values
    exp = Experiment(path=path, sections=sections)
    _check_stages(exp)
    return exp


def _checked(cls: type[Settings], given: dict[str, Any], table: str, path: Path) -> dict[str, Any]:
    """Validate ``given`` with the class (required fields get placeholders the pipeline fills in later) and return
    every key of the table that ``cls`` defines, defaults included."""
    placeholders = {"out": "<out>", "data": ["<generated>"], "backbone": "<backbone>"}
    required = {f.name for f in dataclasses.fields(cls) if is_required(f)}
    filled = {**{k: placeholders[k] for k in required if k not in given}, **given}
    obj = cls.from_dict(filled, source=f"{path} [{table}]")
    wanted = {k for k, c in table_keys(table).items() if c is cls}
    return {k: v for k, v in obj.to_dict().items() if k in wanted and not (k in required and k not in given)}


def _resolve_paths(table: str, key: str, value: Any, base: Path) -> Any:
    """Relative paths of path keys are taken relative to the experiment file's folder (``base``). Keys that may
    also hold a name (``backbone = "sface"``, a hub id) keep the value when no such file exists there."""
    if key not in PATH_KEYS.get(table, ()):
        return value
    if isinstance(value, list):
        return [_resolve_paths(table, key, v, base) for v in value]
    if not isinstance(value, str) or not value or value == PACKAGE_PHOTOS:
        return value
    text, sep, weight = value, "", ""
    if key == "extra_data" and ":" in value and value.rsplit(":", 1)[1].replace(".", "", 1).isdigit():
        text, weight = value.rsplit(":", 1)
        sep = ":"
    p = Path(text).expanduser()
    if p.is_absolute():
        return value
    candidate = base / p
    if key in MAYBE_PATHS and not candidate.exists():
        return value
    return str(candidate) + sep + weight


def _check_stages(exp: Experiment) -> None:
    """Rules that involve several tables, and paths that must exist."""
    path = exp.path
    gen, ft, ev = exp.section("generate"), exp.section("finetune"), exp.section("evaluate")
    if gen["enabled"]:
        if not (gen["ages"] or gen["age_intervals"]):
            raise SettingsError(f"{path}: [generate] needs `ages` or `age_intervals`")
        if not (gen["sources"] or gen["identities"]):
            raise SettingsError(f"{path}: [generate] needs `sources` (photos) or `identities` (seeds)")
    for key in ("sources", "repo", "calibration"):  # checkpoint: below (diffusion also takes hub ids)
        value = gen[key]
        if value and value != PACKAGE_PHOTOS and not Path(value).exists():
            raise SettingsError(f"{path}: [generate] {key} = '{value}' does not exist (the file's header says what "
                                f"to provide)")
    if gen["checkpoint"] and gen["method"] != "diffusion" and not Path(gen["checkpoint"]).exists():  # (hub ids)
        raise SettingsError(f"{path}: [generate] checkpoint = '{gen['checkpoint']}' does not exist (the file's header "
                            f"says what to provide)")
    if not gen["enabled"] and ft["enabled"] and not gen["dataset"]:
        raise SettingsError(f"{path}: [generate] enabled = false needs `dataset` (the training set)")
    if ft["enabled"] and ft["init"] == "pretrained":
        backbone = ft.get("backbone") or ""
        if not backbone:
            raise SettingsError(f"{path}: [finetune] needs `backbone` (a backbone.pth / .onnx file, sface, or an "
                                f"architecture name with init = 'random')")
        looks_like_file = "/" in backbone or backbone.endswith((".pth", ".onnx", ".safetensors", ".pt"))
        if looks_like_file and not Path(backbone).exists():
            raise SettingsError(f"{path}: [finetune] backbone '{backbone}' does not exist")
    for source in ft["extra_data"]:
        p = source.rsplit(":", 1)[0] if ":" in source and not Path(source).exists() else source
        if not Path(p).exists():
            raise SettingsError(f"{path}: [finetune] extra_data '{source}' does not exist")
    if ev["dataset"] == "fgnet":
        if not Path(ev["root"]).exists():
            raise SettingsError(f"{path}: FG-NET not found at '{ev['root']}': get it from its distributor and unpack "
                                f"it there (see datasets/README.md)")
    elif ev["dataset"] != "generated" and not Path(ev["dataset"]).exists():
        raise SettingsError(f"{path}: [evaluate] dataset '{ev['dataset']}' does not exist")
    if ev["identities"] == "held-out":
        training_set = ev["dataset"] == "generated" if gen["enabled"] else ev["dataset"] == gen["dataset"]
        if not (ft["enabled"] and ft["val_fraction"] > 0 and training_set):
            raise SettingsError(f"{path}: [evaluate] identities = 'held-out' needs [finetune] enabled with "
                                f"val_fraction > 0 and the training set as [evaluate] dataset (\"generated\")")
    _check_models(exp)


def _check_models(exp: Experiment) -> None:
    """Every ``[evaluate] models`` entry names something the evaluate stage can build, checked before any stage
    runs (a typo must not wait for hours of generation and training)."""
    from agebias.models.embedder import check_spec

    ft = exp.section("finetune")
    for name in exp.section("evaluate")["models"]:
        if name == "finetuned":
            if not ft["enabled"]:
                raise SettingsError(f"{exp.path}: [evaluate] models lists 'finetuned' but [finetune] is disabled")
        elif name == "baseline":
            if ft["init"] != "pretrained":
                raise SettingsError(f"{exp.path}: [evaluate] models lists 'baseline' but [finetune] init = 'random' "
                                    "has no pretrained baseline; list 'sface' or a model file instead")
        else:
            try:
                check_spec(name)
            except SettingsError as err:
                raise SettingsError(f"{exp.path}: [evaluate] models: {err.detail} (or 'baseline' for the "
                                    "[finetune] backbone, 'finetuned' for the trained one; relative paths are read "
                                    "from the experiment file's folder)") from None
