"""Typed recipe configuration: dataclasses read from YAML, overridden on the command line.

A recipe declares its options as a dataclass (usually a subclass of :class:`RecipeConfig`) and
calls :func:`parse_config`::

    cfg = parse_config(NerConfig, sys.argv[1:])   # --config ner.yaml --lr 3e-4 --no-load-in-8bit

Precedence is *defaults < YAML file < command line*. Every field ``some_name`` is settable as
``--some-name VALUE`` (``--some_name`` works too); booleans are flags (``--load-in-8bit`` /
``--no-load-in-8bit``), lists take several values (``--target-modules query value``) and
mappings take inline YAML (``--method-options '{tinit: 10}'``). Every mistake raises
:class:`~peftkit.errors.ConfigError` naming the key, the file (and line) and the fix.

Type coercion is strict, with one deliberate leniency: float fields accept strings such as
``1e-4``, because YAML 1.1 (PyYAML) reads ``lr: 1e-4`` as a string.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from peftkit.errors import ConfigError, did_you_mean

T = TypeVar("T")

__all__ = [
    "TrainConfig",
    "RecipeConfig",
    "parse_config",
    "load_yaml_config",
    "config_from_dict",
    "config_to_dict",
    "save_config",
]


@dataclasses.dataclass
class TrainConfig:
    """Options of the shared training loop (:func:`peftkit.training.train`).

    Attributes:
        output_dir: Run directory: checkpoints go to ``<output_dir>/checkpoints/step-<N>``.
        seed: Seed of Python/NumPy/torch and of the data shuffling order.
        epochs: Passes over the training set.
        max_steps: Stop after this many optimizer steps (``None``: run all epochs).
        lr: Peak learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        lr_schedule: ``"linear"`` (warm-up then linear decay to 0) or ``"constant"`` (after warm-up).
        warmup_ratio: Fraction of the optimizer steps used for linear warm-up.
        warmup_steps: Warm-up steps; overrides ``warmup_ratio`` when set.
        batch_size: Per-process training batch size.
        eval_batch_size: Per-process evaluation batch size (``None``: ``batch_size``).
        grad_accum: Micro-batches accumulated per optimizer step.
        max_grad_norm: Gradient clipping norm; 0 disables clipping (the norm is still checked).
        log_every: Log loss, learning rate and tokens/s every N optimizer steps.
        eval_every: Evaluate every N optimizer steps (0: at the end of every epoch only).
        checkpoint_every: Save a checkpoint every N optimizer steps (0: no periodic checkpoints).
        keep_checkpoints: How many of the newest checkpoints to keep.
        checkpoint_trainable_only: Store only trainable weights (plus optimizer etc.) in checkpoints.
        resume: Continue from the newest complete checkpoint in ``output_dir``.
        resume_from: Continue from this checkpoint directory.
        explode_factor: Stop when the loss exceeds this multiple of the first step's loss (0: off).
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"``.
        cpu: Force training on CPU even if an accelerator is present.

    """

    output_dir: str = "runs/peftkit"
    seed: int = 42
    epochs: int = 3
    max_steps: int | None = None
    lr: float = 5e-4
    weight_decay: float = 0.0
    lr_schedule: Literal["linear", "constant"] = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None
    batch_size: int = 16
    eval_batch_size: int | None = None
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    checkpoint_trainable_only: bool = True
    resume: bool = False
    resume_from: str | None = None
    explode_factor: float = 1000.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    cpu: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check value ranges; raise :class:`ConfigError` naming the field and a valid value."""
        _at_least(self, "epochs", 1, "3")
        _at_least(self, "batch_size", 1, "16")
        _at_least(self, "grad_accum", 1, "1")
        _at_least(self, "log_every", 1, "10")
        _at_least(self, "keep_checkpoints", 1, "2")
        for name, example in (("eval_every", "500"), ("checkpoint_every", "500"), ("weight_decay", "0.01")):
            _at_least(self, name, 0, example)
        for name, example in (("max_grad_norm", "1.0"), ("explode_factor", "1000")):
            _at_least(self, name, 0, example)
        for name, example in (("max_steps", "1000"), ("eval_batch_size", "32")):
            if getattr(self, name) is not None:
                _at_least(self, name, 1, example)
        if self.warmup_steps is not None:
            _at_least(self, "warmup_steps", 0, "100")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr} must be > 0: pass e.g. --lr 5e-4.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(
                f"warmup_ratio={self.warmup_ratio} must lie in [0, 1): pass e.g. --warmup-ratio 0.06."
            )


