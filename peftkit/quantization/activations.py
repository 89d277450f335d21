"""Dynamic per-token quantisation of activations for the fast int8 path.

Each token row ``x[m]`` becomes uint8 codes ``u`` with ``x[m] ~ a[m] * u + c[m]`` (asymmetric, over the
row's min..max). One fused, vectorised torch op (FBGEMM's row-wise 8-bit quantiser behind
``quantized::embedding_bag_byte_prepack``) computes the row ranges and the 8-bit codes in a single
pass; on CPUs whose int8 GEMM saturates beyond 7-bit codes they are halved (``u >> 1``), which keeps
the rounding error within one 8-bit step, the same as rounding to 7 bits directly.

Outlier columns (LLM.int8(): a feature with ``|x| >= threshold`` in any token) are excluded from
the codes and returned in fp32. Finding them costs a pass over ``x``; instead, the columns found
for the previous input of the same layer are tried first and *verified* (no other column reaches
the threshold: the code ranges tell; every tried column does), so the result depends only on the
input, never on the history. Excluding a column means zeroing it in ``x`` while the codes are
computed and restoring it right after.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch

#: A row range must stay this much inside the threshold to prove that no value reaches it (float32
#: round-off in the stored range must never decide whether a column is an outlier).
_MARGIN = 1.0 - 1e-5


@dataclass(frozen=True)
class QuantizedInput:
    """Activations quantised per token: ``x ~ row_scale * codes + row_offset`` outside outlier columns.

    Attributes:
        codes: ``(M, K)`` uint8 codes (0 in outlier columns).
        row_scale: ``(M, 1)`` float32 ``a``.
        row_offset: ``(M, 1)`` float32 ``c``.
        outlier_cols: Indices of the columns kept in fp32 (``None`` when there are none).
        outliers: ``(M, len(outlier_cols))`` float32 values of those columns.

    """

    codes: torch.Tensor
    row_scale: torch.Tensor
    row_offset: torch.Tensor
    outlier_cols: torch.Tensor | None
    outliers: torch.Tensor | None


class _LastInput(threading.local):
    """The previous call's quantised input, reused when the same tensor feeds the next layer."""

    def __init__(self) -> None:
        self.ref: weakref.ref | None = None
        self.key: tuple = ()
        self.value: QuantizedInput | None = None


#: Cached scratch views per thread (each a small tensor object over the shared buffers).
_MAX_VIEWS = 16


class _Workspace(threading.local):
    """Per-thread scratch buffers, grown as needed and reused across calls.

    Fresh multi-megabyte temporaries at every call would mostly cost page faults (glibc maps large
    blocks anew and returns them to the OS on free).
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self.views: dict[tuple[str, tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def get(self, tag: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        view = self.views.get((tag, shape, dtype))
        if view is not None:
            return view
        if len(self.views) >= _MAX_VIEWS:  # dynamic padding makes many shapes: keep the recent ones
            self.views.clear()
        numel = shape[0] * shape[1]
        buffer = self.buffers.get((tag, dtype))
        # Normal tensors even under torch.inference_mode(): an inference tensor (or a view made in
        # inference mode) could never be written again by a later training or no_grad forward.
        with torch.inference_mode(False):
            if buffer is None or buffer.numel() < numel:
                buffer = torch.empty(numel, dtype=dtype, device="cpu")  # a CPU-only path
                self.buffers[(tag, dtype)] = buffer
                self.views = {key: v for key, v in self.views.items() if key[0] != tag or key[2] != dtype}
            view = self.views[(tag, shape, dtype)] = buffer[:numel].view(shape)
        return view

    def clear(self) -> None:
        """Free every buffer."""
        self.buffers.clear()
        self.views.clear()


_LAST = _LastInput()
_WORKSPACE = _Workspace()


def clear_shared() -> None:
    """Forget this thread's cached quantised input and free its scratch buffers."""
    _LAST.ref, _LAST.key, _LAST.value = None, (), None
    _WORKSPACE.clear()


