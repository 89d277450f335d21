"""Shared option handling for method configs.

Every method config is a dataclass deriving from :class:`MethodConfig`. Options are validated
when the config is built (unknown names, wrong types, out-of-range values), never deep inside
training.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, ClassVar, Union

from peftkit.errors import InvalidOptionError, did_you_mean


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
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise InvalidOptionError("target_modules=[] adapts nothing: give module names or leave it unset.")
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if isinstance(self.target_modules, str):
            _check_regex("target_modules", self.target_modules)
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


def _check_regex(name: str, pattern: str) -> None:
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
