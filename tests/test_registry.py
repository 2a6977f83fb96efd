"""The one registry helper (agebias.registry) and the registries built on it."""

from __future__ import annotations

import sys

import pytest

from agebias.errors import SettingsError, UserError
from agebias.registry import Registry


def test_register_decorate_lookup_and_order():
    reg: Registry = Registry("widget", field="widget")

    @reg.register("b")
    def make_b():
        return "B"

    reg.register("a", lambda: "A")
    assert reg.get("b") is make_b and reg.get("a")() == "A"
    assert reg.names() == ["b", "a"]  # registration order
    assert "a" in reg and "c" not in reg and 3 not in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", lambda: "again")
    reg.register("a", lambda: "again", replace=True)
    assert reg.get("a")() == "again"


def test_unknown_names_are_settings_errors_listing_known_names_and_hints():
    reg: Registry = Registry("architecture", field="arch", hints=("timm:<name>",))
    reg.register("r18", object)
    with pytest.raises(SettingsError) as err:
        reg.get("r19")
    assert err.value.field == "arch"
    assert err.value.detail == "unknown architecture 'r19'; choose one of: r18, timm:<name>"
    assert str(err.value) == "setting 'arch': unknown architecture 'r19'; choose one of: r18, timm:<name>"


def test_normalise_aliases_and_lazy_targets():
    reg: Registry = Registry("thing", normalise=str.lower, aliases={"od": "ordered"})
    reg.register_lazy("ordered", "collections:OrderedDict")
    reg.register_lazy("join", "os.path:join")
    from collections import OrderedDict
    from os.path import join

    assert reg.get("OD") is OrderedDict and reg.get("Ordered") is OrderedDict and reg.get("join") is join
    with pytest.raises(ValueError, match="module:attr"):
        reg.register_lazy("bad", "no_colon")


def test_entry_points_of_installed_packages(tmp_path, monkeypatch):
    """A real entry point, declared by a distribution on sys.path (made here), is found and loaded on lookup."""
    (tmp_path / "plugin_mod_for_test.py").write_text("class Plugin:\n    pass\n")
    (tmp_path / "failing_mod_for_test.py").write_text("raise RuntimeError('cannot start\\nsecond line')\n")
    info = tmp_path / "agebias_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: agebias-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[agebias.test_plugins]\nplug = plugin_mod_for_test:Plugin\n"
                                           "broken = failing_mod_for_test:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("plugin", entry_point_group="agebias.test_plugins")
    reg.register("own", int)
    assert reg.names() == ["own", "broken", "plug"] and "plug" in reg
    assert reg.get("plug").__name__ == "Plugin"
    with pytest.raises(UserError, match=r"^plugin 'broken' \(entry point failing_mod_for_test:Thing\) failed to load: "
                                        r"cannot start$"):
        reg.get("broken")
    reg.register("plug", str)  # registered names win over entry points
    assert reg.get("plug") is str
    assert Registry("plain").entry_points() == {}
    sys.modules.pop("plugin_mod_for_test", None)


def test_project_registries_are_registry_instances():
    from agebias.mitigation.registry import MITIGATIONS
    from agebias.models.embedder import EMBEDDERS
    from agebias.models.heads import HEADS
    from agebias.models.registry import BACKBONES, create_backbone, list_backbones
    from generators.registry import GENERATORS

    for reg in (BACKBONES, HEADS, EMBEDDERS, MITIGATIONS, GENERATORS):
        assert isinstance(reg, Registry) and reg.names()
    assert BACKBONES.names()[:2] == ["iresnet18", "iresnet34"]
    assert list_backbones()[-2:] == ["iresnet:D1,D2,D3,D4[@W1,W2,W3,W4]", "timm:<name>"]
    with pytest.raises(SettingsError, match="timm:<name>") as err:
        create_backbone("resnet9000")
    assert err.value.field == "arch"
    assert HEADS.names() == ["arcface", "cosface", "combined"] and "sface" in EMBEDDERS
    assert GENERATORS.get("EG3D_Age").__name__ == "EG3DAgeGenerator"
