"""Shared option handling for method configs.

Every method config is a dataclass deriving from :class:`MethodConfig`. Options are validated
when the config is built (unknown names, wrong types, out-of-range values), never deep inside
training.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import types
import typing
from typing import Any, ClassVar, Union

from peftkit.errors import InvalidOptionError, did_you_mean

logger = logging.getLogger(__name__)

#: ``non_linearity`` option values of the bottleneck-style methods -> ``torch.nn`` class names.
ACTIVATIONS: dict[str, str] = {
    "relu": "ReLU",
    "gelu": "GELU",
    "silu": "SiLU",
    "swish": "SiLU",
    "tanh": "Tanh",
}


@dataclasses.dataclass
class MethodConfig:
    """Options common to every method.

    Attributes:
        target_modules: Modules to adapt: a list of module-name suffixes (``["query", "value"]``)
            or one regular expression matched against full module names. ``None`` picks the
            architecture's defaults.
        head_modules: Task-head modules kept trainable and saved with the adapter. ``None`` detects
            them (classification / score heads; tied LM heads are never included); ``[]`` trains none.

    """

    target_modules: list[str] | str | None = None
    head_modules: list[str] | None = None

    method_name: ClassVar[str] = ""
    #: Names users bring from other libraries (e.g. peft's ``lora_alpha``) -> our option name.
    aliases: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        self._check_types()
        self._check_finite()
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise InvalidOptionError("target_modules=[] adapts nothing: give module names or leave it unset.")
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if isinstance(self.target_modules, str):
            check_regex("target_modules", self.target_modules)
        self.validate()

    def validate(self) -> None:
        """Check value ranges; subclasses extend this. Raise :class:`InvalidOptionError`."""

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> MethodConfig:
        """Build a config from keyword options, naming any unknown option and the closest valid one.

        Args:
            options: Keyword options as given to :func:`peftkit.wrap`.

        Raises:
            InvalidOptionError: On unknown names, wrong types or invalid values.

        """
        names = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in names:
                hint = (
                    f" Did you mean {cls.aliases[key]!r}?" if key in cls.aliases else did_you_mean(key, names)
                )
                raise InvalidOptionError(
                    f"Unknown option {key!r} for method {cls.method_name or cls.__name__!r}.{hint} "
                    f"Valid options: {', '.join(sorted(names))}."
                )
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        """Return the options as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def _check_finite(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidOptionError(
                    f"Option {field.name}={value} must be a finite number (method "
                    f"{self.method_name or type(self).__name__!r}); NaN or infinity would make every output NaN."
                )

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = hints.get(field.name)
            if expected is not None and not _matches(value, expected):
                if typing.get_origin(expected) is typing.Literal:
                    raise InvalidOptionError(
                        f"Option {field.name}={value!r} is not valid: use {_describe(expected)}."
                    )
                raise InvalidOptionError(
                    f"Option {field.name}={value!r} has type {type(value).__name__}; expected "
                    f"{_describe(expected)} (method {self.method_name or type(self).__name__!r})."
                )


def check_regex(name: str, pattern: str) -> None:
    """Refuse a target pattern that is not a valid regular expression, saying how to pass names instead."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InvalidOptionError(
            f"{name}={pattern!r} is not a valid regular expression ({exc}). A string is matched as a regex "
            f"against full module names; pass a list such as {name}=['query', 'value'] to match name suffixes."
        ) from None


def require(condition: bool, message: str) -> None:
    """Raise :class:`InvalidOptionError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise InvalidOptionError(message)


def check_dropout(name: str, value: float) -> None:
    """Check that a dropout probability lies in [0, 1)."""
    require(0.0 <= value < 1.0, f"{name}={value!r} is not a probability in [0, 1): use e.g. {name}=0.1.")


#: Largest multiplier of an adapter's output that peftkit accepts (published settings stay below ~32).
MAX_SCALE = 1e4


def check_scale(name: str, value: float, what: str) -> None:
    """Refuse a multiplier of the adapter's output so large that activations overflow.

    Args:
        name: The option shown in the message (e.g. ``"alpha"``).
        value: The multiplier the option results in (e.g. ``alpha / r``).
        what: How the multiplier is computed, for the message (e.g. ``"alpha / r"``).

    """
    require(
        abs(value) <= MAX_SCALE,
        f"{name} makes the adapter's output scale {what} = {value:.3g}, beyond {MAX_SCALE:g}: activations would "
        f"overflow to inf/NaN. Published settings keep it below ~32 (LoRA: alpha = 2 r).",
    )


def check_positive(name: str, value: float, example: str = "8") -> None:
    """Check that a number is strictly positive."""
    require(value > 0, f"{name}={value!r} must be > 0 (e.g. {name}={example}).")


def _matches(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if expected is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(expected) or (Any,)
        return isinstance(value, (list, tuple)) and all(_matches(v, item_type) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True


def _describe(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(expected))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(expected))
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(expected)[0])}"
    if expected is type(None):
        return "None"
    return getattr(expected, "__name__", str(expected))


def check_fits_targets(model: Any, patterns: list[str] | str, name: str, rank: int) -> None:
    """Refuse a rank whose adapter cannot fit in memory, before anything is allocated; warn when it is wasteful.

    A low-rank update of a layer with ``in`` inputs and ``out`` outputs has rank at most
    ``min(in, out)``: a larger ``rank`` only adds parameters (``r=10**9`` would try to allocate
    terabytes and fail deep inside torch). Above the device's memory it is an error, above
    ``min(in, out)`` a warning.

    Raises:
        InvalidOptionError: Naming the memory the adapter would need and the largest useful rank.

    """
    from peftkit.targets import layer_widths

    widths = layer_widths(model, patterns)
    if not widths:
        return  # nothing matched: target resolution reports it
    layer, (fan_in, fan_out) = min(widths.items(), key=lambda item: min(item[1]))
    useful = min(fan_in, fan_out)
    needed = 4 * rank * sum(a + b for a, b in widths.values())  # fp32 A and B of every adapted layer
    available = _device_memory(model)
    require(
        needed <= available,
        f"{name}={rank} would need {needed / 2**30:,.1f} GiB for the adapter alone ({len(widths)} layers x {name} x "
        f"(in + out) x 4 bytes), more than this device has ({available / 2**30:,.1f} GiB). A low-rank update of "
        f"{layer} ({fan_in} -> {fan_out} features) has rank at most {useful}: use {name} <= {useful} "
        f"(e.g. {name}={min(8, useful)}).",
    )
    if rank > useful:
        logger.warning(
            "%s=%d exceeds min(in, out)=%d of %s: the update's rank cannot exceed %d, the extra ranks only add "
            "parameters. Consider %s <= %d.",
            name,
            rank,
            useful,
            layer,
            useful,
            name,
            useful,
        )


def _device_memory(model: Any) -> int:
    """Bytes of memory on the device holding ``model``'s first parameter (GPU memory, else host RAM)."""
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(param.device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX
        return 2**40
