"""CPU int8 matrix multiply behind the fast 8-bit inference path (oneDNN, u8 x s8 -> fp32).

::

    x (M, K) fp32 --per-token absmax--> u8 codes, zero point z --+
                                                                  +-- oneDNN int8 GEMM --> acc * SCB/127
    W codes (N, K) s8 = bitsandbytes' CB -- packed once ---------+            |
                                                                   * per-token scale + bias (one pass)
    outlier columns |x| >= threshold -- fp32 matmul with dequantised W[:, cols] --> added (LLM.int8())

``torch._int_mm`` would take bitsandbytes' row-major codes as they are, but on CPUs without AVX-512
VNNI it runs a scalar loop (a few GFLOP/s). oneDNN's int8 kernels need their own blocked weight
layout, so each layer keeps one packed int8 copy of its weight (no fp32 copy) next to bitsandbytes'.

Without VNNI, x86 int8 kernels multiply u8 x s8 pairs with ``vpmaddubsw``, whose int16 pair sum
saturates at 32767. Activation codes in [1, 127] (7-bit, zero point 64) keep every pair sum below
2 * 127 * 127 = 32258, so the integer result is exact. A probe at first use checks whether full 8-bit
codes (zero point 128) are exact on this CPU (VNNI/AMX) and uses them if so.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

#: Row absmax floor: an all-zero token row gets codes equal to the zero point instead of NaN.
_TINY = 1e-30


@dataclass(frozen=True)
class PackedWeight:
    """A layer's int8 weight in oneDNN's blocked layout, plus what the GEMM needs with it.

    Attributes:
        packed: The blocked int8 weight (opaque oneDNN tensor, logical shape ``(K, N)``).
        col_scale: ``SCB / 127`` per output feature, float32 ``(N,)``.
        zero_points: Weight zero points (all zero), int32 ``(N,)``.
        key: Identity of the bitsandbytes tensors it was built from (see :func:`weight_key`).
        nbytes: Bytes held by the packed copy.

    """

    packed: torch.Tensor
    col_scale: torch.Tensor
    zero_points: torch.Tensor
    key: tuple
    nbytes: int


@dataclass(frozen=True)
class QuantizedInput:
    """Activations quantised per token, ready for :func:`int8_linear`.

    Attributes:
        codes: ``(M, K)`` uint8 codes; value = code - zero point.
        row_scale: ``(M, 1)`` float32: dequantised value = (code - zero point) * row_scale.
        zero_point: The zero point of ``codes``.
        outlier_cols: Indices of the columns computed in fp32 (``None`` when there are none).
        outliers: ``(M, len(outlier_cols))`` float32 values of those columns.

    """

    codes: torch.Tensor
    row_scale: torch.Tensor
    zero_point: int
    outlier_cols: torch.Tensor | None
    outliers: torch.Tensor | None


def _qlinear(codes: torch.Tensor, zero_point: int, weight: PackedWeight) -> torch.Tensor:
    """OneDNN int8 GEMM: ``(codes - zero_point) @ W_codes.T * col_scale`` as float32."""
    return torch.ops.onednn.qlinear_pointwise(
        codes,
        1.0,
        zero_point,
        weight.packed,
        weight.col_scale,
        weight.zero_points,
        None,
        1.0,
        0,
        torch.float32,
        "none",
        [],
        "",
    )


def _pack_codes(codes: torch.Tensor, col_scale: torch.Tensor, key: tuple = ()) -> PackedWeight:
    packed = torch.ops.onednn.qlinear_prepack(codes, None)
    zero_points = torch.zeros(codes.shape[0], dtype=torch.int32)
    return PackedWeight(packed, col_scale, zero_points, key, codes.numel() * codes.element_size())


def _exact(zero_point: int, m: int, k: int, n: int) -> bool:
    """Whether the kernel is exact for codes up to ``2 * zero_point - 1`` at this shape."""
    generator = torch.Generator().manual_seed(0)
    top = 2 * zero_point - 1
    weight = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
    weight[: n // 2] = 127  # worst case for pair saturation: big codes times big weights
    codes = torch.randint(1, top + 1, (m, k), dtype=torch.uint8, generator=generator)
    codes[: m // 2] = top
    packed = _pack_codes(weight, torch.ones(n))
    got = _qlinear(codes, zero_point, packed)
    want = (codes.double() - zero_point) @ weight.double().t()
    return torch.equal(got.double(), want)


@functools.cache
def activation_zero_point() -> int | None:
    """Zero point of the activation codes this CPU computes exactly: 128 (8-bit), 64 (7-bit) or None.

    ``None`` means oneDNN's int8 kernels are unavailable (or wrong) here; the fast path then never runs.
    """
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")):
        logger.info("oneDNN int8 kernels unavailable in this torch build: no fast 8-bit CPU path")
        return None
    try:
        shapes = [(33, 256, 40), (128, 512, 64)]
        if all(_exact(128, *shape) for shape in shapes):
            return 128
        if all(_exact(64, *shape) for shape in shapes):
            return 64
    except (RuntimeError, NotImplementedError) as exc:
        logger.info("oneDNN int8 probe failed (%s): no fast 8-bit CPU path", exc)
        return None
    logger.warning("oneDNN int8 GEMM gave inexact results even with 7-bit codes: fast 8-bit path disabled")
    return None


def backend_available() -> bool:
    """Whether the fast int8 CPU kernels work on this machine."""
    return activation_zero_point() is not None


def weight_key(cb: torch.Tensor, scb: torch.Tensor) -> tuple:
    """Identity of a layer's int8 weight: storage and version, so that an in-place change re-packs."""
    try:
        versions = (cb._version, scb._version)
    except RuntimeError:  # inference tensors do not track versions
        versions = (None, None)
    return (cb.data_ptr(), scb.data_ptr(), tuple(cb.shape), *versions)


