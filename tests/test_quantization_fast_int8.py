"""The fast int8 CPU inference path: exactness of the integer GEMM, error bounds vs fp32, fallbacks."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from peftkit.errors import QuantizationError
from peftkit.quantization import describe_int8_paths, enable_fast_int8, quantized_linear_bytes
from peftkit.quantization.activations import clear_shared
from peftkit.quantization.int8_kernels import activation_code_max

pytestmark = pytest.mark.skipif(activation_code_max() is None, reason="oneDNN int8 kernels unavailable")


def int8_layer(in_features: int, out_features: int, threshold: float = 0.0, seed: int = 0):
    """``(fp32 nn.Linear, the same weights as a CPU bnb.nn.Linear8bitLt)``."""
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features)
    layer = bnb.nn.Linear8bitLt(in_features, out_features, has_fp16_weights=False, threshold=threshold)
    layer.load_state_dict(linear.state_dict())
    layer = layer.to("cpu")  # quantises
    assert layer.weight.dtype == torch.int8
    return linear, layer


def codes_and_scales(layer) -> tuple[torch.Tensor, torch.Tensor]:
    state = layer.state
    cb = state.CB if state.CB is not None else layer.weight.CB
    scb = state.SCB if state.SCB is not None else layer.weight.SCB
    return cb.double(), scb.double()


def error_bound(x: torch.Tensor, layer, threshold: float) -> torch.Tensor:
    """Worst-case |fast - fp32| per output element.

    Weights are rounded to the nearest of 127 steps of SCB/127 per row (error <= SCB/254 each).
    Activations are rounded per token to 255 steps over the row's min..max (outlier columns, with
    |x| >= threshold somewhere, read as 0 there and stay exact), then halved to 7 bits where the
    CPU needs it: error <= one 8-bit step (half a step with 8-bit codes).
    """
    cb, scb = codes_and_scales(layer)
    x2 = x.reshape(-1, x.shape[-1]).double()
    w = cb * (scb / 127).unsqueeze(1)
    normal = torch.ones(x2.shape[1], dtype=torch.bool)
    if threshold > 0:
        normal = x2.abs().amax(0) < threshold
    coded = x2 * normal
    step = (coded.amax(1, keepdim=True) - coded.amin(1, keepdim=True)) / 255
    activation_error = step * (1.0 if activation_code_max() == 127 else 0.5)
    weight_part = x2.abs() @ (scb / 254).expand(w.shape[1], -1)
    activation_part = activation_error * (w.abs() * normal).sum(1)
    bound = weight_part + activation_part
    return (bound * 1.001 + 1e-5).reshape(*x.shape[:-1], -1)


def fast(layer):
    return enable_fast_int8(nn.Sequential(layer))[0].eval()


SHAPES = [(1, 40, 24), (7, 40, 24), (33, 64, 96), (5, 37, 19), (1, 37, 19), (1, 38, 8), (128, 32, 48)]


@pytest.mark.parametrize(("rows", "in_features", "out_features"), SHAPES)
def test_integer_gemm_is_exact_on_grid_inputs(rows: int, in_features: int, out_features: int) -> None:
    # Each token row lies on its own 8-bit grid (min + j * 2**e, j = 0..255, both ends present), so
    # the row-wise codes are exact; with 7-bit codes, j is halved and read back as 2 * (j >> 1) + 0.5.
    # The fast path must then return exactly x_coded @ dequant(W).T + bias, up to float32 rounding.
    _, layer = int8_layer(in_features, out_features)
    generator = torch.Generator().manual_seed(1)
    steps = torch.randint(0, 256, (rows, in_features), generator=generator).double()
    steps[:, 0], steps[:, -1] = 0, 255
    scale = 2.0 ** torch.randint(-6, 1, (rows, 1), generator=generator).double()
    low = -scale * torch.randint(0, 256, (rows, 1), generator=generator).double()
    x = (low + steps * scale).float()
    coded = steps if activation_code_max() == 255 else 2 * torch.div(steps, 2, rounding_mode="floor") + 0.5
    cb, scb = codes_and_scales(layer)
    expected = (low + coded * scale) @ (cb * (scb / 127).unsqueeze(1)).t() + layer.bias.double()
    with torch.inference_mode():
        got = fast(layer)(x)
    assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("shape", [(6, 40), (2, 5, 40), (3, 1, 4, 40), (1, 40)])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_fast_path_within_the_quantisation_error_bound(shape: tuple[int, ...], threshold: float) -> None:
    linear, layer = int8_layer(40, 24, threshold=threshold)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=generator)
    x[..., 3] *= 12  # an outlier feature, as in real transformer activations
    with torch.inference_mode():
        reference = linear(x)
        got = fast(layer)(x)
    assert got.shape == reference.shape == (*shape[:-1], 24)
    excess = (got - reference).abs().double() - error_bound(x, layer, threshold)
    assert excess.max() <= 0, f"error exceeds the bound by {excess.max().item():.3g}"


def test_inputs_of_changing_sizes_reuse_scratch_space_correctly() -> None:
    """Small, larger (the scratch buffers grow), small again, many sizes (cached views are dropped): as computed alone."""
    linear, layer = int8_layer(40, 24)
    layer = fast(layer)
    generator = torch.Generator().manual_seed(5)
    inputs = [
        torch.randn(rows, 40, generator=generator) for rows in (3, 300, 3, 17, 300, *range(1, 40, 2), 300)
    ]
    with torch.inference_mode():
        got = [layer(x) for x in inputs]
        for x, out in zip(inputs, got, strict=True):
            excess = (out - linear(x)).abs().double() - error_bound(x, layer, 0.0)
            assert excess.max() <= 0
            assert torch.equal(layer(x.clone()), out)  # alone, on a fresh tensor: the same bits


def test_an_inference_mode_pass_does_not_break_later_training_or_no_grad_passes() -> None:
    """Scratch space first allocated under inference_mode (e.g. evaluating first) is reused by training."""
    clear_shared()
    linear, layer = int8_layer(40, 24)
    layer = enable_fast_int8(nn.Sequential(layer))[0]
    generator = torch.Generator().manual_seed(6)
    big, small = torch.randn(64, 40, generator=generator), torch.randn(8, 40, generator=generator)
    with torch.inference_mode():
        layer.eval()(big)
    x = small.clone().requires_grad_(True)
    out = layer.train()(x)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        again = layer.eval()(big)
    excess = (again - linear(big)).abs().double() - error_bound(big, layer, 0.0)
    assert excess.max() <= 0


def test_outlier_columns_are_exact_when_decomposed() -> None:
    linear, layer = int8_layer(32, 16, threshold=6.0)
    x = torch.zeros(4, 32)
    x[:, 5] = torch.tensor([50.0, -80.0, 9.0, 7.5])  # only outliers: the int8 part contributes nothing
    cb, scb = codes_and_scales(layer)
    expected = x.double() @ (cb * (scb / 127).unsqueeze(1)).t() + layer.bias.double()
    with torch.inference_mode():
        got = fast(layer)(x)
    assert_close(got.double(), expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("previous_outliers", [[], [3], [3, 7], [7, 11]])
def test_result_depends_only_on_the_input_not_on_earlier_outliers(previous_outliers: list[int]) -> None:
    # Each layer first tries the outlier columns of its previous input; the result must not change.
    _, layer = int8_layer(32, 16, threshold=6.0)
    layer = fast(layer)
    x = torch.randn(9, 32)
    x[:, 3] *= 10
    before = torch.randn(5, 32)
    before[:, previous_outliers] = 40.0
    with torch.inference_mode():
        expected = layer(x.clone())  # its own outliers tried first: column 3
        layer(before)
        got = layer(x.clone())
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "inference_tensor_under_no_grad"])
def test_input_is_left_unchanged(mode: str) -> None:
    _, layer = int8_layer(32, 16, threshold=6.0)
    layer = fast(layer)
    with torch.inference_mode() if mode != "no_grad" else torch.no_grad():
        x = torch.randn(4, 32)
        x[:, [2, 9]] *= 20
        original = x.clone()
    context = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with context:
        layer(x)
        layer(x)
    assert torch.equal(x, original)


def test_zero_and_empty_inputs() -> None:
    _, layer = int8_layer(16, 8)
    layer = fast(layer)
    with torch.inference_mode():
        assert_close(layer(torch.zeros(3, 16)), layer.bias.expand(3, 8))
        assert layer(torch.zeros(0, 16)).shape == (0, 8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_give_outputs_of_the_same_dtype(dtype: torch.dtype) -> None:
    linear, layer = int8_layer(32, 16)
    x = torch.randn(5, 32)
    with torch.inference_mode():
        got = fast(layer)(x.to(dtype))
        reference = linear(x)
    assert got.dtype == dtype
    assert_close(got.float(), reference, rtol=0.05, atol=0.05)


def test_shared_input_is_quantised_once_and_invalidated_by_in_place_changes() -> None:
    _, first = int8_layer(32, 16, seed=0)
    _, second = int8_layer(32, 16, seed=1)
    first, second = fast(first), fast(second)
    x = torch.randn(6, 32)
    with torch.no_grad():
        first(x)
        x.mul_(3.0)  # version bump: the cached codes of x are stale now
        got = second(x)
        expected = second(x.clone())
    assert_close(got, expected)


def straight_through_gradient(layer, grad_out: torch.Tensor) -> torch.Tensor:
    """``grad_out @ dequant(W)`` in float64: the input gradient bitsandbytes' backward computes too."""
    cb, scb = codes_and_scales(layer)
    return grad_out.double() @ (cb * (scb / 127).unsqueeze(1))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_with_autograd_takes_the_fast_path_and_backpropagates(mode: str) -> None:
    _, layer = int8_layer(32, 16, threshold=6.0)
    model = enable_fast_int8(nn.Sequential(layer))
    x = torch.randn(4, 3, 32)
    x[..., 5] *= 20  # an outlier column, taken apart from the codes
    with torch.no_grad():
        expected = model.eval()(x)
    model.train(mode == "train")
    leaf = x.clone().requires_grad_(True)
    hidden = leaf * 1.0
    penalty = hidden.square().sum()  # autograd saved `hidden`: touching it in place would break backward
    out = model(hidden)
    assert describe_int8_paths(model) == {"fast_int8": 1, "bnb_fallback": 0, "idle": 0, "bnb": 0}
    assert torch.equal(out.detach(), expected)  # the same numbers as inference
    assert out.requires_grad
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().add(penalty).backward()
    assert_close(leaf.grad.double(), straight_through_gradient(layer, grad_out) + 2 * x.double())


