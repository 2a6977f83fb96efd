"""The Python API refuses bad input as the command line does: a SettingsError naming the field, or a DataError
naming the bad entry, never a TypeError or a numpy traceback; msc results say what they lack."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import agebias
from agebias.cli import main
from agebias.errors import DataError, SettingsError
from agebias.evaluate.settings import EvalSettings
from agebias.finetune.config import FinetuneConfig
from generators.settings import GenerateSettings


def _data(n_subjects: int = 6, per_subject: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_subjects, 16))
    emb = np.repeat(centres, per_subject, axis=0) + 0.6 * rng.normal(size=(n_subjects * per_subject, 16))
    subjects = [f"s{i // per_subject}" for i in range(len(emb))]
    ages = [int(a) for a in rng.choice([5, 8, 12, 15, 25, 30, 50, 60], size=len(emb))]
    return emb.astype(np.float32), subjects, ages


@pytest.mark.parametrize("build", [
    lambda: EvalSettings(seed=-5),
    lambda: FinetuneConfig(data=["d"], backbone="b.pth", out="o", seed=-1),
    lambda: GenerateSettings(out="o", seed=-2),
])
def test_negative_seeds_are_refused_by_field(build):
    with pytest.raises(SettingsError) as err:
        build()
    assert err.value.field == "seed"


@pytest.mark.parametrize("build, field", [
    (lambda: EvalSettings(threshold=float("nan")), "threshold"),
    (lambda: EvalSettings(alpha=float("nan")), "alpha"),
    (lambda: FinetuneConfig(data=["d"], backbone="b.pth", out="o", lr=float("nan")), "lr"),
    (lambda: FinetuneConfig(data=["d"], backbone="b.pth", out="o", weight_decay=float("inf")), "weight_decay"),
    (lambda: GenerateSettings(out="o", guidance=float("nan")), "guidance"),
    (lambda: EvalSettings(fmr_targets="1e-2,nan"), "fmr_targets"),
])
def test_non_finite_numbers_are_refused(build, field):
    with pytest.raises(SettingsError, match="finite") as err:
        build()
    assert err.value.field == field


def test_the_cli_words_the_same_errors_with_its_flags(tmp_path, capsys):
    for flag, value in (("--seed", "-5"), ("--threshold", "nan")):
        assert main(["evaluate", "dataset", str(tmp_path), "--out", str(tmp_path / "o"), flag, value]) == 2
        err = capsys.readouterr().err
        assert f"{flag}:" in err and "Traceback" not in err, err


def test_unknown_and_missing_keywords_are_settings_errors():
    emb, subjects, ages = _data()
    with pytest.raises(SettingsError, match="unknown evaluate setting 'target_fmrr' \\(did you mean 'target_fmr'"):
        agebias.evaluate(emb, subjects, ages, target_fmrr=0.1)
    with pytest.raises(SettingsError, match="did you mean 'options'"):
        agebias.generate(out="o", option={"a": 1})
    with pytest.raises(SettingsError, match="missing required setting\\(s\\): out"):
        agebias.finetune(data=["d"], backbone="b.pth")
    with pytest.raises(SettingsError, match="did you mean 'flip'"):
        agebias.embed(np.zeros((1, 112, 112, 3), np.uint8), flipp=True)


def test_bad_ages_and_embeddings_are_data_errors():
    emb, subjects, ages = _data()
    for bad, where in ((["abc"] + ages[1:], "ages\\[0\\]"), (ages[:3] + [-30] + ages[4:], "ages\\[3\\]")):
        with pytest.raises(DataError, match=where):
            agebias.evaluate(emb, subjects, bad)
    with pytest.raises(DataError, match="shape \\(24,\\).*need an \\(N, D\\) array"):
        agebias.evaluate(emb[:, 0], subjects, ages)
    broken = emb.copy()
    broken[5, 2] = np.nan
    broken[7] = 0
    with pytest.raises(DataError, match="2 embedding row\\(s\\).*row 5"):
        agebias.evaluate(broken, subjects, ages)


def test_fractional_ages_are_rounded_as_manifests_round_them():
    emb, subjects, ages = _data()
    exact = agebias.evaluate(emb, subjects, ages, age_bins="0-12,13-19,20-69", bootstrap=0)
    shifted = agebias.evaluate(emb, subjects, [a + 0.4 for a in ages], age_bins="0-12,13-19,20-69", bootstrap=0)
    assert exact.by_group["n_genuine"].tolist() == shifted.by_group["n_genuine"].tolist()
    up = agebias.evaluate(emb, subjects, [12.6 if a == 12 else a for a in ages], age_bins="0-12,13-19,20-69",
                          bootstrap=0)
    moved = ages.count(12)
    assert moved and up.by_group.loc["0-12", "n_impostor"] != exact.by_group.loc["0-12", "n_impostor"]


def test_age_intervals_are_checked_where_they_are_set():
    for bad in (["5-3"], ["a-b"], ["0-5", "3-8"]):
        with pytest.raises(SettingsError) as err:
            GenerateSettings(out="o", age_intervals=bad)
        assert err.value.field == "age_intervals" and "--" not in str(err.value)
    with pytest.raises(SettingsError) as err:
        GenerateSettings(out="o", age_intervals=["0-2"], per_interval=5)
    assert err.value.field == "per_interval"


def test_the_callable_packages_show_the_api_signature():
    assert list(inspect.signature(agebias.evaluate).parameters)[:3] == ["embeddings", "subjects", "ages"]
    assert "config" in inspect.signature(agebias.finetune).parameters


def test_a_multi_panel_plot_into_one_axes_does_not_suggest_picking_a_model():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    emb, subjects, ages = _data()
    result = agebias.evaluate(emb, subjects, ages, age_bins="0-12,13-19,20-69", bootstrap=0)
    ax = Figure().subplots()
    with pytest.raises(SettingsError) as err:
        result.plot("rates", ax=ax)
    assert "call it without ax" in str(err.value) and "result[name]" not in str(err.value)
    assert result.plot("genuine_vs_gap", ax=ax).axes[0] is ax


def test_msc_results_say_what_they_lack_and_plot_their_own_figures():
    emb, subjects, ages = _data(n_subjects=8, per_subject=6, seed=1)
    result = agebias.evaluate(emb, subjects, ages, protocol="msc")
    assert result.protocol == "msc" and "legacy msc protocol" in repr(result)
    for attribute in ("overall", "fairness", "by_group", "impostor_table"):
        with pytest.raises(DataError, match="legacy msc protocol results have no"):
            getattr(result, attribute)
    sweep = result.garbe_sweep
    assert len(sweep) == 40 and sweep.index[0] == 0 and math.isclose(sweep.index[-1], 0.975)
    assert {"garbe", "fmr_young", "fnmr_old"} <= set(sweep.columns)
    for kind in ("msc_garbe", "msc_columns"):
        assert len(result.plot(kind).axes) >= 1
    with pytest.raises(SettingsError, match="for msc protocol results; choose from msc_columns, msc_garbe"):
        result.plot("scores")
    with pytest.raises(DataError, match="only legacy msc protocol results"):
        _ = agebias.evaluate(*_data(), bootstrap=0).garbe_sweep


def test_submodules_the_readme_names_work_right_after_import():
    import subprocess
    import sys

    code = "import agebias; agebias.console.configure(); print(agebias.errors.DataError.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "DataError", done.stderr


def test_package_photos_work_as_sources_on_the_command_line_too(tmp_path, capsys):
    """Experiment files accepted sources = "package-photos"; the command line said it was not found."""
    out = tmp_path / "gen"
    args = ["generate", "--sources", "package-photos", "--ages", "10", "--out", str(out)]
    assert main(args) == 0
    rows = (out / "manifest.csv").read_text().splitlines()[1:]
    assert len(rows) >= 4 and all(str(out / ".package_photos") in row for row in rows)
    assert main(args) == 0  # the copy is hidden inside the set: a rerun resumes instead of refusing the folder
    assert "0 written" in capsys.readouterr().err