def pack_weight(cb: torch.Tensor, scb: torch.Tensor) -> PackedWeight:
    """Pack bitsandbytes' row-major int8 weight ``cb`` ``(N, K)`` and row absmax ``scb`` ``(N,)``."""
    return _pack_codes(cb.detach(), (scb.detach().float() / 127.0).contiguous(), weight_key(cb, scb))


@functools.cache
def _offsets(k: int, zero_point: int) -> torch.Tensor:
    # A (K,) vector broadcasts along the inner dimension, which torch's addcmul vectorises well
    # (a scalar or (M, 1) input tensor makes it several times slower).
    return torch.full((k,), zero_point + 0.5)


class _LastInput(threading.local):
    """The previous call's quantised input, reused when the same tensor feeds the next layer."""

    def __init__(self) -> None:
        self.ref: weakref.ref | None = None
        self.key: tuple = ()
        self.value: QuantizedInput | None = None


_LAST = _LastInput()


class _Workspace(threading.local):
    """Per-thread scratch buffers, grown as needed and reused across calls.

    Fresh multi-megabyte temporaries at every call would mostly cost page faults (glibc maps large
    blocks anew and returns them to the OS on free); reusing them makes quantisation cheap.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, tag: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numel = 1
        for size in shape:
            numel *= size
        buffer = self.buffers.get((tag, dtype))
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=dtype)
            self.buffers[(tag, dtype)] = buffer
        return buffer[:numel].view(shape)


_WORKSPACE = _Workspace()


def clear_workspace() -> None:
    """Free this thread's scratch buffers (they are rebuilt on the next fast call)."""
    _WORKSPACE.buffers.clear()


def quantize_input(x2: torch.Tensor, zero_point: int, threshold: float = 0.0) -> QuantizedInput:
    """Quantise a ``(M, K)`` float32 matrix per row (token) to uint8 codes around ``zero_point``.

    Columns holding a value with ``|x| >= threshold`` (if ``threshold > 0``) are left out of the
    codes (set to the zero point) and returned as fp32 outliers, as in LLM.int8(). The codes
    live in a per-thread scratch buffer: valid until the next call on the same thread.
    """
    _LAST.ref, _LAST.value = None, None  # the codes buffer is about to change under any cached value
    levels = zero_point - 1
    magnitude = torch.abs(x2, out=_WORKSPACE.get("magnitude", x2.shape, torch.float32))
    outlier_cols = outliers = None
    if threshold > 0:
        outlier_cols = torch.nonzero(magnitude.amax(0) >= threshold).view(-1)
        if outlier_cols.numel():
            outliers = x2.index_select(1, outlier_cols)
            magnitude.index_fill_(1, outlier_cols, 0.0)
        else:
            outlier_cols = None
    absmax = magnitude.amax(1, keepdim=True)
    absmax.clamp_min_(_TINY)
    # value * levels / absmax lies in [-levels, levels]; + zero_point + 0.5 then truncation rounds to
    # the nearest code in [1, 2 * zero_point - 1]. float -> int8 (-> int16 for 8-bit codes) is much
    # faster than float -> uint8 in torch's CPU kernels; the bytes are then read as uint8.
    shifted = torch.addcmul(_offsets(x2.shape[1], zero_point), x2, levels / absmax, out=magnitude)
    if zero_point < 128:
        codes = _WORKSPACE.get("codes", x2.shape, torch.int8).copy_(shifted).view(torch.uint8)
    else:
        codes = _WORKSPACE.get("codes16", x2.shape, torch.int16).copy_(shifted)
        codes = _WORKSPACE.get("codes", x2.shape, torch.uint8).copy_(codes)
    if outlier_cols is not None:
        codes.index_fill_(1, outlier_cols, zero_point)
    return QuantizedInput(codes, absmax.div_(levels), zero_point, outlier_cols, outliers)


def int8_linear(
    q: QuantizedInput,
    weight: PackedWeight,
    cb: torch.Tensor,
    scb: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``x @ dequant(W).T + bias`` for quantised input ``q``; returns float32 ``(M, N)``."""
    out = _qlinear(q.codes, q.zero_point, weight)
    if bias is not None:
        out = torch.addcmul(bias.float(), out, q.row_scale, out=out)
    else:
        out.mul_(q.row_scale)
    if q.outlier_cols is not None:
        w_outliers = cb.index_select(1, q.outlier_cols).float().mul_(weight.col_scale.unsqueeze(1))
        out.addmm_(q.outliers, w_outliers.t())
    return out


def quantize_shared(x: torch.Tensor, x2: torch.Tensor, zero_point: int, threshold: float) -> QuantizedInput:
    """:func:`quantize_input`, reusing the last result when ``x`` is the very tensor quantised last.

    Query, key and value projections (and Llama's gate/up) read the same hidden states one after
    the other; quantising them once saves two thirds of the activation work there. The reuse is
    keyed on the tensor object (weakly referenced), its storage, shape and version (when tracked).
    """
    try:
        version = x._version
    except RuntimeError:  # inference tensors do not track versions
        version = None
    key = (x.data_ptr(), tuple(x.shape), x.stride(), version, zero_point, threshold)
    if _LAST.ref is not None and _LAST.ref() is x and _LAST.key == key and _LAST.value is not None:
        return _LAST.value
    value = quantize_input(x2, zero_point, threshold)
    _LAST.ref, _LAST.key, _LAST.value = weakref.ref(x), key, value
    return value


def clear_shared() -> None:
    """Forget this thread's cached quantised input and scratch buffers."""
    _LAST.ref, _LAST.key, _LAST.value = None, (), None
    clear_workspace()