def test_trainable_bias_gets_its_gradient() -> None:
    _, layer = int8_layer(32, 16)
    model = enable_fast_int8(nn.Sequential(layer)).train()
    layer.bias.requires_grad_(True)
    x = torch.randn(6, 32)  # no input gradient wanted: only the bias needs the graph
    grad_out = torch.randn(6, 16)
    (model(x) * grad_out).sum().backward()
    assert describe_int8_paths(model)["fast_int8"] == 1
    assert_close(layer.bias.grad, grad_out.sum(0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gradients_keep_the_input_dtype(dtype: torch.dtype) -> None:
    _, layer = int8_layer(32, 16)
    model = enable_fast_int8(nn.Sequential(layer)).train()
    x = torch.randn(5, 32, dtype=dtype, requires_grad=True)
    out = model(x)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert x.grad.dtype == dtype
    expected = straight_through_gradient(layer, torch.ones(5, 16))
    assert_close(x.grad.double(), expected, rtol=0.02, atol=0.02)


def test_disabled_fast_path_trains_on_bitsandbytes() -> None:
    _, layer = int8_layer(32, 16)
    model = enable_fast_int8(enable_fast_int8(nn.Sequential(layer)), enabled=False).train()
    x = torch.randn(4, 32, requires_grad=True)
    model(x).sum().backward()
    assert describe_int8_paths(model) == {"fast_int8": 0, "bnb_fallback": 0, "idle": 0, "bnb": 1}
    assert_close(x.grad.double(), straight_through_gradient(layer, torch.ones(4, 16)), rtol=0.02, atol=0.02)


def test_enable_disable_and_describe() -> None:
    layers = [int8_layer(32, 32, seed=i)[1] for i in range(3)]
    model = nn.Sequential(*layers, nn.Linear(32, 4))
    assert describe_int8_paths(model) == {"fast_int8": 0, "bnb_fallback": 0, "idle": 0, "bnb": 3}
    assert enable_fast_int8(model) is model
    assert all(isinstance(layer, bnb.nn.Linear8bitLt) for layer in model[:3])  # peft's dispatch still works
    assert describe_int8_paths(model) == {"fast_int8": 0, "bnb_fallback": 0, "idle": 3, "bnb": 0}
    with torch.inference_mode():
        model(torch.randn(2, 32))
    assert describe_int8_paths(model)["fast_int8"] == 3
    assert quantized_linear_bytes(model).packed_bytes == quantized_linear_bytes(model).int8_bytes
    enable_fast_int8(model, enabled=False)
    assert all(type(layer) is bnb.nn.Linear8bitLt for layer in model[:3])
    assert describe_int8_paths(model) == {"fast_int8": 0, "bnb_fallback": 0, "idle": 0, "bnb": 3}
    assert quantized_linear_bytes(model).packed_bytes == 0
    assert describe_int8_paths(nn.Linear(3, 3)) == {"fast_int8": 0, "bnb_fallback": 0, "idle": 0, "bnb": 0}


def test_enable_on_a_model_without_8bit_layers_raises() -> None:
    with pytest.raises(QuantizationError, match="load_in_8bit=True"):
        enable_fast_int8(nn.Sequential(nn.Linear(4, 4)))


def test_wrong_input_width_fails_like_bitsandbytes() -> None:
    _, layer = int8_layer(32, 16)
    with torch.inference_mode(), pytest.raises(RuntimeError):
        fast(layer)(torch.randn(2, 31))


def test_changed_weights_are_repacked() -> None:
    linear, layer = int8_layer(32, 16)
    layer = fast(layer)
    x = torch.randn(3, 32)
    with torch.inference_mode():
        before = layer(x)
    with torch.no_grad():
        layer.state.CB.neg_()  # in place: the packed copy must notice
    with torch.inference_mode():
        after = layer(x)
    assert_close(after - layer.bias, -(before - layer.bias), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_layers_use_bitsandbytes() -> None:
    linear, _ = int8_layer(64, 32)
    layer = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False)
    layer.load_state_dict(linear.state_dict())
    model = enable_fast_int8(nn.Sequential(layer.to("cuda")))
    x = torch.randn(8, 64, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        got = model(x)
    assert describe_int8_paths(model) == {"fast_int8": 0, "bnb_fallback": 1, "idle": 0, "bnb": 0}
    assert_close(got.float().cpu(), linear(x.float().cpu()), rtol=0.05, atol=0.05)