@dataclasses.dataclass
class RecipeConfig(TrainConfig):
    """Options shared by the fine-tuning recipes: the training loop's plus model and data options.

    Attributes:
        model_path: Local directory of the base model (``None``: the recipe's default).
        method: Adapter method registered in peftkit (``lora``, ``adalora``, ``adapter``, plugins).
        r: Rank: ``r`` for LoRA, ``target_r`` for AdaLoRA; invalid for methods without a rank.
        alpha: Scaling numerator, for methods that have one (``None``: the method's default).
        dropout: Adapter dropout (``None``: the method's default).
        target_modules: Module-name suffixes to adapt (``None``: the architecture's defaults).
        method_options: Further method options passed to :func:`peftkit.wrap`.
        load_in_8bit: Load the base model in 8 bits with bitsandbytes.
        max_length: Maximum tokens per training example.
        max_train_samples: Use only the first N training examples.
        max_eval_samples: Use only the first N evaluation examples.

    """

    model_path: str | None = None
    method: str = "lora"
    r: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    target_modules: list[str] | None = None
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    load_in_8bit: bool = False
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def validate(self) -> None:
        """Check the training options, the method name and the sample limits."""
        super().validate()
        _at_least(self, "max_length", 1, "128")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                _at_least(self, name, 1, "1000")
        if self.r is not None:
            _at_least(self, "r", 1, "8")
        import peftkit

        known = peftkit.methods()
        if self.method not in known:
            raise ConfigError(
                f"method={self.method!r} is not a registered peftkit method; known: {', '.join(known)}."
                f"{did_you_mean(self.method, known)}"
            )

    def wrap_options(self) -> dict[str, Any]:
        """Keyword options for :func:`peftkit.wrap` built from ``r``/``alpha``/``dropout``/``method_options``.

        ``r`` maps to the method's ``r`` field, or to ``target_r`` for AdaLoRA-like methods.

        Raises:
            ConfigError: A generic option does not exist for the chosen method.

        """
        import peftkit

        fields = {f.name for f in dataclasses.fields(peftkit.get_method(self.method).config_cls)}
        options: dict[str, Any] = {}
        for name, value in (("r", self.r), ("alpha", self.alpha), ("dropout", self.dropout)):
            if value is None:
                continue
            key = name if name in fields else ("target_r" if name == "r" and "target_r" in fields else None)
            if key is None:
                raise ConfigError(
                    f"{name}={value} has no meaning for method {self.method!r} (its options: "
                    f"{', '.join(sorted(fields))}): remove it or set the option under method_options."
                )
            options[key] = value
        if self.target_modules is not None:
            options["target_modules"] = list(self.target_modules)
        options.update(self.method_options)
        return options


def _at_least(cfg: object, name: str, minimum: float, example: str) -> None:
    value = getattr(cfg, name)
    if value < minimum:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{name}={value} must be >= {minimum}: pass e.g. {flag} {example}.")


# ----------------------------------------------------------------------------------------------
# Type handling


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(inner).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


class _CoercionError(Exception):
    pass


