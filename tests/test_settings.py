"""One definition per setting: the command line, experiment files and the dataclasses agree on every default, and
validation (in the dataclass) names the field on every route."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
import typer.main

from agebias.cli import app, main
from agebias.errors import SettingsError
from agebias.evaluate.settings import EmbedSettings, EvalSettings
from agebias.finetune.config import FinetuneConfig
from agebias.pipeline.schema import TABLES, load_experiment, table_keys
from agebias.search.settings import SearchSettings
from agebias.settings import default_of, field_type
from generators.settings import GenerateSettings

# command path -> settings classes whose fields are its options
COMMANDS = {
    ("finetune",): [FinetuneConfig],
    ("generate",): [GenerateSettings],
    ("embed",): [EmbedSettings],
    ("evaluate", "dataset"): [EvalSettings, EmbedSettings],
    ("evaluate", "fgnet"): [EvalSettings, EmbedSettings],
}


def _command(path):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _cli_form(value):
    """How a default looks as a click option default (lists as comma-separated text)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(p))
def test_cli_defaults_are_the_dataclass_defaults(path):
    params = {p.name: p for p in _command(path).params}
    checked = 0
    for cls in COMMANDS[path]:
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli", True):
                assert f.name not in params or cls is not COMMANDS[path][0]
                continue
            assert f.name in params, f"{cls.__name__}.{f.name} has no option in agebias {' '.join(path)}"
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                assert params[f.name].required, f.name
                continue
            expected = default_of(f)
            got = params[f.name].default
            if f.metadata.get("repeat"):
                assert list(got or []) == list(expected or []), f.name
            else:
                assert got == _cli_form(expected), f"{f.name}: CLI default {got!r} != dataclass {expected!r}"
            checked += 1
    assert checked >= 5


def test_search_options_default_to_the_file_and_the_file_to_the_dataclass(tmp_path):
    params = {p.name: p for p in _command(("search",)).params}
    for f in dataclasses.fields(SearchSettings):
        assert params[f.name].default is None  # not given: the file's value, else the dataclass default
    assert SearchSettings.from_dict({}) == SearchSettings()


