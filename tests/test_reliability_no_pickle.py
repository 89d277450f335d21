"""peftkit never unpickles: no pickle-family imports, every torch.load has weights_only=True.

A static scan of the package source (``ast``, so comments and strings do not count), plus a
behavioural check: a checkpoint whose ``optimizer.bin`` or RNG-state file is a malicious pickle,
or whose files are truncated, is refused on resume (naming the file) without running any code. ``tests/test_io.py::test_never_unpickles`` checks that loading
an adapter calls neither ``pickle.load`` nor ``torch.load``.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import peftkit
from peftkit.config import TrainConfig
from peftkit.errors import TrainingError
from peftkit.training import build_accelerator, reset_accelerate_state, train
from tests.tiny_models import make_batch, make_model

PACKAGE = Path(peftkit.__file__).parent
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "joblib", "marshal"}
UNSAFE_CALLS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("numpy", "load")}


def _sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20, "the scan must see the whole package"
    return files


def _violations(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """Unpickling patterns in one source file, as ``file:line: what``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    where = path.relative_to(root)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
            if node.module == "torch" and any(alias.name == "load" for alias in node.names):
                found.append(
                    f"{where}:{node.lineno}: from torch import load (use torch.load(..., weights_only=True))"
                )
        else:
            names = []
        found += [f"{where}:{node.lineno}: imports {name}" for name in names if name in PICKLE_MODULES]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            keywords = {k.arg: k.value for k in node.keywords}
            if owner_name == "torch" and node.func.attr == "load":
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    found.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            if (owner_name, node.func.attr) in UNSAFE_CALLS:
                allow = keywords.get("allow_pickle")
                if owner_name != "numpy" or (isinstance(allow, ast.Constant) and allow.value is True):
                    found.append(f"{where}:{node.lineno}: {owner_name}.{node.func.attr}")
    return found


def test_the_package_source_has_no_unpickling() -> None:
    problems = [problem for path in _sources() for problem in _violations(path)]
    assert not problems, "unpickling found:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import pickle\n", "imports pickle"),
        ("import dill as d\n", "imports dill"),
        ("from cloudpickle import loads\n", "imports cloudpickle"),
        ("import torch\ntorch.load('x')\n", "without weights_only=True"),
        ("import torch\ntorch.load('x', weights_only=False)\n", "without weights_only=True"),
        ("from torch import load\n", "from torch import load"),
        ("import numpy\nnumpy.load('x', allow_pickle=True)\n", "numpy.load"),
    ],
)
def test_the_scanner_catches_each_pattern(tmp_path: Path, code: str, expected: str) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(code)
    problems = _violations(probe, tmp_path)
    assert any(expected in p for p in problems), problems
    probe.write_text("import torch\nimport numpy\ntorch.load('x', weights_only=True)\nnumpy.load('x')\n")
    assert not _violations(probe, tmp_path)


class _Exploit:
    """Unpickling this creates a marker file (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory: pytest.TempPathFactory):
    """``run(output_dir, **overrides)``: two steps of LoRA training on a tiny BERT, checkpoint every step."""
    batch = make_batch("bert", batch=8, seq=6)
    data = [{k: v[i] for k, v in batch.items()} for i in range(8)]

    def run(output_dir: Path, **overrides) -> None:
        reset_accelerate_state()
        config = TrainConfig(output_dir=str(output_dir), epochs=1, batch_size=4, **overrides)
        torch.manual_seed(0)
        model = peftkit.wrap(make_model("bert").train(), "lora", r=2)
        try:
            train(model, DataLoader(data, batch_size=4), config, accelerator=build_accelerator(config))
        finally:
            reset_accelerate_state()

    return run


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("optimizer.bin", "exploit"),
        ("random_states_0.pkl", "exploit"),
        ("optimizer.bin", "truncate"),
        ("model.safetensors", "truncate"),
    ],
)
def test_malicious_or_damaged_checkpoint_files_are_refused_naming_the_file(
    tmp_path: Path, checkpoint_run, name: str, damage: str
) -> None:
    checkpoint_run(tmp_path / "run", checkpoint_every=1)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-2"
    marker = tmp_path / "pwned"
    if damage == "exploit":
        (checkpoint / name).write_bytes(pickle.dumps(_Exploit(marker)))
    else:
        _truncate(checkpoint / name)
    with pytest.raises(TrainingError) as info:
        checkpoint_run(tmp_path / "run", resume_from=str(checkpoint))
    assert not marker.exists(), "the pickle's code ran"
    message = str(info.value)
    assert str(checkpoint) in message and f"{name} in it is damaged" in message, message
    assert "older checkpoint" in message
