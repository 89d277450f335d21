"""The method registry, and a third-party plugin discovered through its entry point."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers

import peftkit
from peftkit import cli, registry
from peftkit.errors import InvalidOptionError, UnknownMethodError
from peftkit.methods.base import MethodConfig
from tests.plugins import install_distribution, scale_plugin_installed
from tests.tiny_models import make_batch, make_model


def test_builtins_are_registered() -> None:
    names = peftkit.methods()
    assert {"lora", "dora", "adalora", "ia3", "adapter", "parallel", "prefix"} <= set(names)
    assert names == sorted(names)
    specs = {spec.name: spec for spec in peftkit.method_specs()}
    assert all(specs[m].mergeable for m in ("lora", "dora", "adalora", "ia3"))
    assert not any(specs[m].mergeable for m in ("adapter", "parallel", "prefix"))


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


@pytest.fixture
def installed_plugin(tmp_path: Path):
    """Simulate `pip install peftkit-scale-plugin`: a module plus a dist-info with an entry point."""
    with scale_plugin_installed(tmp_path):
        yield


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

    # combine and merge, through the command line, with nothing in peftkit knowing the method
    base = tmp_path / "base"
    make_model("bert").save_pretrained(base)
    other = peftkit.wrap(make_model("bert"), "scale", target_modules=["query", "value"])
    peftkit.save_adapter(other, tmp_path / "other")
    assert cli.main(["combine", str(tmp_path / "scale-adapter"), str(tmp_path / "other"), "--weights", "1", "0",
                     "--out", str(tmp_path / "mix")]) == 0  # fmt: skip
    mixed = peftkit.load_adapter(make_model("bert"), tmp_path / "mix")
    assert cli.main(["merge", "--base", str(base), "--adapter", str(tmp_path / "scale-adapter"),
                     "--out", str(tmp_path / "merged")]) == 0  # fmt: skip
    merged = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(mixed(**batch).logits, trained_logits)
        torch.testing.assert_close(merged.eval()(**batch).logits, trained_logits, rtol=1e-4, atol=1e-5)


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
