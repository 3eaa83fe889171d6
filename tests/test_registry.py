"""Registries: decorator registration, wildcards, entry-point plugins, helpful errors."""

import sys

import pytest

from xaibench.errors import UserError
from xaibench.registry import Registry


def test_entry_point_plugin_is_loaded(tmp_path, monkeypatch):
    pkg = tmp_path / "my_xai_plugin.py"
    pkg.write_text(
        "import xaibench_test_registry_target as t\n"
        "t.REG.register('entry_point_method')(type('EPM', (), {}))\n"
    )
    target = tmp_path / "xaibench_test_registry_target.py"
    target.write_text("REG = None\n")
    dist = tmp_path / "my_xai_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-xai-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[xaibench.test_group]\nmine = my_xai_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import xaibench_test_registry_target as t

    reg = Registry("method", "xaibench.methods", "xaibench.test_group")
    t.REG = reg
    assert "entry_point_method" in reg.names()
    sys.modules.pop("my_xai_plugin", None)


def test_broken_entry_point_names_itself(tmp_path, monkeypatch):
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[xaibench.broken_group]\nbad = no_such_module_for_xaibench\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("method", "xaibench.methods", "xaibench.broken_group")
    with pytest.raises(UserError, match="bad = no_such_module_for_xaibench"):
        reg.names()


def test_resolve_all_lists_wildcards_and_suggestions():
    reg = Registry("widget", "xaibench.errors", "xaibench.no_group")
    for name in ("gradcam", "eigencam", "saliency"):
        reg.register(name)(type(name, (), {}))
    assert reg.resolve("all") == ["eigencam", "gradcam", "saliency"]
    assert reg.resolve("*cam, saliency") == ["eigencam", "gradcam", "saliency"]
    assert reg.resolve("saliency,saliency") == ["saliency"]
    with pytest.raises(UserError, match="unknown widget 'gradcm'.*gradcam.*Valid"):
        reg.resolve("gradcm")
    with pytest.raises(UserError, match="no widget matches 'lrp\\*'"):
        reg.resolve("lrp*")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("saliency")(type("other", (), {}))
