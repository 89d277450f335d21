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

from peftkit.config.parsing import (
    config_from_dict,
    config_to_dict,
    load_yaml_config,
    parse_config,
    save_config,
)
from peftkit.config.schema import RecipeConfig, TrainConfig

__all__ = [
    "TrainConfig",
    "RecipeConfig",
    "parse_config",
    "load_yaml_config",
    "config_from_dict",
    "config_to_dict",
    "save_config",
]
