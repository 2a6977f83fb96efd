"""`NAME[:key=value,...]` parsing of mitigation specs and the hook factories."""

from __future__ import annotations

import pytest

from agebias.errors import SettingsError, UserError
from agebias.mitigation.registry import MITIGATIONS, describe_mitigations, parse_mitigation


def test_defaults_and_typed_values():
    spec = parse_mitigation("ddl:bins=10,teacher=2,entropy=0.5")
    assert spec.name == "ddl"
    assert spec.params["bins"] == 10 and isinstance(spec.params["bins"], int)
    assert spec.params["entropy"] == 0.5 and spec.params["topk"] == 32  # default filled in
    assert parse_mitigation(None).name == "none" and parse_mitigation("").params == {}
    gm = parse_mitigation("Group_Margin:margins=0.45/0.35/0.4")
    assert gm.name == "group-margin" and gm.params["margins"] == (0.45, 0.35, 0.4)
    assert parse_mitigation("adversarial:mlp=yes").params["mlp"] is True
    assert str(gm) == "group-margin:margins=0.45/0.35/0.4,step=0.05,base=-1"
    assert parse_mitigation(str(gm)) == gm  # round trip


@pytest.mark.parametrize("spec, words", [
    ("fairness", "unknown mitigation 'fairness'"),
    ("ddl:foo=1", "no parameter 'foo'"),
    ("ddl:bins", "expected key=value"),
    ("ddl:bins=ten", "not a valid int"),
    ("adversarial:mlp=maybe", "true/false"),
    ("label-flip:p=1.5", "p must be in [0, 1], got 1.5"),
    ("ddl:per_identity=1", "per_identity must be >= 2, got 1"),
    ("adversarial:hidden=0", "hidden must be >= 1"),
    ("ddl:sigma=-0.1", "sigma must be >= 0"),
])
def test_bad_specs_are_one_line_settings_errors(spec, words):
    with pytest.raises(SettingsError) as err:
        parse_mitigation(spec)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert err.value.field == "mitigation"


def test_description_lists_every_method_once():
    lines = describe_mitigations().splitlines()
    assert [line.split(":")[0] for line in lines] == MITIGATIONS.names()
    assert "[" not in describe_mitigations()  # rich help would eat bracketed text as markup
    builtins = ["none", "label-flip", "group-margin", "adversarial", "mixfair", "ddl"]
    assert MITIGATIONS.names()[:6] == builtins  # other tests may register more
    assert "ddl: distribution distillation" in describe_mitigations()
    assert "keys: p=0.3, group=-1" in describe_mitigations()


def test_trainer_builds_every_registered_method_from_its_one_registration():
    from agebias.finetune.hooks import TrainingHooks, create_hooks

    for name in MITIGATIONS.names()[:6]:
        hooks = create_hooks(name)
        assert isinstance(hooks, TrainingHooks) and hooks.name == name
        if name != "none":  # every declared parameter arrives with its default
            assert hooks.params == {p.name: p.default for p in MITIGATIONS.get(name).params}
    assert create_hooks("label-flip:p=0.5").params["p"] == 0.5
    assert create_hooks("Label_Flip").name == "label-flip"
    with pytest.raises(UserError):
        create_hooks("mixfair:detach=2")


def test_a_new_method_is_one_registration(monkeypatch):
    from agebias.finetune.hooks import create_hooks
    from agebias.mitigation.base import MethodHooks
    from agebias.mitigation.registry import Param, register_mitigation

    monkeypatch.setattr(MITIGATIONS, "_items", dict(MITIGATIONS._items))  # leave the registry as it was

    @register_mitigation("test-scale", "scales the loss", (Param("k", "float", 2.0, "factor", low=0.0),))
    class ScaleHooks(MethodHooks):
        def extra_loss(self, ctx):
            return ctx.loss * (self.params["k"] - 1.0)

    assert isinstance(create_hooks("test-scale:k=3"), ScaleHooks) and create_hooks("test_scale").params == {"k": 2.0}
    assert "test-scale: scales the loss; keys: k=2.0" in describe_mitigations().splitlines()
    with pytest.raises(SettingsError, match="k must be >= 0"):
        create_hooks("test-scale:k=-1")
    with pytest.raises(ValueError, match="already registered"):
        register_mitigation("test-scale", "again")(ScaleHooks)
