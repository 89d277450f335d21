"""8-bit training forwards keep no activation alive (bitsandbytes keeps every 8-bit layer's input); same numbers.

Device-agnostic: the layers are built on the CPU, or on CUDA when a GPU is visible (bitsandbytes' int8
kernels there), and every check holds on both.
"""

from __future__ import annotations

import gc
import weakref

import bitsandbytes as bnb
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from peftkit.quantization import describe_int8_paths, enable_fast_int8, load_base
from peftkit.quantization.lean_int8 import dequantized_weight, enable_lean_training, lean_linear_class

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def int8_layer(in_features: int = 32, out_features: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features)
    layer = bnb.nn.Linear8bitLt(in_features, out_features, has_fp16_weights=False, threshold=6.0)
    layer.load_state_dict(linear.state_dict())
    return layer.to(DEVICE)  # quantises


def input_is_kept_alive(layer: nn.Module, dtype: torch.dtype) -> bool:
    """Whether the layer's training forward keeps a reference to its input after returning."""
    # 2-D: bitsandbytes' CUDA matmul keeps a reshaped view of a 3-D input (another object, same memory)
    leaf = torch.randn(12, 32, device=DEVICE, dtype=dtype, requires_grad=True)
    x = leaf * 2.0  # not a leaf: only the layer's autograd context could keep it
    probe = weakref.ref(x)
    out = layer.train()(x)
    del x
    gc.collect()
    kept = probe() is not None
    out.float().sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    return kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitsandbytes_keeps_the_input_and_the_lean_layer_does_not(dtype: torch.dtype) -> None:
    plain = int8_layer()
    assert input_is_kept_alive(plain, dtype)  # the leak this module exists for
    lean = int8_layer()
    assert enable_lean_training(nn.Sequential(lean)) == 1 and type(lean) is lean_linear_class()
    assert not input_is_kept_alive(lean, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_forward_and_gradients_equal_bitsandbytes(dtype: torch.dtype) -> None:
    plain, lean = int8_layer(), int8_layer()
    enable_lean_training(nn.Sequential(lean))
    x = torch.randn(5, 32, device=DEVICE, dtype=dtype)
    x[:, 7] *= 20  # an outlier column: bitsandbytes' decomposition must be the same on both
    grad_out = torch.randn(5, 16, device=DEVICE, dtype=dtype)
    results = []
    for layer in (plain, lean):
        leaf = x.clone().requires_grad_(True)
        out = layer.train()(leaf)
        (out * grad_out).float().sum().backward()
        results.append((out.detach(), leaf.grad))
    (out_plain, grad_plain), (out_lean, grad_lean) = results
    assert torch.equal(out_lean, out_plain)  # the very same forward
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-4}
    assert_close(grad_lean, grad_plain, **tolerance)  # both grad_out @ dequant(W)
    expected = grad_out.double() @ dequantized_weight(lean, torch.float64)
    assert_close(grad_lean.double(), expected, **tolerance)


def test_a_trained_bias_gets_its_gradient() -> None:
    lean = int8_layer()
    enable_lean_training(nn.Sequential(lean))
    lean.bias.requires_grad_(True)
    grad_out = torch.randn(6, 16, device=DEVICE)
    (lean.train()(torch.randn(6, 32, device=DEVICE)) * grad_out).sum().backward()
    assert_close(lean.bias.grad, grad_out.sum(0))


def test_load_base_installs_the_lean_layers_and_the_fast_path_goes_back_to_them(tiny_model_dir) -> None:
    model = load_base(tiny_model_dir("bert"), num_labels=5, load_in_8bit=True, dtype=torch.bfloat16)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert layers and all(type(m) is lean_linear_class() for m in layers)
    assert describe_int8_paths(model)["bnb"] == 12  # bitsandbytes' own kernels run their forward
    if DEVICE == "cpu":
        enable_fast_int8(model)
        assert describe_int8_paths(model)["idle"] == 12
        enable_fast_int8(model, enabled=False)
        assert all(type(m) is lean_linear_class() for m in layers)  # back to what load_base installed
