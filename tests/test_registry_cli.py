import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest
from typer.testing import CliRunner

from didae_xai import __version__, registry
from didae_xai.cli import app


def test_builtin_entries_are_registered():
    assert "square" in registry.names("dataset")
    assert {"timm", "open_clip"} <= set(registry.names("backbone"))
    bench = registry.create("dataset", "square", size=32, n_generator=16, test_per_group=4, n_poisoned=100, p=0.2)
    assert len(bench.train) + len(bench.val) == 100


def test_unknown_name_suggests_close_match():
    with pytest.raises(KeyError, match="Did you mean 'square'"):
        registry.get("dataset", "sqare")
    with pytest.raises(ValueError, match="Unknown registry kind"):
        registry.names("model")


def test_third_party_entry_point(tmp_path, monkeypatch):
    # A third-party package: a module that registers an explainer when its entry point is loaded.
    (tmp_path / "my_plugin.py").write_text(textwrap.dedent('''
        from didae_xai.registry import register

        @register("explainer", "my_explainer")
        def my_explainer(scale=1):
            """A third-party explainer."""
            return {"scale": scale}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name="my_plugin", value="my_plugin", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_loaded", False)
    try:
        assert "my_explainer" in registry.names("explainer")
        assert registry.create("explainer", "my_explainer", scale=3) == {"scale": 3}
        assert registry.get("explainer", "my_explainer").source == "my_plugin"
        assert registry.get("explainer", "my_explainer").description == "A third-party explainer."
    finally:
        registry._ENTRIES["explainer"].pop("my_explainer", None)
        sys.modules.pop("my_plugin", None)


def test_broken_plugin_warns_but_does_not_break(monkeypatch):
    ep = EntryPoint(name="broken", value="no_such_module_xyz", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep])
    monkeypatch.setattr(registry, "_loaded", False)
    with pytest.warns(UserWarning, match="plugin 'broken'"):
        names = registry.names("dataset")
    assert "square" in names


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        registry.register("dataset", "square")(lambda: None)


def test_cli_version_and_list():
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("square", "timm", "open_clip", "celeba", "metadata_csv"):
        assert name in result.output
    result = runner.invoke(app, ["list", "backbone"])
    assert "timm" in result.output and "square" not in result.output
    result = runner.invoke(app, ["list", "models"])
    assert result.exit_code == 2 and "Unknown kind" in result.output
