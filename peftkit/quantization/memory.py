"""Memory accounting of 8-bit models: what the int8 linear layers hold versus fp32."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from peftkit.quantization.fast_int8 import packed_bytes


def _int8_linears(model: nn.Module) -> list[nn.Module]:
    try:
        import bitsandbytes as bnb
    except Exception:  # no bitsandbytes: no 8-bit layers
        return []
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds quantised weights: bitsandbytes 8-bit or 4-bit layers (integer parameters).

    Works on bare, peft- and peftkit-wrapped models alike (it looks at the parameters).
    """
    return any(not p.is_floating_point() for p in model.parameters())


@dataclass(frozen=True)
class LinearWeightBytes:
    """Bytes of the weights of a model's 8-bit linear layers (biases excluded: equal in both).

    Attributes:
        layers: Number of 8-bit linear layers.
        int8_bytes: Their int8 weight codes.
        scale_bytes: Their per-row fp32 scales (bitsandbytes' ``SCB``).
        fp32_bytes: The same weights in fp32 (``4 * in * out`` each).
        packed_bytes: Extra packed int8 copies held by the fast CPU inference path (built on its
            first use, freed by ``enable_fast_int8(model, False)``).

    """

    layers: int
    int8_bytes: int
    scale_bytes: int
    fp32_bytes: int
    packed_bytes: int

    @property
    def quantized_bytes(self) -> int:
        """Bytes of the quantised weights as stored: codes plus scales."""
        return self.int8_bytes + self.scale_bytes

    @property
    def ratio(self) -> float | None:
        """``quantized_bytes / fp32_bytes`` (about ``0.25 + 1/in_features``), ``None`` without layers."""
        return self.quantized_bytes / self.fp32_bytes if self.fp32_bytes else None

    def as_dict(self) -> dict[str, float | int | None]:
        """The fields plus ``quantized_bytes`` and ``ratio``, JSON-friendly."""
        return {**asdict(self), "quantized_bytes": self.quantized_bytes, "ratio": self.ratio}


def quantized_linear_bytes(model: nn.Module) -> LinearWeightBytes:
    """Account for the weight memory of ``model``'s 8-bit linear layers.

    Example:
        >>> quantized_linear_bytes(load_base(path, load_in_8bit=True)).ratio  # doctest: +SKIP
        0.2526...

    """
    layers = _int8_linears(model)
    int8_bytes = scale_bytes = fp32_bytes = 0
    for layer in layers:
        weight = layer.weight
        scales = layer.state.SCB if layer.state.SCB is not None else getattr(weight, "SCB", None)
        int8_bytes += weight.numel() * weight.element_size()
        scale_bytes += scales.numel() * scales.element_size() if scales is not None else 0
        fp32_bytes += layer.in_features * layer.out_features * 4
    return LinearWeightBytes(len(layers), int8_bytes, scale_bytes, fp32_bytes, packed_bytes(model))
