"""Base-model fingerprints: which base model an adapter was trained on.

peft records ``base_model_name_or_path`` but never checks it, so an adapter loads silently
onto the wrong base (garbage outputs) or fails late with shape errors. peftkit stores a
*fingerprint* of the base next to every adapter and compares it when loading.

What the fingerprint covers:

* ``model_type`` and the architecture class (informational), ``name_or_path`` (informational);
* ``structure``: a hash of the base's parameter names and shapes. Only the *base view* counts:
  adapter weights, peft's ``.base_layer`` / ``.original_module`` wrapping and task heads (new and
  random on every load, e.g. ``classifier``) are ignored. Linear-like weights are recorded as
  ``(out_features, in_features)``, so a GPT-2 ``Conv1D`` in fp32 (stored ``(in, out)``) and the
  bitsandbytes ``Linear8bitLt`` that replaces it in 8-bit (stored ``(out, in)``) agree;
  dtypes are not part of it;
* ``weights``: a hash of the weights that are never quantised (embeddings, norms, biases),
  rounded to float16 so that fp32, fp16 and 8-bit loads of the same checkpoint agree. Tensors
  with more than 4096 elements contribute a fixed strided sample, so fingerprinting a 22M-parameter
  MiniLM takes milliseconds;
* ``weights_bf16`` and ``dtype``: the same sample rounded to bfloat16, and the dtype those
  weights had (``bfloat16`` if any of them is: a base loaded in bfloat16, e.g. a 4-bit base with
  its default compute dtype, has lost what float16 keeps);
* ``digest``: a short hash of ``structure`` and ``weights``, shown in messages.

Two fingerprints match when ``model_type`` and ``structure`` are equal and so are ``weights``
or, when either base was loaded in bfloat16, ``weights_bf16`` (:func:`fingerprints_match`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from peftkit._peft import is_training_wrapper, is_tuner_layer
from peftkit.models import head_module_names, model_type
from peftkit.state import unwrap_model
from peftkit.targets import is_linear_like

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
_SAMPLE = 4096
_DIGEST_CHARS = 16


def base_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Compute a cheap, deterministic identity of ``model``'s base (pretrained) weights.

    Fingerprints of one checkpoint loaded in fp32, fp16 or 8-bit are equal, and one loaded in
    bf16 matches those of fp32 and 8-bit loads (:func:`fingerprints_match`), whether or not the
    model already carries adapters (peftkit or peft); they stop matching when the architecture,
    the parameter shapes or the pretrained weights change (e.g. another checkpoint or seed).

    Args:
        model: A transformers model, plain or wrapped by peftkit.

    Returns:
        A JSON-serialisable dict with ``version``, ``model_type``, ``architecture``,
        ``name_or_path``, ``num_parameters`` (base view, heads excluded), ``dtype`` (of the hashed
        weights), and the short hex hashes ``structure``, ``weights``, ``weights_bf16`` and ``digest``.

    Example:
        >>> fp = peftkit.base_fingerprint(model)  # doctest: +SKIP
        >>> fp["model_type"], fp["digest"]  # doctest: +SKIP
        ('bert', '3f1c9a0d2b7e4c11')

    """
    inner = unwrap_model(model)
    heads = tuple(head_module_names(inner))
    structure = hashlib.sha256()
    weights = hashlib.sha256()
    weights_bf16 = hashlib.sha256()
    dtype = None
    count = 0
    for name, param, owner in _base_parameters(inner):
        if any(name == h or name.startswith(h + ".") for h in heads):
            continue
        quantisable = name.endswith(".weight") and is_linear_like(owner)
        shape = _normalised_shape(owner, param) if quantisable else tuple(param.shape)
        count += _numel(shape)
        structure.update(f"{name}:{list(shape)}\n".encode())
        if not quantisable and param.device.type != "meta" and torch.is_floating_point(param):
            sample, key = _sample(param), name.encode() + b"\0"
            weights.update(key + sample.to(torch.float16).numpy().tobytes())
            weights_bf16.update(key + sample.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
            if dtype is None or param.dtype == torch.bfloat16:  # any bf16 weight: compare at bf16 precision
                dtype = str(param.dtype).removeprefix("torch.")
    structure_hex = structure.hexdigest()[:_DIGEST_CHARS]
    weights_hex = weights.hexdigest()[:_DIGEST_CHARS]
    config = getattr(inner, "config", None)
    return {
        "version": FINGERPRINT_VERSION,
        "model_type": model_type(inner),
        "architecture": type(inner).__name__,
        "name_or_path": str(getattr(config, "_name_or_path", "") or getattr(inner, "name_or_path", "") or ""),
        "num_parameters": count,
        "structure": structure_hex,
        "weights": weights_hex,
        "weights_bf16": weights_bf16.hexdigest()[:_DIGEST_CHARS],
        "dtype": dtype,
        "digest": hashlib.sha256(f"{structure_hex}{weights_hex}".encode()).hexdigest()[:_DIGEST_CHARS],
    }


def fingerprints_match(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two fingerprints describe the same base model.

    ``name_or_path`` and ``architecture`` are informational and not compared (the same weights
    may live in two directories). A missing fingerprint (``None``) never matches.
    """
    if not a or not b:
        return False
    if a.get("model_type") != b.get("model_type") or a.get("structure") != b.get("structure"):
        return False
    if a.get("weights") == b.get("weights"):
        return True
    bf16 = "bfloat16" in (a.get("dtype"), b.get("dtype"))  # float16 rounding cannot agree then
    return bf16 and a.get("weights_bf16") is not None and a.get("weights_bf16") == b.get("weights_bf16")


def mismatch_reason(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    """One sentence saying how two fingerprints differ."""
    if expected.get("model_type") != actual.get("model_type"):
        return f"the model types differ ({expected.get('model_type')!r} vs {actual.get('model_type')!r})"
    if expected.get("structure") != actual.get("structure"):
        return (
            "the parameter names or shapes differ "
            f"({expected.get('num_parameters')} vs {actual.get('num_parameters')} base parameters)"
        )
    return (
        "the architectures agree but the pretrained weights differ (another checkpoint or seed; "
        "a float16 and a bfloat16 copy of one checkpoint differ too: load the base in float32)"
    )


def describe_fingerprint(fingerprint: dict[str, Any] | None) -> str:
    """Short human-readable description: name, type, size and digest."""
    if not fingerprint:
        return "an unknown base (no fingerprint recorded)"
    name = fingerprint.get("name_or_path") or "<unnamed model>"
    params = fingerprint.get("num_parameters")
    size = f", {params / 1e6:.2f}M params" if isinstance(params, int) else ""
    return (
        f"{name!r} ({fingerprint.get('model_type') or '?'}, {fingerprint.get('architecture') or '?'}{size}, "
        f"fingerprint {fingerprint.get('digest')})"
    )


def _base_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, nn.Module]]:
    """Yield ``(name, parameter, owning module)`` of the base view, as if no adapter were injected."""
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        prefix, module = stack.pop()
        if is_tuner_layer(module) and isinstance(module, nn.Module):
            base = module.get_base_layer()
            if base is not module:  # an adapter module wrapping nothing (prefix tuning's) is not base
                stack.append((prefix, base))
            continue
        if is_training_wrapper(module):
            stack.append((prefix, module.original_module))
            continue
        for pname, param in module.named_parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                yield (f"{prefix}.{pname}" if prefix else pname), param, module
        children = [(f"{prefix}.{n}" if prefix else n, c) for n, c in module.named_children()]
        stack.extend(reversed(children))  # depth-first in registration order


def _normalised_shape(module: nn.Module, param: torch.Tensor) -> tuple[int, ...]:
    out_features = getattr(module, "out_features", None) or getattr(module, "nf", None)
    in_features = getattr(module, "in_features", None)
    if in_features is None and hasattr(module, "nf"):  # transformers Conv1D: weight is (in, out)
        in_features = param.shape[0]
    if out_features is None or in_features is None:
        return tuple(param.shape)
    return (int(out_features), int(in_features))


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def _sample(param: torch.Tensor) -> torch.Tensor:
    """A fixed strided sample of at most ``_SAMPLE`` elements, on the CPU in float32."""
    flat = param.detach().reshape(-1)
    if flat.numel() > _SAMPLE:
        flat = flat[:: flat.numel() // _SAMPLE][:_SAMPLE]
    return flat.to(device="cpu", dtype=torch.float32)
