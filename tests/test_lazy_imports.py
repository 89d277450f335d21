"""``import peftkit`` is cheap, and its public names resolve on first use (fresh interpreters)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors")


def run_fresh(code: str) -> str:
    """Run ``code`` in a new interpreter and return its stdout (fails the test on a non-zero exit)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_help_and_errors_need_no_heavy_library(tmp_path) -> None:
    missing = str(tmp_path / "no-such-adapter")
    out = run_fresh(
        f"""
        import contextlib, io, sys
        import peftkit, peftkit.cli
        from peftkit import PeftkitError, UnknownMethodError
        for argv in (["--help"], ["merge", "--help"], ["combine", "--help"], ["--version"]):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                peftkit.cli.main(argv)
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):  # mistyped adapter paths fail before any heavy import
            assert peftkit.cli.main(["inspect", {missing!r}]) == 1
            assert peftkit.cli.main(["merge", "--base", "b", "--adapter", {missing!r}, "--out", "o"]) == 1
            assert peftkit.cli.main(["combine", {missing!r}, {missing!r}, "--out", "o"]) == 1
        assert errors.getvalue().count("does not exist") == 3, errors.getvalue()
        print(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))
        """
    )
    assert out.strip() == "[]"


def test_public_names_survive_submodule_imports() -> None:
    # peftkit.wrap, peftkit.summary and peftkit.methods are both functions and submodule names:
    # importing the submodules first must not hide the functions.
    out = run_fresh(
        """
        import peftkit.methods.lora, peftkit.wrap, peftkit.summary, peftkit.merge.tensors
        import peftkit, peftkit.merge
        assert callable(peftkit.wrap) and peftkit.wrap.__module__ == "peftkit.wrap", peftkit.wrap
        assert callable(peftkit.summary) and peftkit.summary.__module__ == "peftkit.summary"
        assert peftkit.methods() == sorted(peftkit.methods()) and "lora" in peftkit.methods()
        missing = [n for n in peftkit.__all__ if n not in dir(peftkit)]
        assert not missing, missing
        for name in peftkit.__all__ + ["__version__"]:
            getattr(peftkit, name)
        for name in peftkit.merge.__all__:
            getattr(peftkit.merge, name)
        assert not hasattr(peftkit, "no_such_name")
        assert callable(peftkit.quantization.load_base) and callable(peftkit.training.train)
        from peftkit.wrap import on_optimizer_step  # the submodule itself still imports
        print(peftkit.on_optimizer_step is on_optimizer_step)
        """
    )
    assert out.strip() == "True"


def test_methods_and_inspect_do_not_import_peft(tmp_path) -> None:
    # peft takes seconds to import; listing methods and describing adapter files never need it.
    import peftkit
    from tests.tiny_models import make_model

    for method in ("lora", "adapter"):
        peftkit.save_adapter(peftkit.wrap(make_model("bert"), method), tmp_path / method)
    out = run_fresh(
        f"""
        import contextlib, io, json, sys
        import peftkit.cli
        listed, described = io.StringIO(), {{}}
        with contextlib.redirect_stdout(listed):
            assert peftkit.cli.main(["methods", "--json"]) == 0
        for method in ("lora", "adapter"):
            text = io.StringIO()
            with contextlib.redirect_stdout(text):
                assert peftkit.cli.main(["inspect", "--json", {str(tmp_path)!r} + "/" + method]) == 0
            described[method] = json.loads(text.getvalue())["method"]
        names = [row["name"] for row in json.loads(listed.getvalue())["methods"]]
        print(json.dumps([names, described, sorted(m for m in sys.modules if m.split(".")[0] == "peft")]))
        """
    )
    names, described, peft_modules = json.loads(out)
    assert {"lora", "adalora", "adapter"} <= set(names)
    assert described == {"lora": "lora", "adapter": "adapter"}
    assert peft_modules == []


@pytest.mark.parametrize("recipe", ["ner_lora", "sentiment_adapter", "clm_adalora"])
def test_recipe_help_does_not_import_peft(recipe: str) -> None:
    script = Path(__file__).resolve().parent.parent / "recipes" / f"{recipe}.py"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "--output-dir" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "torch" in imported  # the measurement works: the recipe does import torch up front
    assert not {name for name in imported if name.split(".")[0] in ("peft", "bitsandbytes")}