def _minimal_experiment(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    path = tmp_path / "exp.toml"
    path.write_text(textwrap.dedent("""
        [generate]
        sources = "photos"
        ages = [5, 30]
        [finetune]
        backbone = "iresnet18"
        init = "random"
        [evaluate]
        models = ["finetuned"]  # no 'baseline': a random init has none
    """), encoding="utf-8")
    return load_experiment(path)


@pytest.mark.parametrize("table,cls,route", [
    ("generate", GenerateSettings, {"out": "o", "seed": 0, "device": None}),
    ("finetune", FinetuneConfig, {"data": ["d"], "out": "o", "seed": 0, "device": "auto", "resume": True}),
    ("evaluate", EvalSettings, {"protocol": "all-pairs", "seed": 0}),
    ("evaluate", EmbedSettings, {"device": None}),
])
def test_experiment_file_defaults_are_the_dataclass_defaults(tmp_path, table, cls, route):
    exp = _minimal_experiment(tmp_path)
    built = exp.settings(table, cls, **route)
    given = {"generate": {"sources", "ages"}, "finetune": {"backbone", "init"}}.get(table, set())
    for f in dataclasses.fields(cls):
        if f.name in route or f.name in given or not f.metadata.get("toml", True):
            continue
        assert table_keys(table)[f.name] is cls
        assert getattr(built, f.name) == default_of(f), f"[{table}] {f.name}"


def test_every_table_key_belongs_to_one_class():
    for table in TABLES:
        keys = table_keys(table)
        assert keys and all(k.isidentifier() for k in keys)


def test_types_are_coerced_the_same_on_every_route(tmp_path):
    # TOML: ints for floats, a number for the margin string, a list for step_epochs
    path = tmp_path / "exp2.toml"
    (tmp_path / "photos").mkdir(exist_ok=True)
    path.write_text('[generate]\nsources = "photos"\nages = [5]\n[finetune]\nbackbone = "iresnet18"\ninit = "random"\n'
                    'warmup_epochs = 1\nmargin = 0.4\nstep_epochs = [3, 5]\n[evaluate]\nmodels = ["finetuned"]\n',
                    encoding="utf-8")
    exp = load_experiment(path)
    toml_cfg = exp.settings("finetune", FinetuneConfig, data=["d"], out="o", seed=0, device="auto", resume=False)
    py_cfg = FinetuneConfig(data=["d"], backbone="iresnet18", init="random", out="o", warmup_epochs=1, margin=0.4,
                            step_epochs="3,5")
    assert toml_cfg.to_dict() == py_cfg.to_dict()
    assert isinstance(py_cfg.warmup_epochs, float) and py_cfg.margin == "0.4" and py_cfg.step_epochs == [3, 5]
    assert field_type(FinetuneConfig, "aligned").optional


def test_one_default_margin_per_head_on_every_route(tmp_path):
    """A cosface head without a margin trains with cosface's own 0.35, from the CLI, a file or Python."""
    from agebias.models.heads import create_head

    path = tmp_path / "exp.toml"
    (tmp_path / "photos").mkdir()
    path.write_text('[generate]\nsources = "photos"\nages = [5]\n[finetune]\nbackbone = "iresnet18"\ninit = "random"\n'
                    'head = "cosface"\n[evaluate]\nmodels = ["finetuned"]\n', encoding="utf-8")
    toml_cfg = load_experiment(path).settings("finetune", FinetuneConfig, data=["d"], out="o", seed=0,
                                              device="auto", resume=False)
    py_cfg = FinetuneConfig(data=["d"], backbone="iresnet18", out="o", head="cosface")
    for cfg in (toml_cfg, py_cfg):
        head = create_head(cfg.head, 8, 3, **cfg.head_kwargs())
        assert head.margin == pytest.approx(0.35)


def test_validation_names_the_field_on_every_route(tmp_path, capsys):
    with pytest.raises(SettingsError) as err:
        FinetuneConfig(data=["d"], backbone="b", out="o", lr=-1)
    assert err.value.field == "lr" and "finetune setting 'lr'" in str(err.value) and "> 0" in str(err.value)

    rc = main(["finetune", "--data", "d", "--backbone", "b", "--out", str(tmp_path / "o"), "--lr", "-1"])
    assert rc == 2
    assert "error: --lr: must be > 0, got -1.0" in capsys.readouterr().err

    rc = main(["evaluate", "dataset", str(tmp_path), "--model", "sface", "--out", str(tmp_path / "e"),
               "--format", "png,gif"])
    assert rc == 2 and "--format: unknown value 'gif'" in capsys.readouterr().err

    path = tmp_path / "bad.toml"
    path.write_text('[evaluate]\nalpha = 2\n[generate]\nenabled = false\ndataset = "."\n[finetune]\nenabled = false\n',
                    encoding="utf-8")
    with pytest.raises(SettingsError, match=r"bad.toml \[evaluate\]: evaluate setting 'alpha': must lie in \[0, 1\]"):
        load_experiment(path)
    path.write_text('[finetune]\nlearning_rate = 0.1\n', encoding="utf-8")
    with pytest.raises(SettingsError, match="unknown key 'learning_rate' in \\[finetune\\]"):
        load_experiment(path)


def test_generate_age_intervals_have_their_own_name(tmp_path, capsys):
    rc = main(["generate", "--sources", str(tmp_path), "--age-bins", "0-5,5-10", "--out", str(tmp_path / "g")])
    assert rc == 2
    assert "--age-intervals" in capsys.readouterr().err
    with pytest.raises(SettingsError, match="per_interval"):
        GenerateSettings(out="o", ages=[5], per_interval=2)
