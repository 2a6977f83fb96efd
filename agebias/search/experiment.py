"""The search experiment file (TOML) -> :class:`SearchExperiment`. Schema ([data], [space] and [objectives] required)::

    [experiment]  name (study name), description, out (output folder, default runs/<name>), seed (fine-tuning seed
                  of every trial)
    [search]      sampler = "nsga2" | "tpe", trials (per worker), heartbeat (seconds; 0 = off),
                  population (NSGA-II population size), storage (Optuna URL; default sqlite:///<out>/study.db),
                  seed (sampler seed); the options of `agebias search` override them
    [data]        synthetic = PATH, real = PATH (finetune sources; weights searched as synthetic_weight /
                  real_weight or fixed here as synthetic_weight = 1.0 ...), train = ["PATH[:WEIGHT]", ...] (instead),
                  eval = PATH (a set for '@eval' objectives), eval_kind (fgnet | manifest | generated | auto),
                  eval_aligned (bool; default: as the data says), eval_age_bins (default: the evaluator's age
                  groups, 0-12,13-19,20-39,40-69; an objective's own age_bins comes first)
    [finetune]    fixed FinetuneConfig settings of every trial (backbone/arch, init, epochs, batch_size, ...)
    [space]       the searched parameters (agebias.search.space)
    [objectives]  name = "METRIC@SET", all minimised, in order (agebias.search.objectives)
    [baseline]    objective values of a reference model (same names, FDR as FDR; label = "...") marked in the
                  Pareto plot, and/or results = "results.json" of `agebias evaluate` on the eval set (model = NAME
                  picks one of its models) for the '@eval' objectives

Relative paths ([experiment] out, [data] sources, [finetune] backbone, [baseline] results) are taken relative to the
file's folder, so a search file runs the same from any working directory (as `agebias run` does).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agebias.errors import SettingsError, UserError
from agebias.search.objectives import Objective, parse_objectives
from agebias.search.settings import SearchSettings
from agebias.search.space import SPECIAL, SearchSpace, check_arch, compose_arch, mitigation_spec, parse_space

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TABLES = {
    "experiment": {"name", "description", "out", "seed"},
    "search": {f.name for f in dataclasses.fields(SearchSettings)},
    "data": {"synthetic", "real", "train", "eval", "eval_kind", "eval_aligned", "eval_age_bins", "synthetic_weight",
             "real_weight"},
    "finetune": None,  # FinetuneConfig fields, checked below
    "space": None,
    "objectives": None,
    "baseline": None,
}


@dataclass
class SearchExperiment:
    path: Path
    name: str
    out: Path
    seed: int | None  # finetune seed of every trial ([experiment] seed)
    search: SearchSettings
    data: dict[str, Any]
    finetune: dict[str, Any]
    space: SearchSpace
    objectives: list[Objective]
    baseline: dict[str, Any] = field(default_factory=dict)

    @property
    def sampler(self) -> str:
        return self.search.sampler

    @property
    def trials(self) -> int:
        return self.search.trials

    @property
    def heartbeat(self) -> int:
        return self.search.heartbeat

    @property
    def population(self) -> int | None:
        return self.search.population

    @property
    def storage(self) -> str | None:
        return self.search.storage

    def finetune_settings(self, params: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        """The FinetuneConfig dict of one trial: fixed settings, then the trial's parameters, then data/out."""
        settings = dict(self.finetune)
        plain = {k: v for k, v in params.items() if k not in SPECIAL}
        settings.update(plain)
        base_arch = settings.get("arch") or (settings.get("backbone") if settings.get("init") == "random" else None)
        arch = compose_arch(params, base_arch)
        if arch and arch != base_arch:
            settings.update(arch=arch, backbone=arch, init="random")
        if arch and str(arch).startswith("timm:"):
            settings["frozen_layers"] = ""  # timm backbones have no stages to freeze (iresnet and sface have)
        mitigation = mitigation_spec(params, settings.get("mitigation"))
        if mitigation is not None:
            settings["mitigation"] = mitigation
        settings["data"] = self.data_sources(params)
        settings["out"] = str(run_dir)
        if self.seed is not None and "seed" not in settings:
            settings["seed"] = self.seed
        return settings

    def data_sources(self, params: dict[str, Any]) -> list[str]:
        if self.data.get("train"):
            return list(self.data["train"])
        sources = []
        for key in ("synthetic", "real"):
            path = self.data.get(key)
            if not path:
                continue
            weight = float(params.get(f"{key}_weight", self.data.get(f"{key}_weight", 1.0)))
            if weight > 0:
                sources.append(f"{path}:{weight:g}")
        if not sources:
            raise SettingsError("this trial has no training data: every [data] source has weight 0")
        return sources