def _coerce(value: Any, tp: Any, from_cli: bool) -> Any:
    """Convert ``value`` to ``tp`` or raise :class:`_CoercionError` (strings allowed from the CLI)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (from_cli and str(value).lower() in ("none", "null"))):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, from_cli)
            except _CoercionError:
                continue
        raise _CoercionError
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _CoercionError
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if from_cli and isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise _CoercionError
        return [_coerce(v, inner, from_cli) for v in value]
    if origin is dict or tp is dict:
        if from_cli and isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise _CoercionError from exc
        if not isinstance(value, dict):
            raise _CoercionError
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_cli and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise _CoercionError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_cli and isinstance(value, str):
            try:
                return int(value)
            except ValueError as exc:
                raise _CoercionError from exc
        raise _CoercionError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # also from YAML: PyYAML reads ``1e-4`` as a string
            try:
                return float(value)
            except ValueError as exc:
                raise _CoercionError from exc
        raise _CoercionError
    if tp in (str, Path):
        if isinstance(value, str):
            return value
        raise _CoercionError
    raise _CoercionError


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _literal_choices(tp: Any) -> list[Any]:
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [c for arg in typing.get_args(tp) for c in _literal_choices(arg)]
    return []


def _convert(cls: type, key: str, value: Any, source: str, from_cli: bool) -> Any:
    tp = _field_types(cls)[key]
    try:
        return _coerce(value, tp, from_cli)
    except _CoercionError:
        flag = "--" + key.replace("_", "-")
        choices = _literal_choices(tp)
        hint = did_you_mean(str(value), [str(c) for c in choices]) if choices else ""
        raise ConfigError(
            f"{source}: {key!r} expects {_type_name(tp)}, got {value!r} ({type(value).__name__}).{hint} "
            f"Fix the value (command line: {flag} VALUE)."
        ) from None


# ----------------------------------------------------------------------------------------------
# YAML


def load_yaml_config(cls: type, path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping and return its values converted to the fields of ``cls``.

    Keys may use ``snake_case`` or ``kebab-case``.

    Args:
        cls: The config dataclass.
        path: The YAML file.

    Returns:
        Field name -> converted value, only for the keys present in the file.

    Raises:
        ConfigError: Missing file, YAML syntax error (with line), non-mapping document, unknown or
            duplicate key (with line and closest valid key), or wrong value type.

    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"Cannot read config file {str(path)!r}: {exc.strerror or exc}. Check the path."
        ) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(
            f"{path}:{where}: invalid YAML: {exc.problem or exc}. Fix the syntax at that line "
            "(e.g. 'key: value', two-space indentation, quotes around strings with ':')."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            f"{path}: the top level must be a mapping of option names to values (e.g. 'lr: 5.0e-4'), "
            f"got {type(data).__name__}."
        )
    names = list(_field_types(cls))
    lines: dict[str, int] = {}
    values: dict[str, Any] = {}
    for key_node, _ in root.value:
        raw = key_node.value
        key = str(raw).replace("-", "_")
        line = key_node.start_mark.line + 1
        if key not in names:
            raise ConfigError(
                f"{path} line {line}: unknown key {raw!r}.{did_you_mean(key, names)} "
                f"Valid keys: {', '.join(names)}."
            )
        if key in lines:
            raise ConfigError(
                f"{path} line {line}: key {raw!r} is repeated (first on line {lines[key]}); keep one."
            )
        lines[key] = line
    for raw, value in data.items():
        key = str(raw).replace("-", "_")
        values[key] = _convert(cls, key, value, f"{path} line {lines[key]}", from_cli=False)
    return values


# ----------------------------------------------------------------------------------------------
# Command line


def _attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> description, read from the ``Attributes:`` sections of the class docstrings."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        lines = (klass.__doc__ or "").splitlines()
        inside, name = False, None
        for line in lines:
            stripped = line.strip()
            if stripped == "Attributes:":
                inside = True
                continue
            if not inside:
                continue
            if not stripped or (stripped.endswith(":") and " " not in stripped):
                inside = stripped == ""
                continue
            head, sep, rest = stripped.partition(": ")
            if sep and head.isidentifier():
                name = head
                docs[name] = rest
            elif name:
                docs[name] += " " + stripped
    return docs


class _Parser(argparse.ArgumentParser):
    """``ArgumentParser`` raising :class:`ConfigError` instead of exiting on bad arguments."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"Command line: {message}. Run with --help to list the options.")


