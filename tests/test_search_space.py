"""Parsing of the search experiment file: space, objectives, and the finetune settings of a trial."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from agebias.errors import UserError
from agebias.search.experiment import load_search_experiment
from agebias.search.objectives import parse_objectives, pair_metrics
from agebias.search.space import compose_arch, mitigation_spec, parse_space

REPO = Path(__file__).resolve().parents[1]


def test_dims_of_every_kind_suggest_values_in_range():
    space = parse_space({
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "depth3": {"type": "int", "low": 1, "high": 3},
        "head": ["arcface", "cosface"],
        "margin": {"type": "float", "low": 0.2, "high": 0.5, "step": 0.1},
    })
    assert [d.kind for d in space.dims] == ["float", "int", "categorical", "float"] and space.dims[0].log
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        p = space.suggest(study.ask())
        assert 1e-4 <= p["lr"] <= 1e-1 and p["depth3"] in (1, 2, 3) and p["head"] in ("arcface", "cosface")
        assert round(p["margin"] * 10) / 10 == pytest.approx(p["margin"])


@pytest.mark.parametrize("table, words", [
    ({"colour": ["red"]}, "not a search parameter"),
    ({"lr": {"type": "float", "low": 1.0}}, "needs numbers 'low' and 'high'"),
    ({"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "log scale needs low > 0"),
    ({"lr": {"type": "gaussian", "low": 0, "high": 1}}, "type must be categorical, int or float"),
    ({"head": {"type": "categorical", "choices": []}}, "non-empty list"),
    ({"mitigation": ["ddl:nope=1"]}, "no parameter 'nope'"),
    ({"arch": ["iresnet:1,1,1"]}, "need 4 stage depths"),
    ({"data": ["x"]}, "cannot be searched"),
    ({}, "non-empty [space]"),
])
def test_bad_space_entries_are_user_errors(table, words):
    with pytest.raises(UserError) as err:
        parse_space(table)
    assert words in str(err.value)


@pytest.mark.slow  # importing timm takes seconds
def test_timm_architectures_can_be_named():
    space = parse_space({"arch": ["iresnet:1,1,1,1@8,8,16,16", "timm:resnet18", "iresnet18"]})
    assert space.dims[0].choices[1] == "timm:resnet18"
    with pytest.raises(UserError, match="unknown timm architecture"):
        parse_space({"arch": ["timm:no_such_net_xyz"]})


def test_compose_arch_and_mitigation_strength():
    assert compose_arch({"depth3": 2, "width": 8}, "iresnet:1,1,1,1@16,32,64,128") == "iresnet:1,1,2,1@8,16,32,64"
    assert compose_arch({"depth1": 3}, "iresnet50") == "iresnet:3,1,1,1@16,32,64,128"
    assert compose_arch({"arch": "timm:resnet18"}, None) == "timm:resnet18"
    assert mitigation_spec({"mitigation": "ddl:bins=10", "mitigation_weight": 0.5}, None).startswith(
        "ddl:weight=0.5,bins=10")
    assert "p=1.0" in mitigation_spec({"mitigation": "label-flip", "mitigation_weight": 3.0}, None)
    assert mitigation_spec({"mitigation": "mixfair", "mitigation_weight": 0.5}, None).startswith("mixfair")
    assert mitigation_spec({"mitigation": "none", "mitigation_weight": 0.5}, None) == "none"


def test_objectives_parse_and_reject():
    objs = parse_objectives({"error": "eer@val", "fair": {"metric": "fdr", "on": "eval", "fmr": 0.1}})
    assert [(o.metric, o.on, o.fmr) for o in objs] == [("eer", "val", 1e-2), ("fdr", "eval", 0.1)]
    assert objs[1].minimised({"fdr": 0.9}) == pytest.approx(0.1)
    for bad in ({"e": "accuracy@val"}, {"e": "eer@test"}, {"e": {"metric": "eer", "fmr": 2}}, {}):
        with pytest.raises(UserError):
            parse_objectives(bad)


def test_pair_metrics_hand_example():
    # 2 identities x 2 groups; embeddings chosen so that scores are easy to read
    emb = [[1, 0], [1, 0], [0.6, 0.8], [0.6, 0.8], [0, 1], [0.6, 0.8]]
    subjects = ["a", "a", "b", "b", "c", "c"]
    ages = [5, 6, 30, 31, 5, 30]  # c's two images are in different groups: a cross-group genuine pair
    m = pair_metrics(emb, subjects, ages, "0-12,13-69", fmr=0.5)
    g0, g1 = m["groups"]
    assert (g0["genuine"], g1["genuine"]) == (1, 1)  # a (group 0), b (group 1); c's pair is cross-group
    assert m["genuine"] == 3 and m["impostor"] == 12
    assert g0["impostor"] == 2 and g1["impostor"] == 2  # a-c(5) x2 in group 0; b-c(30) x2 in group 1
    # genuine 1, 1, 0.8; impostors 0 x2, 0.6 x6, 0.8 x2, 1 x2: best midpoint 0.9 -> FMR 2/12, FNMR 1/3
    assert m["eer"] == pytest.approx((1 / 6 + 1 / 3) / 2)
    # FMR 0.5 allows 6 false matches: tau just above 0.6; group 0 impostors (a-c: 0) FMR 0, group 1 (b-c: 1) FMR 1
    assert (g0["fmr"], g1["fmr"], g0["fnmr"], g1["fnmr"]) == (0.0, 1.0, 0.0, 0.0)
    assert m["fmr"] == pytest.approx(4 / 12)
    assert m["fdr"] == pytest.approx(0.5)  # 1 - (0.5 * |0 - 1| + 0.5 * 0)
    assert m["garbe"] != m["garbe"]  # NaN: mean FNMR is 0


def _write(tmp_path: Path, text: str) -> Path:
    data = tmp_path / "data"
    (data / "x").mkdir(parents=True, exist_ok=True)
    p = tmp_path / "s.toml"
    p.write_text(text.replace("DATA", str(data)))
    return p


BASE = """
[experiment]
name = "t"
seed = 3
[data]
synthetic = "DATA"
real = "DATA"
[finetune]
backbone = "iresnet:1,1,1,1@8,8,16,16"
init = "random"
frozen_layers = "1"
[space]
arch = ["iresnet:1,1,1,1@8,8,16,16", "iresnet:1,1,2,1@8,8,16,16"]
synthetic_weight = { type = "float", low = 0.0, high = 1.0 }
lr = { type = "float", low = 0.001, high = 0.1, log = true }
[objectives]
error = "eer@val"
fairness = "garbe@val"
"""


def test_experiment_file_to_finetune_settings(tmp_path):
    exp = load_search_experiment(_write(tmp_path, BASE))  # (timm names are checked in the slow test above)
    assert exp.name == "t" and exp.sampler == "nsga2" and exp.out == Path("runs/t")
    s = exp.finetune_settings({"arch": "timm:resnet18", "synthetic_weight": 0.0, "lr": 0.01}, tmp_path / "run")
    assert s["backbone"] == s["arch"] == "timm:resnet18" and s["init"] == "random"
    assert s["frozen_layers"] == ""  # timm backbones have no iresnet stages to freeze
    assert s["data"] == [f"{tmp_path / 'data'}:1"]  # synthetic weight 0 leaves that source out
    assert s["lr"] == 0.01 and s["seed"] == 3 and s["out"] == str(tmp_path / "run")
    s = exp.finetune_settings({"arch": "iresnet:1,1,1,1@8,8,16,16", "synthetic_weight": 0.5, "lr": 0.01}, tmp_path)
    assert s["frozen_layers"] == "1" and s["data"][0].endswith(":0.5")
    from agebias.finetune.config import FinetuneConfig

    FinetuneConfig.from_dict(s)  # a valid finetune configuration


@pytest.mark.parametrize("edit, words", [
    (("[finetune]", "[finetune]\nepochz = 3"), "cannot set epochz"),
    (("[experiment]", "[wat]\nx = 1\n[experiment]"), "unknown table [wat]"),
    (('synthetic = "DATA"', 'synthetic = "DATA/missing-demo"'), "does not exist; make it first"),
    (('error = "eer@val"', 'error = "eer@eval"'), "needs [data] eval"),
    (("[experiment]", "[search]\nsampler = \"grid\"\n[experiment]"), "'sampler': unknown value 'grid'"),
    (("[finetune]", "[finetune]\ndata = 'x'"), "cannot set data"),
    # settings that used to give a traceback or fail every trial instead of one line at load time
    (("[experiment]", "[search]\ntrials = \"x\"\n[experiment]"), "'trials': must be a whole number"),
    (("[experiment]", "[search]\npopulation = 1\n[experiment]"), "'population': must be >= 2"),
    (('init = "random"', 'init = "random"\nhead = "magface"'), "a trial would fail: finetune setting 'head': unknown value 'magface'"),
    (('init = "random"', 'init = "random"\nepochs = "2"'), "'epochs': must be a whole number"),
    (("[space]", "[space]\nhead = [\"arcface\", \"softmax\"]"), "'head': unknown value 'softmax'"),
    (("[space]", "[space]\nepochs = { type = \"int\", low = 0, high = 2 }"), "'epochs': must be >= 1"),
    (("[space]", "[space]\nval_fraction = { type = \"float\", low = 1.0, high = 3.0 }"), "'val_fraction'"),
])
def test_bad_experiment_files(tmp_path, edit, words):
    with pytest.raises(UserError) as err:
        load_search_experiment(_write(tmp_path, BASE.replace(*edit)))
    assert words in str(err.value)


def test_missing_backbone_is_caught_at_load_time_unless_the_space_names_the_arch(tmp_path):
    text = BASE.replace('backbone = "iresnet:1,1,1,1@8,8,16,16"\n', "")
    assert load_search_experiment(_write(tmp_path, text)).space.names[0] == "arch"  # arch supplies the backbone
    text = text.replace('arch = ["iresnet:1,1,1,1@8,8,16,16", "iresnet:1,1,2,1@8,8,16,16"]\n', "")
    with pytest.raises(UserError, match="a trial would fail: .*missing required setting.*: backbone"):
        load_search_experiment(_write(tmp_path, text))


def test_load_time_check_has_no_false_alarm_on_source_weights(tmp_path):
    # synthetic 0 with real 0 is one bad combination, not a bad experiment: the file must load
    text = BASE.replace('synthetic_weight = { type = "float", low = 0.0, high = 1.0 }',
                        "synthetic_weight = [0.0, 1.0]\nreal_weight = [0.0, 1.0]")
    assert {"synthetic_weight", "real_weight"} <= set(load_search_experiment(_write(tmp_path, text)).space.names)


def test_shipped_demo_file_parses(tmp_path, monkeypatch):
    """Paths in a search file are relative to the file: it loads the same from any working directory."""
    text = (REPO / "experiments" / "search_demo.toml").read_text()
    (tmp_path / "runs" / "demo" / "generate" / "data").mkdir(parents=True)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    p = tmp_path / "experiments" / "search_demo.toml"
    p.write_text(text)
    exp = load_search_experiment(p)
    assert Path(exp.data["synthetic"]).resolve() == (tmp_path / "runs" / "demo" / "generate" / "data").resolve()
    assert exp.out.resolve() == (tmp_path / "runs" / "search_demo").resolve()
    assert exp.trials == 2 and [o.name for o in exp.objectives] == ["error", "fairness"]
    assert {"mitigation", "lr", "depth3", "width", "frozen_layers"} <= set(exp.space.names)
