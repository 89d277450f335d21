r"""Fast 8-bit CPU forward passes for bitsandbytes ``Linear8bitLt`` layers, inference and training.

bitsandbytes 0.50's CPU path for ``Linear8bitLt`` converts activations to fp16, quantises them, and
multiplies in fp32 (several times slower than the fp32 model). :func:`enable_fast_int8` switches
each layer's class, in place, to a subclass whose ``forward`` runs an int8 GEMM instead
(:mod:`peftkit.quantization.int8_kernels`) and calls bitsandbytes' own ``forward`` only where
that does not apply::

    forward(x) --CPU, float input, oneDNN usable?--yes--> per-token int8 x int8 GEMM (fast)
                                                 \--no---> bitsandbytes Linear8bitLt.forward
                                                           (under autograd: the lean wrapper of
                                                           :mod:`peftkit.quantization.lean_int8`)

When a gradient is wanted (adapter training on the frozen 8-bit base), the fast forward runs
inside an autograd function whose backward is the straight-through estimator bitsandbytes uses
too: ``grad_x = grad_out @ dequant(W)``, with the weight dequantised for that product only.

The layer stays a ``bnb.nn.Linear8bitLt`` (peft's LoRA/AdaLoRA dispatch and its ``lora.bnb``
wrappers keep working, and state dicts are unchanged); its int8 weight and scales are reused. The
only extra memory is one packed int8 copy per layer, built at the first fast call.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn

from peftkit.errors import QuantizationError
from peftkit.quantization import activations, lean_int8
from peftkit.quantization import int8_kernels as kernels

logger = logging.getLogger(__name__)

FAST = "fast_int8"
BNB = "bnb"
_PATH_ATTR = "_peftkit_int8_path"
_PACKED_ATTR = "_peftkit_int8_packed"
_HINT_ATTR = "_peftkit_int8_outlier_cols"
_RIGHT_ATTR = "_peftkit_int8_outlier_weights"
_PREVIOUS_ATTR = "_peftkit_int8_previous_class"
_logged: set[tuple[str, str]] = set()


def import_bitsandbytes() -> Any:
    """Import bitsandbytes or raise a :class:`QuantizationError` saying how to install it."""
    try:
        import bitsandbytes
    except Exception as exc:  # ImportError, or a broken install failing at import time
        raise QuantizationError(
            f"8-bit loading needs bitsandbytes, which cannot be imported ({type(exc).__name__}: {exc}). "
            "Install it with `pip install bitsandbytes` (peftkit is tested with 0.50.x), or load without "
            "load_in_8bit."
        ) from exc
    return bitsandbytes


@functools.cache
def fast_linear_class() -> type:
    """The ``bnb.nn.Linear8bitLt`` subclass with the fast int8 CPU path (created on first use)."""
    bnb = import_bitsandbytes()

    class FastInt8Linear(bnb.nn.Linear8bitLt):
        """``bnb.nn.Linear8bitLt`` whose forward on CPU runs an int8 GEMM.

        Not constructed directly: :func:`enable_fast_int8` switches the class of existing layers.
        """

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            reason = fast_path_blocker(self, x)
            if reason is None:
                _note_path(self, FAST, "CPU")
                if not lean_int8.wants_grad(self, x):
                    return _fast_forward(self, x)
                return _Int8LinearFunction.apply(x, self.bias, self)
            _note_path(self, BNB, reason)
            if lean_int8.wants_grad(self, x) and x.is_floating_point() and x.numel():
                return lean_int8.LeanInt8Function.apply(x, self.bias, self)  # keeps no activation alive
            return bnb.nn.Linear8bitLt.forward(self, x)

    FastInt8Linear.__module__ = __name__
    return FastInt8Linear


def fast_path_blocker(layer: nn.Module, x: torch.Tensor) -> str | None:
    """Why ``layer`` cannot take the fast path for input ``x`` (``None`` when it can).

    Args:
        layer: A fast-path-enabled ``Linear8bitLt``.
        x: The input about to be multiplied.

    Returns:
        A short reason (``"device cuda"``, ``"input dtype torch.int64"``, ...) or ``None``.

    """
    if x.device.type != "cpu":
        return f"device {x.device.type}"
    if not x.is_floating_point():
        return f"input dtype {x.dtype}"
    if x.numel() == 0:
        return "empty input"
    if x.shape[-1] != layer.in_features:
        return "input width mismatch"  # bitsandbytes raises its own shape error
    weight = layer.weight
    codes = layer.state.CB if layer.state.CB is not None else getattr(weight, "CB", None)
    if codes is None or weight.dtype != torch.int8:
        return "weight not quantised"
    if codes.device.type != "cpu":
        return f"weight on {codes.device.type}"
    if kernels.activation_code_max() is None:
        return "oneDNN int8 kernels unavailable"
    return None


class _Int8LinearFunction(torch.autograd.Function):
    """The fast int8 forward with bitsandbytes' straight-through backward (the weight is frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bias: torch.Tensor | None, layer: nn.Module) -> torch.Tensor:
        out = _fast_forward(layer, x)
        ctx.codes = (layer.state.CB, layer.state.SCB)  # the weight this forward used (references)
        ctx.input_dtype, ctx.input_shape, ctx.bias_dtype = (
            x.dtype,
            x.shape,
            None if bias is None else bias.dtype,
        )
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1]).float()
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            cb, scb = ctx.codes
            weight = cb.float().mul_((scb.float() / 127.0).unsqueeze(1))  # (N, K), only for this product
            grad_x = (grad_2d @ weight).view(ctx.input_shape).to(ctx.input_dtype)
        if ctx.needs_input_grad[1]:
            grad_bias = grad_2d.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_bias, None