def _build_parser(cls: type, prog: str | None, description: str | None) -> _Parser:
    parser = _Parser(
        prog=prog, description=description or (cls.__doc__ or "").split("\n")[0], allow_abbrev=False
    )
    parser.add_argument("-c", "--config", metavar="FILE.yaml", help="YAML file with option values.")
    docs = _attribute_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = _field_types(cls)[f.name]
        default = f.default if f.default is not dataclasses.MISSING else "{}"
        text = f"{docs.get(f.name, '')} ({_type_name(tp)}; default: {default})".replace("``", "").strip()
        if tp is bool:
            kwargs: dict[str, Any] = {"action": argparse.BooleanOptionalAction}
        elif typing.get_origin(tp) is list or list in [typing.get_origin(a) for a in typing.get_args(tp)]:
            kwargs = {"nargs": "+", "metavar": "VALUE"}
        else:
            kwargs = {"metavar": "VALUE"}
        kebab = "--" + f.name.replace("_", "-")
        parser.add_argument(kebab, dest=f.name, default=argparse.SUPPRESS, help=text, **kwargs)
        if "_" in f.name:  # --snake_case alias, hidden from --help
            parser.add_argument(
                "--" + f.name, dest=f.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs
            )
    return parser


def parse_config(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
) -> T:
    """Build a config dataclass from defaults, an optional ``--config`` YAML file and CLI overrides.

    Args:
        cls: A dataclass type (e.g. :class:`RecipeConfig` or a subclass of it).
        argv: Command-line arguments without the program name (``None``: ``sys.argv[1:]``).
        prog: Program name shown in ``--help``.
        description: Text shown in ``--help`` (default: the first line of ``cls``'s docstring).

    Returns:
        A validated instance of ``cls``.

    Raises:
        ConfigError: Unknown key or option (with the closest valid one), wrong type, YAML syntax
            error (with file and line), or a value rejected by the dataclass's validation.

    Example:
        >>> cfg = parse_config(TrainConfig, ["--lr", "1e-3", "--epochs", "2"])
        >>> (cfg.lr, cfg.epochs)
        (0.001, 2)

    """
    parser = _build_parser(cls, prog, description)
    namespace, unknown = parser.parse_known_args(list(argv) if argv is not None else None)
    if unknown:
        options = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
        bad = next((u for u in unknown if u.startswith("-")), unknown[0])
        name = bad.split("=", 1)[0]
        raise ConfigError(
            f"Command line: unknown option {name!r}.{did_you_mean(name, options)} Run with --help to list the options."
            if name.startswith("-")
            else f"Command line: unexpected argument {bad!r}: options take the form --name VALUE."
        )
    given = vars(namespace)
    values: dict[str, Any] = {}
    config_path = given.pop("config", None)
    if config_path:
        values.update(load_yaml_config(cls, config_path))
    for key, value in given.items():
        values[key] = _convert(cls, key, value, "command line", from_cli=True)
    return config_from_dict(cls, values)


def config_from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Instantiate ``cls`` from already converted values, turning validation errors into ConfigError."""
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid configuration for {cls.__name__}: {exc}") from exc


def config_to_dict(cfg: object) -> dict[str, Any]:
    """Return the config's fields as a plain dict (safe to dump as YAML/JSON)."""
    return dataclasses.asdict(cfg)  # type: ignore[arg-type]


def save_config(cfg: object, path: str | Path) -> Path:
    """Write the resolved config as YAML that :func:`parse_config` reads back (``--config path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path
