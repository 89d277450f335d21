"""Registry of adapter methods: ``name -> MethodSpec``.

Built-in methods (``lora``, ``adalora``, ``adapter``) register through :func:`register_method`,
exactly like third-party plugins. Plugins are discovered from the ``peftkit.methods`` entry-point
group: each entry point names a module or a callable; loading it must call ``register_method``.

Example:
    A plugin package declares in its ``pyproject.toml``::

        [project.entry-points."peftkit.methods"]
        scaled_lora = "my_pkg.peftkit_plugin"

    and ``my_pkg/peftkit_plugin.py`` does::

        import peftkit

        @peftkit.register_method("scaled_lora", config_cls=ScaledLoraConfig)
        def build(model, config, adapter_name, targets):
            ...  # replace the target modules in place

"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from peftkit.errors import InvalidOptionError, UnknownMethodError, did_you_mean

if TYPE_CHECKING:
    from torch import nn

    from peftkit.methods.base import MethodConfig

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "peftkit.methods"


class Builder(Protocol):
    """Injects one adapter into a model in place.

    Args:
        model: The model to modify (its backbone is already frozen).
        config: The validated method config.
        adapter_name: Name under which the adapter's modules are stored (e.g. ``"default"``).
        targets: Target-module patterns: a list of module-name suffixes, or one regular
            expression matched against full module names.

    Returns:
        Optionally a handle object. If it has ``on_optimizer_step(global_step)``, peftkit calls it
        after every optimizer step (see :func:`peftkit.on_optimizer_step`).

    """

    def __call__(
        self, model: nn.Module, config: Any, adapter_name: str, targets: list[str] | str
    ) -> object | None:
        """Inject the adapter; see the class docstring."""


@dataclass(frozen=True)
class MethodSpec:
    """Everything peftkit needs to know about one adapter method.

    Attributes:
        name: Registry name, e.g. ``"lora"``.
        config_cls: Dataclass (subclass of :class:`peftkit.methods.base.MethodConfig`) holding the
            method's options.
        builder: Callable that injects the method's modules (see :class:`Builder`).
        mergeable: Whether the adapter can be folded into the base weights.
        peft_type: The ``peft_type`` written to ``adapter_config.json``.
        source: Distribution (or module) that registered the method.
        description: One line shown by ``peftkit methods``.
        default_targets: Optional ``(model, config) -> patterns`` giving default targets;
            ``None`` uses the attention projections of :mod:`peftkit.targets`.

    """

    name: str
    config_cls: type[MethodConfig]
    builder: Callable[..., object | None]
    mergeable: bool = False
    peft_type: str = ""
    source: str = "peftkit"
    description: str = ""
    default_targets: Callable[[nn.Module, Any], list[str] | str] | None = None


_REGISTRY: dict[str, MethodSpec] = {}
_plugins_loaded = False
_plugin_errors: dict[str, str] = {}


def register_method(
    name: str,
    config_cls: type[MethodConfig] | None = None,
    builder: Callable[..., object | None] | None = None,
    *,
    mergeable: bool = False,
    peft_type: str | None = None,
    source: str | None = None,
    description: str = "",
    default_targets: Callable[[nn.Module, Any], list[str] | str] | None = None,
    overwrite: bool = False,
) -> Any:
    """Register an adapter method; usable directly or as a decorator on the builder.

    Args:
        name: Registry name (lower case letters, digits, ``_`` and ``-``).
        config_cls: Config dataclass; defaults to :class:`~peftkit.methods.base.MethodConfig`.
        builder: Injection function (see :class:`Builder`). Omit it to use the decorator form.
        mergeable: Whether ``peftkit merge`` can fold the adapter into the base weights.
        peft_type: Value written as ``peft_type`` in ``adapter_config.json`` (default: upper-cased name).
        source: Package providing the method (default: the builder's top-level module).
        description: One-line description.
        default_targets: Optional callable ``(model, config) -> target patterns``.
        overwrite: Replace an existing registration of the same name instead of raising.

    Returns:
        The :class:`MethodSpec` (direct form) or a decorator returning the builder unchanged.

    Raises:
        InvalidOptionError: If the name is malformed or already taken (without ``overwrite``).

    Example:
        >>> @register_method("my_lora", config_cls=MyConfig)  # doctest: +SKIP
        ... def build(model, config, adapter_name, targets): ...

    """
    # Importing the methods package also registers the built-ins, so that a plugin can never take
    # their names (register_method(..., overwrite=True) replaces them deliberately).
    from peftkit.methods.base import MethodConfig

    def _register(fn: Callable[..., object | None]) -> MethodSpec:
        if not name or not name.replace("_", "").replace("-", "").isalnum() or name != name.lower():
            raise InvalidOptionError(
                f"Method name {name!r} is invalid: use lower-case letters, digits, '_' or '-' (e.g. 'my_lora')."
            )
        if name in _REGISTRY and not overwrite:
            raise InvalidOptionError(
                f"Method {name!r} is already registered by {_REGISTRY[name].source!r}; "
                "pick another name or pass overwrite=True."
            )
        cfg = config_cls or MethodConfig
        if not (isinstance(cfg, type) and issubclass(cfg, MethodConfig)):
            raise InvalidOptionError(
                f"config_cls for method {name!r} must subclass peftkit.methods.base.MethodConfig, got {cfg!r}."
            )
        spec = MethodSpec(
            name=name,
            config_cls=cfg,
            builder=fn,
            mergeable=mergeable,
            peft_type=peft_type or name.upper(),
            source=source or (getattr(fn, "__module__", "") or "unknown").split(".")[0],
            description=description or (fn.__doc__ or "").strip().split("\n")[0],
            default_targets=default_targets,
        )
        _REGISTRY[name] = spec
        return spec

    if builder is not None:
        return _register(builder)

    def decorator(fn: Callable[..., object | None]) -> Callable[..., object | None]:
        _register(fn)
        return fn

    return decorator


def unregister_method(name: str) -> None:
    """Remove a method from the registry (mainly for tests and plugin reloads)."""
    _REGISTRY.pop(name, None)


def load_plugins(reload: bool = False) -> dict[str, str]:
    """Import every entry point of the ``peftkit.methods`` group once.

    A plugin that fails to import is skipped with a warning (it must not break peftkit).

    Args:
        reload: Scan the entry points again even if they were loaded before.

    Returns:
        Entry-point name -> error message, for plugins that failed to load.

    """
    global _plugins_loaded
    _load_builtins()
    if _plugins_loaded and not reload:
        return dict(_plugin_errors)
    _plugins_loaded = True
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        before = set(_REGISTRY)
        try:
            loaded = entry_point.load()  # importing the module may register the method (decorator)
            already_registered = entry_point.name in _REGISTRY or any(
                spec.builder is loaded for spec in _REGISTRY.values()
            )
            if (
                callable(loaded)
                and not isinstance(loaded, type)
                and entry_point.attr
                and not already_registered
            ):
                loaded()  # a register() function
            if entry_point.name not in _REGISTRY:
                logger.warning(
                    "Plugin entry point %r registered no method %r.", entry_point.value, entry_point.name
                )
            _credit_distribution(set(_REGISTRY) - before, entry_point)
        except Exception as exc:  # a broken plugin must not break peftkit
            _plugin_errors[entry_point.name] = f"{type(exc).__name__}: {exc}"
            logger.warning(
                "Could not load peftkit plugin %r (%s): %s", entry_point.name, entry_point.value, exc
            )
    return dict(_plugin_errors)


def _credit_distribution(names: set[str], entry_point: importlib.metadata.EntryPoint) -> None:
    """Record the distribution (pip package) that provides newly registered plugin methods."""
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return
    for name in names:
        _REGISTRY[name] = dataclasses.replace(_REGISTRY[name], source=dist.name)


def _load_builtins() -> None:
    import peftkit.methods  # noqa: F401  (registers lora, adalora, adapter)


def methods() -> list[str]:
    """Return the sorted names of all registered methods, plugins included.

    Example:
        >>> import peftkit
        >>> [m for m in peftkit.methods() if m in ("adalora", "adapter", "lora")]
        ['adalora', 'adapter', 'lora']

    """
    load_plugins()
    return sorted(_REGISTRY)


def method_specs() -> list[MethodSpec]:
    """Return the :class:`MethodSpec` of every registered method, sorted by name."""
    load_plugins()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_method(name: str, plugin_hint: str | None = None) -> MethodSpec:
    """Look a method up by name.

    Args:
        name: Registry name.
        plugin_hint: Package known to provide the method (e.g. recorded in an adapter config);
            named in the error message if the method is missing.

    Raises:
        UnknownMethodError: Listing the known methods and the closest name.

    """
    load_plugins()
    if not isinstance(name, str):
        raise UnknownMethodError(f"Method must be a string such as 'lora', got {name!r}.")
    key = name.strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    known = sorted(_REGISTRY)
    message = f"Unknown method {name!r}. Known methods: {', '.join(known)}.{did_you_mean(key, known)}"
    if plugin_hint:
        message += f" The adapter was made with method {name!r} from package {plugin_hint!r}: install it."
    elif name in _plugin_errors:
        message += f" A plugin named {name!r} exists but failed to load: {_plugin_errors[name]}"
    else:
        message += " Third-party methods register through the 'peftkit.methods' entry-point group."
    raise UnknownMethodError(message)