def _rowwise_u8(x2: torch.Tensor, cols: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row-wise 8-bit codes and fp32 (scale, min) of ``x2`` with columns ``cols`` read as zero.

    Returns ``(packed (M, K + 8) uint8, outliers (M, len(cols)) or None)``.
    """
    if cols is None:
        return torch.ops.quantized.embedding_bag_byte_prepack(x2.contiguous()), None
    target = _writable(x2)
    outliers = target.index_select(1, cols)
    target.index_fill_(1, cols, 0.0)
    try:
        packed = torch.ops.quantized.embedding_bag_byte_prepack(target)
    finally:
        if target is x2:
            x2.index_copy_(1, cols, outliers)
    return packed, outliers


def _outlier_columns(x2: torch.Tensor, threshold: float) -> torch.Tensor | None:
    peak = torch.maximum(x2.amax(0), x2.amin(0).neg_())
    cols = torch.nonzero(peak >= threshold).view(-1)
    return cols if cols.numel() else None


def _stats(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Per-row ``(scale, min)`` stored by the quantiser after the ``k`` codes, as a ``(M, 2)`` tensor."""
    # A fresh (M, 8) copy: a slice at byte offset K cannot be viewed as float32 unless 4 divides K.
    return packed[:, k:].clone(memory_format=torch.contiguous_format).view(torch.float32)


#: ``stats @ _PEAKS`` gives each row's ``(max, -min)``: ``max = min + 255 * scale``.
_PEAKS = torch.tensor([[255.0, 0.0], [1.0, -1.0]], device="cpu")

#: ``stats @ _HALVED`` gives the affine parameters of 7-bit codes ``u >> 1``: ``(2 * scale, min + scale / 2)``.
_HALVED = torch.tensor([[2.0, 0.5], [0.0, 1.0]], device="cpu")


def _verified(stats: torch.Tensor, outliers: torch.Tensor | None, threshold: float) -> bool:
    """Whether the excluded columns are exactly the outlier columns of the input."""
    if float((stats @ _PEAKS).amax()) >= threshold * _MARGIN:
        return False  # a column outside the tried ones may reach the threshold
    return outliers is None or float(outliers.abs().amax(0).amin()) >= threshold


def _writable(x2: torch.Tensor) -> torch.Tensor:
    """``x2`` itself if columns may be zeroed and restored in place, else a private copy.

    Never in place on a tensor autograd tracks (a view of one still says ``requires_grad`` inside an
    autograd function's forward): restoring the values would still bump its version counter, and
    autograd refuses saved tensors that changed version.
    """
    if (
        x2.is_contiguous()
        and not x2.requires_grad
        and (not x2.is_inference() or torch.is_inference_mode_enabled())
    ):
        return x2
    return x2.contiguous().clone()


def quantize_input(
    x2: torch.Tensor, code_max: int, threshold: float = 0.0, hint: torch.Tensor | None = None
) -> QuantizedInput:
    """Quantise a ``(M, K)`` float32 matrix per row (token) to uint8 codes in ``[0, code_max]``.

    Args:
        x2: The activations (restored bit for bit if columns are zeroed in place meanwhile).
        code_max: 255 or 127 (see :func:`peftkit.quantization.int8_kernels.activation_code_max`).
        threshold: Outlier threshold (``0`` disables the decomposition).
        hint: Outlier columns to try first (e.g. the previous ones of this layer).

    Returns:
        The codes (in a per-thread scratch buffer, valid until the next call on the same
        thread), their per-row affine parameters and the outlier columns.

    """
    _LAST.ref, _LAST.value = None, None  # the scratch codes are about to change under any cached value
    k = x2.shape[1]
    cols = None
    if threshold > 0:
        cols = hint if hint is not None and hint.numel() else None
        packed, outliers = _rowwise_u8(x2, cols)
        stats = _stats(packed, k)
        if not _verified(stats, outliers, threshold):
            cols = _outlier_columns(x2, threshold)
            packed, outliers = _rowwise_u8(x2, cols)
            stats = _stats(packed, k)
    else:
        packed, outliers = _rowwise_u8(x2, None)
        stats = _stats(packed, k)
    codes = _WORKSPACE.get("codes", tuple(x2.shape), torch.uint8)
    if code_max == 255:
        codes.copy_(packed[:, :k])
        affine = stats
    else:  # halve to 7 bits: x ~ min + scale * (2 * (u >> 1) + 0.5)
        torch.bitwise_right_shift(packed[:, :k], 1, out=codes)
        affine = stats @ _HALVED  # one small op instead of three: (2 * scale, min + scale / 2)
    row_scale, row_offset = affine[:, :1], affine[:, 1:]
    if cols is not None:
        codes.index_fill_(1, cols, 0)
    return QuantizedInput(codes, row_scale, row_offset, cols, outliers)


def _input_key(x: torch.Tensor, code_max: int, threshold: float) -> tuple:
    version = None if x.is_inference() else x._version  # inference tensors do not track versions
    return (x.data_ptr(), tuple(x.shape), x.stride(), version, code_max, threshold)


def quantize_shared(
    x: torch.Tensor, x2: torch.Tensor, code_max: int, threshold: float, hint: torch.Tensor | None = None
) -> QuantizedInput:
    """:func:`quantize_input` of ``x2 = x.reshape(-1, K)``, reusing the last result for the same ``x``.

    Query, key and value projections (and Llama's gate/up) read the same hidden states one after
    the other; quantising them once saves two thirds of the activation work there. The reuse is
    keyed on the tensor object (weakly referenced), its storage, shape and version (when tracked).
    """
    if _LAST.ref is not None and _LAST.ref() is x and _LAST.value is not None:
        if _LAST.key == _input_key(x, code_max, threshold):
            return _LAST.value
    value = quantize_input(x2, code_max, threshold, hint)
    _LAST.ref, _LAST.key, _LAST.value = weakref.ref(x), _input_key(x, code_max, threshold), value
    return value
