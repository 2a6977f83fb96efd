"""`NAME[:key=value,...]` parsing of mitigation specs and the hook factories."""

from __future__ import annotations

import pytest

from agebias.errors import UserError
from agebias.mitigation.registry import METHODS, describe_mitigations, parse_mitigation


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
    ("label-flip:p=1.5", "p must be in [0, 1]"),
    ("ddl:per_identity=1", "per_identity must be >= 2"),
])
def test_bad_specs_are_one_line_user_errors(spec, words):
    with pytest.raises(UserError) as err:
        parse_mitigation(spec)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_description_lists_every_method_once():
    lines = describe_mitigations().splitlines()
    assert [line.split(":")[0] for line in lines] == list(METHODS)
    assert "[" not in describe_mitigations()  # rich help would eat bracketed text as markup
    assert set(METHODS) == {"none", "label-flip", "group-margin", "adversarial", "mixfair", "ddl"}


def test_trainer_hook_registry_finds_every_method():
    from agebias.finetune.hooks import create_hooks, list_hooks

    assert set(METHODS) <= set(list_hooks())
    assert create_hooks("label-flip:p=0.5").params["p"] == 0.5
    with pytest.raises(UserError):
        create_hooks("mixfair:detach=2")
