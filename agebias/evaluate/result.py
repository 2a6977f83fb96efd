""":class:`EvaluationResult`: what :func:`agebias.evaluate` returns, for notebooks and for the CLI alike.

It wraps the results dict (the content of results.json, schema ``agebias.evaluate/2``, see
:mod:`agebias.evaluate.api`) and offers it as tables and figures:

- ``.overall``: the overall operating point and metrics. One model: a dict of numbers; several models: a pandas
  DataFrame with one row per model.
- ``.by_group``: a pandas DataFrame of the per-age-group rates (index: age group; with several models a
  (model, group) MultiIndex). Columns ``n_genuine``, ``n_impostor``, ``fmr``, ``fnmr``, ``fmr_ci_low``, ... .
- ``.fairness``: GARBE, FDR, IR and the max/min ratios and differences (dict, or DataFrame for several models).
- ``result["name"]``: the result of one model; ``.models``: their names in order.
- ``.plot(kind, ax=None)``: a matplotlib Figure (kinds: :data:`PLOT_KINDS`; ``ax`` for the one-panel figures:
  ``genuine_vs_gap``, and ``det`` and ``impostor_table`` of one model).

Results of the legacy ``msc`` protocol (``protocol="msc"``) have no operating point, fairness summary or group
table (``.overall``, ``.fairness``, ``.by_group`` and ``.impostor_table`` raise :class:`DataError` saying so); they
offer ``.garbe_sweep`` (a DataFrame: GARBE and each group's FMR and FNMR per swept threshold) and the plot kinds
``msc_columns`` and ``msc_garbe``.
- ``.save(folder)``: results.json, groups.csv, plots and reports, the files ``agebias evaluate`` writes.
- ``.to_dict()``: a deep copy of the results dict; :meth:`load` reads a results.json (schema 1 or 2).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from agebias.errors import DataError, SettingsError


class EvaluationResult:
    """The evaluation of one or more models on the same images (see the module docstring)."""

    def __init__(self, results: dict[str, Any]):
        if "models" not in results or "model_order" not in results:
            raise DataError("not an agebias evaluation result (no 'models' / 'model_order')")
        self._results = results

    # ---- models ----------------------------------------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        return list(self._results["model_order"])

    def __getitem__(self, name: str) -> "EvaluationResult":
        if name not in self._results["models"]:
            raise KeyError(f"no model {name!r}; models: {', '.join(self.models)}")
        view = {k: v for k, v in self._results.items() if k not in ("models", "model_order")}
        return EvaluationResult({**view, "model_order": [name], "models": {name: self._results["models"][name]}})

    def section(self, name: str | None = None) -> dict[str, Any]:
        """One model's section of the results dict (the only model's when ``name`` is None)."""
        if name is None:
            if len(self.models) != 1:
                raise SettingsError(f"this result holds {len(self.models)} models ({', '.join(self.models)}); "
                                    f"pick one with result[name]")
            name = self.models[0]
        return self._results["models"][name]

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._results.get("settings", {}))

    @property
    def warnings(self) -> list[str]:
        return [f"{m}: {w}" if len(self.models) > 1 else w for m in self.models
                for w in self._results["models"][m].get("warnings", []) or []]

    # ---- tables ----------------------------------------------------------------------------------------------
    @property
    def protocol(self) -> str:
        """``all-pairs`` (the default) or ``msc`` (the legacy thesis protocol)."""
        return self.settings.get("protocol") or "all-pairs"

    def _all_pairs_only(self, what: str) -> None:
        if self.protocol == "msc":
            raise DataError(f"legacy msc protocol results have no {what}: use .garbe_sweep and .plot('msc_garbe'), "
                            "or evaluate with the all-pairs protocol")

    @property
    def overall(self):
        self._all_pairs_only("overall operating point (.overall)")
        return self._per_model("overall")

    @property
    def fairness(self):
        self._all_pairs_only("fairness summary (.fairness)")
        return self._per_model("fairness")

    @property
    def garbe_sweep(self):
        """msc protocol results: GARBE and each group's FMR/FNMR at every swept threshold (pandas DataFrame indexed
        by threshold; with several models a (model, threshold) MultiIndex)."""
        import pandas as pd

        if self.protocol != "msc":
            raise DataError("only legacy msc protocol results have a GARBE sweep; these all-pairs results have "
                            ".fairness and .plot('fairness_vs_fmr')")
        frames = [pd.DataFrame(self._results["models"][m]["garbe_sweep"]).set_index("threshold")
                  for m in self.models]
        return frames[0] if len(frames) == 1 else pd.concat(frames, keys=self.models, names=["model", "threshold"])

    def _per_model(self, key: str):
        """One model: its ``key`` section as a dict; several: a DataFrame with one flat row per model."""
        if len(self.models) == 1:
            return dict(self.section().get(key, {}))
        import pandas as pd

        rows = {m: _flat(self._results["models"][m].get(key, {})) for m in self.models}
        return pd.DataFrame.from_dict(rows, orient="index")

    @property
    def by_group(self):
        """Per-age-group rates at the global threshold (pandas DataFrame, see the module docstring)."""
        import pandas as pd

        self._all_pairs_only("age-group table (.by_group)")

        frames = []
        for m in self.models:
            groups = self._results["models"][m].get("groups", {})
            rows = {g: _flat(d) for g, d in groups.items()}
            frame = pd.DataFrame.from_dict(rows, orient="index")
            frame.index.name = "group"
            frames.append(frame)
        if len(frames) == 1:
            return frames[0]
        return pd.concat(frames, keys=self.models, names=["model", "group"])

    @property
    def impostor_table(self):
        """Group x group FMR at the global threshold (pandas DataFrame; one model)."""
        import pandas as pd

        self._all_pairs_only("impostor table (.impostor_table)")

        cells = self.section().get("impostor_table") or {}
        frame = pd.DataFrame([(c["row"], c["col"], c["fmr"]) for c in cells.values()], columns=["row", "col", "fmr"])
        labels = list(dict.fromkeys([*frame["row"], *frame["col"]]))
        return frame.pivot(index="row", columns="col", values="fmr").reindex(index=labels, columns=labels)

    # ---- figures and files -----------------------------------------------------------------------------------
    def plot(self, kind: str, ax=None):
        """A matplotlib Figure of ``kind`` (see :data:`agebias.evaluate.plots.PLOT_KINDS`; msc results:
        ``msc_columns``, ``msc_garbe``); drawn into ``ax`` when given (one-panel kinds)."""
        from agebias.evaluate.plots import draw

        return draw(self._results, kind, ax=ax)

    def save(self, folder: str | os.PathLike, *, plots: bool = True) -> "EvaluationResult":
        """Write results.json, groups.csv, plots/ (unless ``plots=False``), report.md and report.html."""
        from agebias.evaluate.outputs import write_outputs

        write_outputs(self._results, Path(folder), plots=plots)
        return self

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._results)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EvaluationResult":
        """Read a results.json; schema 1 files (the first model repeated at the top level) are read too."""
        p = Path(path)
        try:
            results = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"{p}: not a readable results.json ({err})") from None
        if str(results.get("schema", "")).endswith("/1"):
            first = results.get("model_order", [None])[0]
            results = {k: v for k, v in results.items()
                       if k in ("settings", "dataset", "model_order", "models")}
            results["schema"] = "agebias.evaluate/2"
            results.setdefault("models", {}).setdefault(first, {})
        return cls(results)

    def __repr__(self) -> str:
        parts = []
        for m in self.models:
            sec = self._results["models"][m]
            if self.protocol == "msc":
                garbe = [g for g in sec.get("garbe_sweep", {}).get("garbe", []) if g is not None and g == g]
                parts.append(f"{m}: legacy msc protocol, GARBE defined at {len(garbe)} of "
                             f"{len(sec.get('garbe_sweep', {}).get('threshold', []))} thresholds")
                continue
            o = sec.get("overall", {})
            parts.append(f"{m}: EER {_num(o.get('eer'))}, FNMR {_num(o.get('fnmr'))} at FMR {_num(o.get('fmr'))}")
        return f"EvaluationResult({'; '.join(parts)})"


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    """One row: scalars as they are, ``*_ci`` pairs as ``*_ci_low``/``*_ci_high``, ``fnmr_at_fmr`` entries as
    ``fnmr_at_fmr_<fmr>``; nested tables are left out."""
    row: dict[str, Any] = {}
    for k, v in d.items():
        if k.endswith("_ci") and isinstance(v, (list, tuple)) and len(v) == 2:
            row[f"{k}_low"], row[f"{k}_high"] = v
        elif k == "fnmr_at_fmr" and isinstance(v, dict):
            for t, x in v.items():
                row[f"fnmr_at_fmr_{t}"] = x
        elif isinstance(v, (int, float, str, bool)) or v is None:
            row[k] = v
    return row


def _num(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.4g}"
