"""Install test plugins as if by ``pip install``: a module plus a dist-info declaring an entry point."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from peftkit import registry

PLUGIN_SOURCE = Path(__file__).parent / "plugin_fixture" / "peftkit_scale_plugin.py"


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


@contextmanager
def scale_plugin_installed(site: Path) -> Iterator[None]:
    """The out-of-tree ``scale`` method (tests/plugin_fixture), installed and loaded for the block."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        install_distribution(
            site,
            monkeypatch,
            "peftkit_scale_plugin",
            PLUGIN_SOURCE.read_text(),
            "peftkit-scale-plugin",
            "scale = peftkit_scale_plugin:register",
        )
        registry.load_plugins(reload=True)
        try:
            yield
        finally:
            registry.unregister_method("scale")
            sys.modules.pop("peftkit_scale_plugin", None)
    registry.load_plugins(reload=True)