def load_search_experiment(path: str | Path) -> SearchExperiment:
    """Read and validate a search experiment file; every problem is one :class:`SettingsError` line."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"experiment file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"{path}: not valid TOML: {err}") from None
    for table, value in doc.items():
        if table not in TABLES:
            raise SettingsError(f"{path}: unknown table [{table}]; a search file has {', '.join(TABLES)}")
        if not isinstance(value, dict):
            raise SettingsError(f"{path}: [{table}] must be a table")
        keys = TABLES[table]
        if keys is not None and set(value) - keys:
            raise SettingsError(f"{path}: unknown key(s) in [{table}]: {', '.join(sorted(set(value) - keys))}")
    exp_t, search_t, data_t = doc.get("experiment", {}), doc.get("search", {}), dict(doc.get("data", {}))
    finetune_t = dict(doc.get("finetune", {}))
    from agebias.finetune.config import FinetuneConfig

    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    bad = sorted(set(finetune_t) - known) + sorted(k for k in ("data", "out") if k in finetune_t)
    if bad:
        raise SettingsError(f"{path}: [finetune] cannot set {', '.join(bad)} (data comes from [data], out per trial)")
    name = str(exp_t.get("name", path.stem))
    if not (data_t.get("train") or data_t.get("synthetic") or data_t.get("real")):
        raise SettingsError(f"{path}: [data] needs 'synthetic', 'real' or 'train' (the training sources)")
    if isinstance(data_t.get("train"), str):
        data_t["train"] = [data_t["train"]]
    _resolve_data_paths(data_t, path.parent)
    backbone = finetune_t.get("backbone")
    if isinstance(backbone, str) and backbone and (path.parent / backbone).exists() and \
            not Path(backbone).is_absolute():
        finetune_t["backbone"] = str(path.parent / backbone)
    baseline_t = dict(doc.get("baseline", {}))
    if isinstance(baseline_t.get("results"), str) and not Path(baseline_t["results"]).is_absolute():
        baseline_t["results"] = str(path.parent / baseline_t["results"])
    for key in ("arch", "backbone"):
        if finetune_t.get(key) and finetune_t.get("init") == "random":
            check_arch(str(finetune_t[key]))
    seed = _whole(path, "experiment", exp_t, "seed")
    out = Path(str(exp_t["out"])) if exp_t.get("out") else Path("runs") / name
    exp = SearchExperiment(
        path=path, name=name,
        out=out if out.is_absolute() or not exp_t.get("out") else Path(os.path.normpath(path.parent / out)),
        seed=seed, search=SearchSettings.from_dict(search_t, source=f"{path} [search]"),
        data=data_t, finetune=finetune_t,
        space=parse_space(doc.get("space", {})), objectives=parse_objectives(doc.get("objectives", {})),
        baseline=baseline_t)
    _check_paths(path, data_t)
    needs_eval = any(o.on == "eval" for o in exp.objectives)
    if needs_eval and not data_t.get("eval"):
        raise SettingsError(f"{path}: an '@eval' objective needs [data] eval = PATH")
    _check_trial_settings(exp)
    return exp


def _whole(path: Path, table: str, values: dict[str, Any], key: str) -> int | None:
    """An optional whole-number setting of the file (None when absent), checked (one clear line instead of a
    traceback)."""
    value = values.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"{path}: [{table}] {key} must be a whole number, got {value!r}")
    return value


def _check_trial_settings(exp: SearchExperiment) -> None:
    """Build the finetune settings a trial would get with each searched value (one at a time, the others at their
    first value) so that a bad fixed setting or choice fails now, not in every trial. Probed values: every choice,
    both bounds of an int range, the middle of a float range (a bound such as lr low = 0 is never drawn exactly)."""
    from agebias.finetune.config import FinetuneConfig

    def values(d) -> list[Any]:
        if d.kind == "categorical":
            return list(d.choices)
        if d.kind == "int":
            return [int(d.low), int(d.high)]
        return [(d.low * d.high) ** 0.5 if d.log else (d.low + d.high) / 2]

    # source weights are left out: only their combination can leave a trial without data (e.g. both 0)
    dims = [d for d in exp.space.dims if d.name not in ("synthetic_weight", "real_weight")]
    first = {d.name: values(d)[0] for d in dims}
    probes = [dict(first)] + [{**first, d.name: v} for d in dims for v in values(d)]
    for params in probes:
        try:
            FinetuneConfig.from_dict(exp.finetune_settings(params, Path("trial")))
        except UserError as err:
            searched = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise SettingsError(f"{exp.path}: a trial would fail: {err} (with {searched})") from None


def _resolve_data_paths(data: dict[str, Any], base: Path) -> None:
    """[data] paths relative to the search file's folder (``PATH[:WEIGHT]`` entries keep their weight)."""
    from agebias.finetune.data import parse_source

    def resolve(text: str) -> str:
        src = parse_source(text)
        p = Path(src.path).expanduser()
        if p.is_absolute():
            return text
        return os.path.normpath(base / p) + text[len(src.path):]

    for key in ("synthetic", "real", "eval"):
        if data.get(key):
            data[key] = resolve(str(data[key]))
    if data.get("train"):
        data["train"] = [resolve(str(t)) for t in data["train"]]


def _check_paths(path: Path, data: dict[str, Any]) -> None:
    """Every [data] source must exist (a missing demo set says how to make it)."""
    from agebias.finetune.data import parse_source

    entries = [(k, str(data[k])) for k in ("synthetic", "real", "eval") if data.get(k)]
    entries += [("train", parse_source(str(s)).path) for s in data.get("train") or []]
    for key, value in entries:
        p = Path(value if key == "eval" or key == "train" else parse_source(value).path)
        if not p.exists():
            hint = ("; make it first with `agebias run experiments/demo.toml --only generate`"
                    if "demo" in value else "")
            raise SettingsError(f"{path}: [data] {key} {value} does not exist{hint}")