def _note_path(layer: nn.Module, path: str, reason: str) -> None:
    if layer.__dict__.get(_PATH_ATTR) != path:
        layer.__dict__[_PATH_ATTR] = path
    if (path, reason) not in _logged:
        _logged.add((path, reason))
        if path == FAST:
            bits = 8 if kernels.activation_code_max() == 255 else 7
            logger.debug(
                "8-bit layers run the fast int8 CPU path (oneDNN, %d-bit per-token activations)", bits
            )
        else:
            # once per reason: load_base's line named the fast path, this says where it cannot run
            logger.info("8-bit layers fall back to the bitsandbytes path (%s)", reason)


def _packed_weight(layer: nn.Module, cb: torch.Tensor, scb: torch.Tensor) -> kernels.PackedWeight:
    packed = layer.__dict__.get(_PACKED_ATTR)
    if packed is None or packed.key != kernels.weight_key(cb, scb):
        with torch.no_grad():
            packed = kernels.pack_weight(cb, scb)
        layer.__dict__[_PACKED_ATTR] = packed
    return packed


def _adopt_weight_codes(layer: nn.Module) -> None:
    """Move the weight's int8 codes and scales to the layer state, as bitsandbytes does at first use.

    Unlike bitsandbytes' ``init_8bit_state``, a missing scale never overwrites the state's: peft's
    DoRA re-wraps the weight (``weight.to(cpu)``) on every forward, which keeps the codes but drops
    ``SCB``.
    """
    weight = layer.weight
    if weight.CB is not None:
        layer.state.CB = weight.CB
        weight.CB = None
    if getattr(weight, "SCB", None) is not None:
        layer.state.SCB = weight.SCB
        weight.SCB = None


def _fast_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    _adopt_weight_codes(layer)
    cb, scb = layer.state.CB, layer.state.SCB
    packed = _packed_weight(layer, cb, scb)
    x2 = x.reshape(-1, x.shape[-1])
    if x2.dtype != torch.float32:
        x2 = x2.float()
    threshold = float(layer.state.threshold or 0.0)
    hint = layer.__dict__.get(_HINT_ATTR)
    q = activations.quantize_shared(x, x2, kernels.activation_code_max(), threshold, hint)
    right = layer.__dict__.get(_RIGHT_ATTR)  # W[:, outlier columns], kept while the columns stay the same
    if q.outlier_cols is None:
        right = None
    elif right is None or q.outlier_cols is not hint or right[1] is not packed:
        right = (kernels.outlier_weights(packed, cb, q.outlier_cols), packed)
    layer.__dict__[_HINT_ATTR], layer.__dict__[_RIGHT_ATTR] = q.outlier_cols, right
    out = kernels.int8_linear(q, packed, cb, layer.bias, None if right is None else right[0])
    out = out.view(*x.shape[:-1], out.shape[-1])
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _int8_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    bnb = import_bitsandbytes()
    return [(name, m) for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)]


