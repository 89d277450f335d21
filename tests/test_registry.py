"""The method registry, and a third-party plugin discovered through its entry point."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

import peftkit
from peftkit import registry
from peftkit.errors import InvalidOptionError, UnknownMethodError
from peftkit.methods.base import MethodConfig
from tests.tiny_models import make_batch, make_model

PLUGIN_SOURCE = Path(__file__).parent / "plugin_fixture" / "peftkit_scale_plugin.py"


def test_builtins_are_registered() -> None:
    names = peftkit.methods()
    assert {"lora", "adalora", "adapter"} <= set(names)
    assert names == sorted(names)
    specs = {spec.name: spec for spec in peftkit.method_specs()}
    assert specs["lora"].mergeable and specs["adalora"].mergeable and not specs["adapter"].mergeable


def test_register_as_decorator_and_directly() -> None:
    def build(model, config, adapter_name, targets):
        """Do nothing."""

    try:
        spec = peftkit.register_method("noop_direct", MethodConfig, build)
        assert spec.name == "noop_direct" and "noop_direct" in peftkit.methods()

        @peftkit.register_method("noop_deco")
        def build2(model, config, adapter_name, targets):
            """Also nothing."""

        assert build2.__doc__ == "Also nothing."
        assert peftkit.get_method("noop_deco").description == "Also nothing."
        with pytest.raises(InvalidOptionError, match="already registered"):
            peftkit.register_method("noop_deco", MethodConfig, build)
        with pytest.raises(InvalidOptionError, match="invalid"):
            peftkit.register_method("Bad Name", MethodConfig, build)
    finally:
        registry.unregister_method("noop_direct")
        registry.unregister_method("noop_deco")


def test_unknown_method_names_plugin_package() -> None:
    with pytest.raises(UnknownMethodError, match="package 'peftkit-foo'"):
        registry.get_method("foo", plugin_hint="peftkit-foo")


def install_distribution(
    site: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str, dist: str, entry_point: str
) -> None:
    """Simulate `pip install <dist>`: ``module.py`` plus a dist-info declaring one peftkit entry point."""
    (site / f"{module}.py").write_text(source)
    dist_info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[peftkit.methods]\n{entry_point}\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Simulate `pip install peftkit-scale-plugin`: a module plus a dist-info with an entry point."""
    install_distribution(
        tmp_path,
        monkeypatch,
        "peftkit_scale_plugin",
        PLUGIN_SOURCE.read_text(),
        "peftkit-scale-plugin",
        "scale = peftkit_scale_plugin:register",
    )
    registry.load_plugins(reload=True)
    yield
    registry.unregister_method("scale")
    sys.modules.pop("peftkit_scale_plugin", None)
    registry.load_plugins(reload=True)


def test_plugin_is_discovered_trained_saved_and_loaded(installed_plugin, tmp_path: Path) -> None:
    assert "scale" in peftkit.methods()
    assert peftkit.get_method("scale").source == "peftkit-scale-plugin"
    batch = make_batch("bert")
    model = peftkit.wrap(make_model("bert"), "scale", target_modules=["query", "value"])
    torch.testing.assert_close(model(**batch).logits, make_model("bert")(**batch).logits)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(
        "scale_vector" in n or n.startswith("classifier.modules_to_save") for n in trainable
    )

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        trained_logits = model(**batch).logits
        assert model(**batch).loss < loss

    peftkit.save_adapter(model, tmp_path / "scale-adapter")
    reloaded = peftkit.load_adapter(make_model("bert"), tmp_path / "scale-adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, trained_logits)


def test_entry_point_naming_a_decorated_builder_is_not_called_and_credits_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many plugins register at import time and point their entry point at the builder itself."""
    source = (
        "import dataclasses\n"
        "import peftkit\n"
        "from peftkit.methods.base import MethodConfig\n\n"
        "@dataclasses.dataclass\n"
        "class DecoConfig(MethodConfig):\n"
        "    method_name = 'deco'\n\n"
        "@peftkit.register_method('deco', config_cls=DecoConfig)\n"
        "def build(model, config, adapter_name, targets):\n"
        "    return None\n"
    )
    install_distribution(
        tmp_path, monkeypatch, "deco_plugin", source, "deco-plugin-dist", "deco = deco_plugin:build"
    )
    try:
        errors = registry.load_plugins(reload=True)
        assert "deco" not in errors
        assert peftkit.get_method("deco").source == "deco-plugin-dist"
    finally:
        registry.unregister_method("deco")
        sys.modules.pop("deco_plugin", None)


def test_broken_plugin_does_not_break_peftkit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = "raise ImportError('missing dependency xyz')\n"
    install_distribution(
        tmp_path, monkeypatch, "broken_plugin", source, "broken-plugin", "broken = broken_plugin:register"
    )
    try:
        errors = registry.load_plugins(reload=True)
        assert "missing dependency xyz" in errors["broken"]
        assert "lora" in peftkit.methods()
        with pytest.raises(UnknownMethodError, match="failed to load"):
            peftkit.get_method("broken")
    finally:
        registry._plugin_errors.pop("broken", None)
