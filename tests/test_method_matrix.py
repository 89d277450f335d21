"""The feature matrix, generated from the registry: every method x {bert, gpt2, llama} x every promise.

The methods are the registry's built-ins plus the out-of-tree ``scale`` plugin (tests/plugin_fixture),
installed as a distribution: what peftkit promises a method, it promises a plugin too, without the
plugin touching peftkit. Each column checks what ``peftkit methods`` says of the method:

* identity at step 0 (``starts_at_identity``; otherwise the outputs must differ),
* one training step changes only adapter and head weights and lowers the loss,
* save -> load gives the same logits,
* the method trains on an 8-bit base, and its adapter reloads exactly there,
* merge folds it (``mergeable``) with the same logits, or refuses with MergeError,
* combine (``combine_kind``): weights (1, 0) reproduce the first adapter, or MergeError,
* an interrupted, resumed training run ends on exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import peftkit
from peftkit import registry
from peftkit.config import TrainConfig
from peftkit.errors import MergeError
from peftkit.merge import fold_adapter
from peftkit.state import adapter_parameters
from peftkit.training import build_accelerator, reset_accelerate_state, train
from tests.plugins import scale_plugin_installed
from tests.test_training_loop import InterruptAt
from tests.tiny_models import FAMILIES, make_batch, make_model, save_tiny_model

METHODS = [ep.name for ep in registry.builtin_entry_points()] + ["scale"]
TASKS = {
    "bert": ("token-classification", 5),
    "gpt2": ("sequence-classification", 3),
    "llama": ("causal-lm", None),
}

pytestmark = pytest.mark.parametrize("family", FAMILIES)


@pytest.fixture(scope="module", autouse=True)
def scale_plugin(tmp_path_factory: pytest.TempPathFactory):
    with scale_plugin_installed(tmp_path_factory.mktemp("site")):
        yield


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny base per family (for 8-bit loading)."""
    dirs = {}
    for family in FAMILIES:
        dirs[family] = tmp_path_factory.mktemp(f"base-{family}")
        save_tiny_model(family, dirs[family])
    return dirs


def spec_of(method: str) -> registry.MethodSpec:
    return peftkit.get_method(method)


def wrapped(family: str, method: str, seed: int = 0, model: torch.nn.Module | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    return peftkit.wrap(
        model if model is not None else make_model(family), method, **spec_of(method).example_options
    )


def train_steps(model: torch.nn.Module, family: str, steps: int = 2, lr: float = 1e-2) -> list[float]:
    """Adam steps on a fixed batch (eval mode: no dropout), inputs on the model's device."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in make_batch(family).items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(1, steps + 1):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        peftkit.on_optimizer_step(model, step)
        optimizer.zero_grad()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(model(**batch).loss.item())
    return losses


@torch.no_grad()
def logits(model: torch.nn.Module, family: str) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in make_batch(family).items()}).logits.float().cpu()


@pytest.mark.parametrize("method", METHODS)
def test_identity_at_step_zero(family: str, method: str) -> None:
    base = logits(make_model(family), family)
    got = logits(wrapped(family, method), family)
    if spec_of(method).starts_at_identity:
        torch.testing.assert_close(got, base)
    else:
        assert not torch.allclose(got, base), "a method declared not to start at identity changed nothing"


@pytest.mark.parametrize("method", METHODS)
def test_one_step_trains_only_adapter_and_head(family: str, method: str) -> None:
    model = wrapped(family, method)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and trainable <= set(adapter_parameters(model, "default"))
    losses = train_steps(model, family)
    assert losses[-1] < losses[0]
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"frozen {name} changed"


@pytest.mark.parametrize("method", METHODS)
def test_save_then_load_gives_the_same_logits(family: str, method: str, tmp_path: Path) -> None:
    model = wrapped(family, method)
    train_steps(model, family)
    expected = logits(model, family)
    peftkit.save_adapter(model, tmp_path / "adapter")
    torch.testing.assert_close(
        logits(peftkit.load_adapter(make_model(family), tmp_path / "adapter"), family), expected
    )


@pytest.mark.parametrize("method", METHODS)
def test_trains_on_an_8bit_base_and_reloads_there(
    family: str, method: str, base_dirs, tmp_path: Path
) -> None:
    pytest.importorskip("bitsandbytes")
    task, num_labels = TASKS[family]

    def load8():
        return peftkit.load_base(
            str(base_dirs[family]), task=task, num_labels=num_labels, load_in_8bit=True
        ).eval()

    model = wrapped(family, method, model=load8())
    assert peftkit.quantization.is_quantized(model)
    losses = train_steps(model, family)
    assert losses[-1] < losses[0]
    expected = logits(model, family)
    peftkit.save_adapter(model, tmp_path / "adapter")
    torch.testing.assert_close(logits(peftkit.load_adapter(load8(), tmp_path / "adapter"), family), expected)


@pytest.mark.parametrize("method", METHODS)
def test_merge_folds_with_the_same_logits_or_refuses(family: str, method: str) -> None:
    model = wrapped(family, method)
    train_steps(model, family)
    expected = logits(model, family)
    if not spec_of(method).mergeable:
        with pytest.raises(MergeError):
            fold_adapter(model)
        return
    merged = fold_adapter(model)
    assert peftkit.state.get_state(merged) is None
    torch.testing.assert_close(logits(merged, family), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_combine_reproduces_the_first_adapter_with_weights_one_and_zero(
    family: str, method: str, tmp_path: Path
) -> None:
    dirs = []
    for seed in (0, 1):
        model = wrapped(family, method, seed=seed)
        train_steps(model, family, lr=1e-2 * (seed + 1))
        dirs.append(peftkit.save_adapter(model, tmp_path / f"a{seed}"))
        if seed == 0:
            expected = logits(model, family)
    if spec_of(method).combine_kind == "no":
        with pytest.raises(MergeError, match="cannot be combined"):
            peftkit.combine_adapters(dirs, [1.0, 0.0], out_dir=tmp_path / "mix")
        return
    out = peftkit.combine_adapters(dirs, [1.0, 0.0], out_dir=tmp_path / "mix")
    got = logits(peftkit.load_adapter(make_model(family), out), family)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def _fit(
    tmp_path: Path, family: str, method: str, name: str, collate_fn=None, **overrides
) -> torch.nn.Module:
    reset_accelerate_state()
    batch = make_batch(family, batch=16, seq=8, seed=1)
    data = [{k: v[i] for k, v in batch.items()} for i in range(16)]
    config = TrainConfig(
        output_dir=str(tmp_path / name),
        epochs=2,
        batch_size=4,
        lr=5e-3,
        seed=7,
        checkpoint_every=100,
        **overrides,
    )
    model = wrapped(family, method, model=make_model(family).train())
    loader = DataLoader(data, batch_size=4, shuffle=True, collate_fn=collate_fn)
    train(model, loader, config, accelerator=build_accelerator(config))
    return model


@pytest.mark.parametrize("method", METHODS)
def test_interrupted_and_resumed_training_ends_on_the_same_weights(
    family: str, method: str, tmp_path: Path, python_sigint
) -> None:
    try:
        full = _fit(tmp_path, family, method, "full")
        _fit(tmp_path, family, method, "resumed", collate_fn=InterruptAt(6))
        resumed = _fit(tmp_path, family, method, "resumed", resume=True)
    finally:
        reset_accelerate_state()
    expected = {n: p for n, p in full.named_parameters() if p.requires_grad}
    got = {n: p for n, p in resumed.named_parameters() if p.requires_grad}
    assert got.keys() == expected.keys()
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