def enable_fast_int8(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch the fast int8 CPU path on (or off) for every 8-bit layer of ``model``.

    The switch is in place (each layer's class changes; weights, hooks and peft wrappers stay) and
    can be undone with ``enabled=False``, which restores the class each layer had (plain bitsandbytes,
    or the lean training wrapper :func:`peftkit.load_base` installs) and frees the packed weight copies. Layers take
    the fast path where it applies (CPU, floating-point input), in inference and in training (with
    bitsandbytes' straight-through input gradient), and fall back to bitsandbytes otherwise.

    Args:
        model: A model holding ``bnb.nn.Linear8bitLt`` layers (e.g. from
            ``load_base(..., load_in_8bit=True)``), possibly wrapped by peft/peftkit.
        enabled: ``True`` to enable, ``False`` to restore plain bitsandbytes layers.

    Returns:
        ``model`` itself (switched in place), for chaining. :func:`describe_int8_paths` counts the
        layers per path.

    Raises:
        QuantizationError: If ``enabled`` and the model has no 8-bit layers, or bitsandbytes is missing.

    Example:
        >>> model = load_base(path, load_in_8bit=True, fast_int8=False)  # doctest: +SKIP
        >>> describe_int8_paths(enable_fast_int8(model))  # doctest: +SKIP
        {'fast_int8': 0, 'bnb_fallback': 0, 'idle': 36, 'bnb': 0}

    """
    bnb = import_bitsandbytes()
    fast_cls = fast_linear_class()
    layers = _int8_layers(model)
    if enabled and not layers:
        raise QuantizationError(
            f"{type(model).__name__} has no bitsandbytes 8-bit linear layers, so there is nothing to speed up. "
            "Load the base with peftkit.quantization.load_base(path, load_in_8bit=True) first."
        )
    switchable = (bnb.nn.Linear8bitLt, lean_int8.lean_linear_class())
    count = 0
    for name, layer in layers:
        if enabled and type(layer) in switchable:
            layer.__dict__[_PREVIOUS_ATTR] = type(layer)
            layer.__class__ = fast_cls
        elif not enabled and type(layer) is fast_cls:
            layer.__class__ = layer.__dict__.pop(_PREVIOUS_ATTR, bnb.nn.Linear8bitLt)
            for attr in (_PACKED_ATTR, _PATH_ATTR, _HINT_ATTR, _RIGHT_ATTR):
                layer.__dict__.pop(attr, None)
        elif enabled and type(layer) is not fast_cls:
            logger.warning(
                "%s is a %s, not a plain bnb.nn.Linear8bitLt: left on its own forward",
                name,
                type(layer).__name__,
            )
        count += type(layer) is fast_cls
    activations.clear_shared()
    if enabled and kernels.activation_code_max() is None:
        logger.warning(
            "oneDNN int8 kernels are unavailable here: the 8-bit layers will use bitsandbytes' path"
        )
    logger.debug(
        "fast int8 path %s on %d of %d 8-bit layers", "enabled" if enabled else "disabled", count, len(layers)
    )
    return model


def describe_int8_paths(model: nn.Module) -> dict[str, int]:
    """Count ``model``'s 8-bit layers by the path they take.

    Returns:
        ``{"fast_int8": n, "bnb_fallback": n, "idle": n, "bnb": n}``: fast-path layers whose last
        forward ran the int8 GEMM; fast-path layers whose last forward fell back to bitsandbytes
        (CUDA, integer or empty input, ...); fast-path layers not run since enabling; plain bitsandbytes
        layers. The values add up to the number of 8-bit layers (all zero without bitsandbytes).

    """
    counts = {FAST: 0, "bnb_fallback": 0, "idle": 0, BNB: 0}
    try:
        layers = _int8_layers(model)
    except QuantizationError:
        return counts
    fast_cls = fast_linear_class()
    for _, layer in layers:
        if type(layer) is not fast_cls:
            counts[BNB] += 1
            continue
        path = layer.__dict__.get(_PATH_ATTR)
        counts[{FAST: FAST, BNB: "bnb_fallback", None: "idle"}[path]] += 1
    return counts


def packed_bytes(model: nn.Module) -> int:
    """Bytes held by the fast path's packed int8 weight copies (0 before the first fast forward)."""
    return sum(packed.nbytes for m in model.modules() if (packed := m.__dict__.get(_PACKED_ATTR)) is not None)
