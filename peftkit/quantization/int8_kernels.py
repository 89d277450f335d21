"""CPU int8 matrix multiply behind the fast 8-bit inference path (oneDNN, u8 x s8 -> fp32).

::

    x (M, K) fp32 --per-token min/max--> u8 codes u, x ~ a * u + c per row   (peftkit.quantization.activations)
    W (N, K) s8 = bitsandbytes' CB, packed once for oneDNN
    out = a * (u @ W.T) + c * rowsum(W) + bias  [+ outlier columns |x| >= threshold in fp32, as in LLM.int8()]
          '-- int8 GEMM --'  '---- one rank-(1 + outliers) update ----'

``torch._int_mm`` would take bitsandbytes' row-major codes as they are, but on CPUs without AVX-512
VNNI it runs a scalar loop (a few GFLOP/s). oneDNN's int8 kernels need their own blocked weight
layout, so each layer keeps one packed int8 copy of its weight (no fp32 copy) next to bitsandbytes'.

Without VNNI, x86 int8 kernels multiply u8 x s8 pairs with ``vpmaddubsw``, whose int16 pair sum
saturates at 32767. Activation codes in [0, 127] (7 bits) keep every pair sum below
2 * 127 * 127 = 32258, so the integer result is exact. A probe at first use checks whether full
8-bit codes are exact on this CPU (VNNI/AMX) and uses them if so.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from peftkit.quantization.activations import QuantizedInput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackedWeight:
    """A layer's int8 weight in oneDNN's blocked layout, plus what the GEMM needs with it.

    Attributes:
        packed: The blocked int8 weight (opaque oneDNN tensor, logical shape ``(K, N)``).
        col_scale: ``SCB / 127`` per output feature, float32 ``(N,)``.
        zero_points: Weight zero points (all zero), int32 ``(N,)``.
        row_sums: Row sums of the dequantised weight, float32 ``(N,)`` (for the activation offsets).
        key: Identity of the bitsandbytes tensors it was built from (see :func:`weight_key`).
        nbytes: Bytes held by the packed copy.

    """

    packed: torch.Tensor
    col_scale: torch.Tensor
    zero_points: torch.Tensor
    row_sums: torch.Tensor
    key: tuple
    nbytes: int


def _qlinear(codes: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
    """Run the oneDNN int8 GEMM: ``codes @ W_codes.T * col_scale`` as float32 (codes: uint8, zero point 0)."""
    return torch.ops.onednn.qlinear_pointwise(
        codes,
        1.0,
        0,
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
    zero_points = torch.zeros(codes.shape[0], dtype=torch.int32, device=codes.device)
    row_sums = codes.sum(1, dtype=torch.int32).float() * col_scale
    return PackedWeight(packed, col_scale, zero_points, row_sums, key, codes.numel() * codes.element_size())


def _exact(top: int, m: int, k: int, n: int) -> bool:
    """Whether the kernel is exact for activation codes in ``[0, top]`` at this shape."""
    generator = torch.Generator(device="cpu").manual_seed(0)  # oneDNN kernels are CPU kernels
    weight = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator, device="cpu")
    weight[: n // 2] = 127  # worst case for pair saturation: big codes times big weights
    codes = torch.randint(0, top + 1, (m, k), dtype=torch.uint8, generator=generator, device="cpu")
    codes[: m // 2] = top
    got = _qlinear(codes, _pack_codes(weight, torch.ones(n, device="cpu")))
    return torch.equal(got.double(), codes.double() @ weight.double().t())


@functools.cache
def activation_code_max() -> int | None:
    """Largest activation code this CPU's int8 GEMM handles exactly: 255 (8-bit), 127 (7-bit) or None.

    ``None`` means oneDNN's int8 kernels are unavailable (or wrong) here; the fast path then never runs.
    """
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")):
        logger.info("oneDNN int8 kernels unavailable in this torch build: no fast 8-bit CPU path")
        return None
    try:
        # the activation quantiser
        torch.ops.quantized.embedding_bag_byte_prepack(torch.zeros(2, 8, device="cpu"))
        shapes = [(33, 256, 40), (128, 512, 64)]
        for top in (255, 127):
            if all(_exact(top, *shape) for shape in shapes):
                return top
    except (RuntimeError, NotImplementedError) as exc:
        logger.info("oneDNN int8 probe failed (%s): no fast 8-bit CPU path", exc)
        return None
    logger.warning("oneDNN int8 GEMM gave inexact results even with 7-bit codes: fast 8-bit path disabled")
    return None


def backend_available() -> bool:
    """Whether the fast int8 CPU kernels work on this machine."""
    return activation_code_max() is not None


def weight_key(cb: torch.Tensor, scb: torch.Tensor) -> tuple:
    """Identity of a layer's int8 weight: storage and version, so that an in-place change re-packs."""
    # Inference tensors do not track versions.
    versions = tuple(None if t.is_inference() else t._version for t in (cb, scb))
    return (cb.data_ptr(), scb.data_ptr(), tuple(cb.shape), *versions)


def pack_weight(cb: torch.Tensor, scb: torch.Tensor) -> PackedWeight:
    """Pack bitsandbytes' row-major int8 weight ``cb`` ``(N, K)`` and row absmax ``scb`` ``(N,)``."""
    return _pack_codes(cb.detach(), (scb.detach().float() / 127.0).contiguous(), weight_key(cb, scb))


def outlier_weights(weight: PackedWeight, cb: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
    """``(1 + n, N)`` right factor of the low-rank update: effective row sums, then ``W[:, cols].T``.

    With ``cols=None`` just the row sums ``(1, N)``.
    """
    if cols is None:
        return weight.row_sums.unsqueeze(0)
    w_t = cb.t().index_select(0, cols).float().mul_(weight.col_scale)  # (n, N), dequantised
    return torch.cat([(weight.row_sums - w_t.sum(0)).unsqueeze(0), w_t], 0)


def int8_linear(
    q: QuantizedInput,
    weight: PackedWeight,
    cb: torch.Tensor,
    bias: torch.Tensor | None,
    right: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ dequant(W).T + bias`` for the quantised input ``q``; returns float32 ``(M, N)``.

    Args:
        q: The quantised activations (:func:`peftkit.quantization.activations.quantize_input`).
        weight: The packed weight of the layer.
        cb: bitsandbytes' int8 weight ``(N, K)`` (outlier columns are read from it).
        bias: The layer's bias or ``None``.
        right: ``outlier_weights(weight, cb, q.outlier_cols)`` if already at hand.

    """
    out = _qlinear(q.codes, weight)
    if bias is not None:
        out = torch.addcmul(bias.float(), out, q.row_scale, out=out)
    else:
        out.mul_(q.row_scale)
    # The activation offsets (and the exact outlier columns) enter as one small-rank update.
    if q.outlier_cols is None:
        return out.addr_(q.row_offset.view(-1), weight.row_sums)
    if right is None:
        right = outlier_weights(weight, cb, q.outlier_cols)
    return out.addmm_(torch.cat([q.row_offset, q.outliers], 1), right)
