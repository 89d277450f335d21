"""Generic loading of config dataclasses: YAML files, command-line overrides, strict type coercion.

Works with any dataclass whose fields use ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``,
``list[...]``, ``dict[...]`` and ``X | None``; ``--help`` shows each field's description from the
``Attributes:`` section of the class docstring.
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

from peftkit._argparse import NumberFriendlyParser
from peftkit.errors import ConfigError, closest, did_you_mean

T = TypeVar("T")


#: Names of the same settings in transformers' ``TrainingArguments`` and peft's configs.
OTHER_LIBRARY_NAMES = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "lora_r": "r",
    "rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "output_path": "output_dir",
    "max_seq_length": "max_length",
    "model_name_or_path": "model_path",
}


def _suggest(name: str, valid: list[str]) -> str:
    """``" Did you mean '--lr'?"``: the closest of our names and of the names other libraries use.

    ``--learning-rate`` and a misspelt ``--learnig-rate`` both point to ``--lr`` (transformers calls it
    ``learning_rate``), not to whichever of our own names happens to be spelt most alike.
    """
    dashed = name.startswith("--")
    key = name.removeprefix("--").replace("-", "_")
    ours: dict[str, str] = {}
    for spelling in sorted(valid, key=lambda v: "_" in v):  # "--grad-accum" before "--grad_accum"
        ours.setdefault(spelling.removeprefix("--").replace("-", "_"), spelling)
    shown = {
        theirs: "--" + mine.replace("_", "-") if dashed else mine
        for theirs, mine in OTHER_LIBRARY_NAMES.items()
    }
    theirs = {k: v for k, v in shown.items() if v in valid and k not in ours}
    if key in theirs:
        return f" Did you mean {theirs[key]!r}? (the same setting under the name peftkit uses)"
    best = closest(key, [*ours, *theirs])
    if best is None:
        return ""
    if best in ours:
        return f" Did you mean {ours[best]!r}?"
    spelt = "--" + best.replace("_", "-") if dashed else best
    return f" Did you mean {theirs[best]!r}? (peftkit's name for {spelt!r})"


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
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path; UnicodeDecodeError: not UTF-8 text
        reason = (exc.strerror if isinstance(exc, OSError) else None) or exc
        raise ConfigError(
            f"Cannot read config file {str(path)!r}: {reason}. Check the path (a UTF-8 YAML file)."
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
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: lists or mappings nested too deeply.") from None
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
                f"{path} line {line}: unknown key {raw!r}.{_suggest(key, names)} "
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


class _Parser(NumberFriendlyParser):
    """``ArgumentParser`` raising :class:`ConfigError` instead of exiting on bad arguments."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"Command line: {message}. Run with --help to list the options.")


def _config_file_arg(argv: Sequence[str] | None) -> str | None:
    """The ``-c/--config`` value in ``argv``, read before the full parser (which may print ``--help``)."""
    pre = _Parser(add_help=False, allow_abbrev=False)
    pre.add_argument("-c", "--config")
    known, _ = pre.parse_known_args(list(argv) if argv is not None else None)
    return known.config


def _build_parser(
    cls: type,
    prog: str | None,
    description: str | None,
    file_values: dict[str, Any],
    config_path: str | None,
) -> _Parser:
    """The command-line parser of ``cls``; ``--help`` shows the defaults in effect.

    A value from the ``--config`` file replaces the dataclass default in the help text, marked
    ``in <file name>``, so that ``--help`` describes the run that would start.
    """
    parser = _Parser(
        prog=prog, description=description or (cls.__doc__ or "").split("\n")[0], allow_abbrev=False
    )
    parser.add_argument("-c", "--config", metavar="FILE.yaml", help="YAML file with option values.")
    docs = _attribute_docs(cls)
    source = f" in {Path(config_path).name}" if config_path else ""
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = _field_types(cls)[f.name]
        if f.name in file_values:
            default = f"{file_values[f.name]}{source}"
        else:
            default = f.default if f.default is not dataclasses.MISSING else "{}"
        text = f"{docs.get(f.name, '')} ({_type_name(tp)}; default: {default})".replace("``", "").strip()
        text = text.replace("%", "%%")  # argparse formats help strings with %
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
    config_path = _config_file_arg(argv)
    file_values = load_yaml_config(cls, config_path) if config_path else {}
    parser = _build_parser(cls, prog, description, file_values, config_path)
    namespace, unknown = parser.parse_known_args(list(argv) if argv is not None else None)
    if unknown:
        options = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
        bad = next((u for u in unknown if u.startswith("-")), unknown[0])
        name = bad.split("=", 1)[0]
        raise ConfigError(
            f"Command line: unknown option {name!r}.{_suggest(name, options)} Run with --help to list the options."
            if name.startswith("-")
            else f"Command line: unexpected argument {bad!r}: options take the form --name VALUE."
        )
    given = vars(namespace)
    given.pop("config", None)
    values = dict(file_values)
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
