"""The method contract (:class:`MethodSpec` and its facets) and the registry that discovers methods.

A method is one :class:`MethodSpec`: its options, how it is injected, and optional facets for
everything else peftkit does with an adapter, so that ``io``, ``merge``, ``training`` and
``config`` never need to know a method by name::

    MethodSpec(name, config_cls, builder)        options + injection (the builder)
      ├─ layout: TensorLayout                    which file tensors are the method's, key renames
      ├─ interop: PeftInterop                    options <-> peft's adapter_config.json
      ├─ files: FileHooks                        extra save / check / load steps (AdaLoRA's ranks)
      ├─ combining: Combining                    how `peftkit combine` mixes adapters (LowRankView)
      └─ flags                                   mergeable, starts_at_identity, uses_targets, ...
    handle (what the builder returns)            on_optimizer_step, training_state, remove

Built-in methods (``peftkit/methods/<name>/``) and third-party plugins register the same way: an
entry point of the ``peftkit.methods`` group names a module or a ``register()`` callable, and
loading it calls :func:`register_method`. Every sub-package of :mod:`peftkit.methods` is a built-in
whose entry point is ``peftkit.methods.<name>:register`` (:func:`builtin_entry_points`), loaded
through the very function that loads installed ones: a new built-in method is its folder, nothing
else.

Example:
    A plugin package declares in its ``pyproject.toml``::

        [project.entry-points."peftkit.methods"]
        scaled_lora = "my_pkg.peftkit_plugin:register"

    and ``my_pkg/peftkit_plugin.py`` does::

        import peftkit

        def register():
            @peftkit.register_method("scaled_lora", config_cls=ScaledLoraConfig, tensor_names=("scale",))
            def build(model, config, adapter_name, targets):
                ...  # replace the target modules in place

"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from peftkit.errors import InvalidOptionError, UnknownMethodError, did_you_mean

if TYPE_CHECKING:
    import torch
    from torch import nn

    from peftkit.io.layout import AdapterFiles
    from peftkit.merge.tensors import LowRank, LowRankUpdates
    from peftkit.methods.base import MethodConfig
    from peftkit.state import AdapterRecord

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "peftkit.methods"
#: Prefix of every per-module key in a PEFT-format adapter file.
PEFT_KEY_PREFIX = "base_model.model."

#: The method used when none is named (``peftkit.wrap(model)``, recipes' ``method``).
DEFAULT_METHOD = "lora"
#: Package whose sub-packages are the built-in methods.
BUILTIN_PACKAGE = "peftkit.methods"


class Builder(Protocol):
    """Injects one adapter into a model in place.

    Args:
        model: The model to modify (its backbone is already frozen).
        config: The validated method config.
        adapter_name: Name under which the adapter's modules are stored (e.g. ``"default"``).
        targets: Target-module patterns: a list of module-name suffixes, or one regular
            expression matched against full module names (``None`` for methods with
            ``uses_targets=False``).

    Returns:
        Optionally a handle (see :class:`MethodHandle`).

    """

    def __call__(
        self, model: nn.Module, config: Any, adapter_name: str, targets: list[str] | str | None
    ) -> object | None:
        """Inject the adapter; see the class docstring."""


class MethodHandle(Protocol):
    """What a builder may return to take part in training; every method is optional.

    * ``on_optimizer_step(global_step)``: called after every optimizer step (AdaLoRA's budget).
    * ``training_state() -> dict`` / ``load_training_state(dict)``: state outside ``state_dict()``
      that an exact resume needs (tensors or JSON-serialisable values).
    * ``remove()``: detach hooks when the adapter is folded or deleted.
    """


@dataclass(frozen=True)
class TensorLayout:
    """Where a method's tensors are in an adapter file, besides the task heads.

    Inside peftkit every key is the live parameter's peft key (:func:`peftkit.state.to_peft_key`):
    ``base_model.model.<module>.<name>``, ``<name>`` one of ``names`` (which may hold a dot, as in
    ``lora_A.weight``). A method whose
    files spell keys otherwise (peft writes DoRA's magnitude without ``.weight`` and prefix tuning's
    ``prompt_embeddings``) renames them at the file boundary with ``to_file`` / ``from_file``.

    Attributes:
        names: The method's tensor names after the module name, e.g. ``("lora_A.weight", "lora_B.weight")``.
        to_file: Live peft key -> key in the file (default: unchanged).
        from_file: Key in the file -> live peft key (default: unchanged).

    """

    names: tuple[str, ...]
    to_file: Callable[[str], str] | None = None
    from_file: Callable[[str], str] | None = None
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        alternatives = "|".join(re.escape(name) for name in self.names) or "(?!)"
        regex = rf"^{re.escape(PEFT_KEY_PREFIX)}(.*)\.({alternatives})$"
        object.__setattr__(self, "pattern", re.compile(regex))

    def owns(self, key: str) -> bool:
        """Whether a (live) key is one of the method's tensors."""
        return self.pattern.match(key) is not None

    def module_of(self, key: str) -> str | None:
        """The module a (live) key belongs to (``None`` for keys that are not the method's)."""
        match = self.pattern.match(key)
        return match.group(1) if match else None

    def file_key(self, live_key: str) -> str:
        """The key under which a live parameter is written."""
        return self.to_file(live_key) if self.to_file is not None else live_key

    def live_key(self, file_key: str) -> str:
        """The live parameter's peft key for a file key."""
        return self.from_file(file_key) if self.from_file is not None else file_key


@dataclass(frozen=True)
class PeftInterop:
    """Translation between the method's options and peft's ``adapter_config.json``.

    Attributes:
        to_peft: ``(model, record) -> dict``: the method's part of ``adapter_config.json``
            (``peft_type`` included); peftkit adds the fields every peft config has.
        from_peft: ``adapter_config dict -> options``: the options peft reads from the file
            (those it does not record are left out).
        claims: ``adapter_config dict -> bool``: whether a directory written by peft holds this
            method (default: its ``peft_type`` is the method's).
        peft_loads: Whether ``peft.PeftModel.from_pretrained`` loads the method's directories.

    """

    to_peft: Callable[[nn.Module, AdapterRecord], dict[str, Any]]
    from_peft: Callable[[dict[str, Any]], dict[str, Any]]
    claims: Callable[[dict[str, Any]], bool] | None = None
    peft_loads: bool = True


@dataclass(frozen=True)
class FileHooks:
    """Steps a method adds to saving and loading adapter directories.

    Attributes:
        before_save: ``(record, tensors) -> tensors`` just before writing (AdaLoRA keeps only
            the ranks its budget kept).
        check: ``(files) -> None``: extra consistency checks of a directory being read; raise
            :class:`~peftkit.errors.AdapterFileError`.
        after_inject: ``(record, files, trainable) -> None`` after the layers are injected and
            before the weights are copied (AdaLoRA shrinks its layers to the saved ranks).

    """

    before_save: Callable[[AdapterRecord, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    check: Callable[[AdapterFiles], None] | None = None
    after_inject: Callable[[AdapterRecord, AdapterFiles, bool], None] | None = None


@dataclass(frozen=True)
class LowRankView:
    """A method whose update of each module is ``scale * B @ A`` (see :mod:`peftkit.merge.tensors`).

    Attributes:
        read: ``(files, method_tensors) -> LowRankUpdates``: the per-module updates, the rank each
            module stores and the nominal rank.
        write: ``(files, updates, rank, dtype) -> (tensors, adapter_config, options)`` of a new
            adapter holding ``updates`` (all of rank ``rank``, scale ``output_scale(rank)``).
        output_scale: The scale of a written adapter of a given rank.

    """

    read: Callable[[AdapterFiles, dict[str, torch.Tensor]], LowRankUpdates]
    write: Callable[
        [AdapterFiles, dict[str, LowRank], int, torch.dtype],
        tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]],
    ]
    output_scale: Callable[[int], float]


@dataclass(frozen=True)
class Combining:
    """How ``peftkit combine`` mixes adapters of the method.

    Attributes:
        low_rank: Combine the updates exactly with peft's rules (``cat``, ``svd``, ``ties``, ...).
            Without it, adapters are combined by parameter averaging ``sum w_i t_i / sum w_i``.
        must_match: For averaging: options that must be equal in every adapter (``None``: all).
        refused: Non-empty: the method cannot be combined, for this reason.

    """

    low_rank: LowRankView | None = None
    must_match: tuple[str, ...] | None = None
    refused: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """Everything peftkit knows about one adapter method.

    Attributes:
        name: Registry name, e.g. ``"lora"``.
        config_cls: Dataclass (subclass of :class:`peftkit.methods.base.MethodConfig`) of the options.
        builder: Injects the method's modules (see :class:`Builder`).
        mergeable: Whether its layers fold into the base weights (their ``merge()`` works).
        peft_type: The ``peft_type`` written to ``adapter_config.json``.
        source: Distribution (or module) that registered the method.
        description: One line shown by ``peftkit methods``.
        default_targets: ``(model, config) -> patterns`` giving default targets (``None``: the
            architecture's ``"attention"`` role, see :mod:`peftkit.models`).
        layout: Where its tensors are in adapter files (``None``: checked against the model only).
        interop: Translation to and from peft's config (``None``: options written as they are).
        files: Extra save / check / load steps.
        combining: How ``peftkit combine`` mixes its adapters.
        starts_at_identity: A freshly wrapped model computes exactly what the base computes.
        uses_targets: Whether it adapts target modules (``False``: prefix tuning adapts attention
            through the model's key/value cache and replaces no module).
        legacy_peft_types: Older ``peft_type`` values of the method still read.
        example_options: Options for a short demo run (``peftkit methods``, the test matrix).

    """

    name: str
    config_cls: type[MethodConfig]
    builder: Callable[..., object | None]
    mergeable: bool = False
    peft_type: str = ""
    source: str = "peftkit"
    description: str = ""
    default_targets: Callable[[nn.Module, Any], list[str] | str] | None = None
    layout: TensorLayout | None = None
    interop: PeftInterop | None = None
    files: FileHooks = field(default_factory=FileHooks)
    combining: Combining = field(default_factory=Combining)
    starts_at_identity: bool = True
    uses_targets: bool = True
    legacy_peft_types: tuple[str, ...] = ()
    example_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def combine_kind(self) -> str:
        """``"low-rank"``, ``"average"`` or ``"no"``: what ``peftkit combine`` does."""
        if self.combining.refused:
            return "no"
        return "low-rank" if self.combining.low_rank is not None else "average"

    def claims(self, peft_config: Mapping[str, Any]) -> bool:
        """Whether an ``adapter_config.json`` written without peftkit's metadata holds this method."""
        if self.interop is not None and self.interop.claims is not None:
            return bool(self.interop.claims(dict(peft_config)))
        return peft_config.get("peft_type") in (self.peft_type, *self.legacy_peft_types)


_REGISTRY: dict[str, MethodSpec] = {}
_plugins_loaded = False
_plugin_errors: dict[str, str] = {}


def register_method(
    name: str | MethodSpec,
    config_cls: type[MethodConfig] | None = None,
    builder: Callable[..., object | None] | None = None,
    *,
    overwrite: bool = False,
    tensor_names: tuple[str, ...] = (),
    **spec_fields: Any,
) -> Any:
    """Register an adapter method; usable with a full spec, directly, or as a decorator on the builder.

    Args:
        name: Registry name (lower-case letters, digits, ``_`` and ``-``), or a complete
            :class:`MethodSpec` (then no other argument but ``overwrite``).
        config_cls: Config dataclass; defaults to :class:`~peftkit.methods.base.MethodConfig`.
        builder: Injection function (see :class:`Builder`). Omit it to use the decorator form.
        overwrite: Replace an existing registration of the same name instead of raising.
        tensor_names: Shorthand for ``layout=TensorLayout(tensor_names)``: the names of the
            method's per-module tensors, so that adapter files are checked against them.
        **spec_fields: Any other :class:`MethodSpec` field (``mergeable``, ``peft_type``, ``source``,
            ``description``, ``default_targets``, ``interop``, ``files``, ``combining``, ...).
            ``peft_type`` defaults to the upper-cased name, ``source`` to the builder's package,
            ``description`` to the builder's docstring.

    Returns:
        The :class:`MethodSpec` (spec or direct form) or a decorator returning the builder unchanged.

    Raises:
        InvalidOptionError: If the name is malformed, already taken (without ``overwrite``), or a
            field is unknown.

    Example:
        >>> @register_method("my_lora", config_cls=MyConfig, mergeable=True)  # doctest: +SKIP
        ... def build(model, config, adapter_name, targets): ...

    """
    if isinstance(name, MethodSpec):
        return _add(name, overwrite)
    unknown = sorted(set(spec_fields) - {f.name for f in dataclasses.fields(MethodSpec)})
    if unknown:
        raise InvalidOptionError(
            f"register_method got unknown fields {unknown}; MethodSpec fields: "
            f"{', '.join(f.name for f in dataclasses.fields(MethodSpec))}."
        )
    if tensor_names:
        spec_fields.setdefault("layout", TensorLayout(tuple(tensor_names)))

    def _register(fn: Callable[..., object | None]) -> MethodSpec:
        from peftkit.methods.base import MethodConfig

        fields = dict(spec_fields)
        fields.setdefault("peft_type", str(name).upper())
        fields.setdefault("source", (getattr(fn, "__module__", "") or "unknown").split(".")[0])
        fields["description"] = fields.get("description") or (fn.__doc__ or "").strip().split("\n")[0]
        spec = MethodSpec(name=str(name), config_cls=config_cls or MethodConfig, builder=fn, **fields)
        return _add(spec, overwrite)

    if builder is not None:
        return _register(builder)

    def decorator(fn: Callable[..., object | None]) -> Callable[..., object | None]:
        _register(fn)
        return fn

    return decorator


def _add(spec: MethodSpec, overwrite: bool) -> MethodSpec:
    from peftkit.methods.base import MethodConfig

    name = spec.name
    if not name or not name.replace("_", "").replace("-", "").isalnum() or name != name.lower():
        raise InvalidOptionError(
            f"Method name {name!r} is invalid: use lower-case letters, digits, '_' or '-' (e.g. 'my_lora')."
        )
    if name in _REGISTRY and not overwrite:
        raise InvalidOptionError(
            f"Method {name!r} is already registered by {_REGISTRY[name].source!r}; "
            "pick another name or pass overwrite=True."
        )
    cfg = spec.config_cls
    if not (isinstance(cfg, type) and issubclass(cfg, MethodConfig)):
        raise InvalidOptionError(
            f"config_cls for method {name!r} must subclass peftkit.methods.base.MethodConfig, got {cfg!r}."
        )
    _REGISTRY[name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a method from the registry (mainly for tests and plugin reloads)."""
    _REGISTRY.pop(name, None)


def load_plugins(reload: bool = False) -> dict[str, str]:
    """Load the built-in methods, then every entry point of the ``peftkit.methods`` group, once.

    A plugin that fails to import is skipped with a warning (it must not break peftkit).

    Args:
        reload: Scan the installed entry points again even if they were loaded before.

    Returns:
        Entry-point name -> error message, for plugins that failed to load.

    """
    global _plugins_loaded
    if _plugins_loaded and not reload:
        return dict(_plugin_errors)
    first_time = not _plugins_loaded
    _plugins_loaded = True
    if first_time:  # built-ins first, so that a plugin can never take their names by accident
        for entry_point in builtin_entry_points():
            _load_entry_point(entry_point, builtin=True)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        _load_entry_point(entry_point, builtin=False)
    return dict(_plugin_errors)


def builtin_entry_points() -> list[importlib.metadata.EntryPoint]:
    """``<name> = peftkit.methods.<name>:register`` for every method package under ``peftkit/methods/``.

    Found without importing them (``pkgutil``), in name order.
    """
    package = importlib.import_module(BUILTIN_PACKAGE)
    return [
        importlib.metadata.EntryPoint(info.name, f"{BUILTIN_PACKAGE}.{info.name}:register", ENTRY_POINT_GROUP)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda info: info.name)
        if info.ispkg
    ]


def _load_entry_point(entry_point: importlib.metadata.EntryPoint, *, builtin: bool) -> None:
    """Import one entry point and call it if it names a ``register()`` function."""
    before = set(_REGISTRY)
    try:
        loaded = entry_point.load()  # importing the module may register the method (decorator)
        already_registered = entry_point.name in _REGISTRY or any(
            spec.builder is loaded for spec in _REGISTRY.values()
        )
        if callable(loaded) and not isinstance(loaded, type) and entry_point.attr and not already_registered:
            loaded()  # a register() function
        if entry_point.name not in _REGISTRY:
            logger.warning(
                "Plugin entry point %r registered no method %r.", entry_point.value, entry_point.name
            )
        _credit_distribution(set(_REGISTRY) - before, entry_point)
    except Exception as exc:
        if builtin:
            raise  # a broken built-in is a bug in peftkit, not a plugin to skip
        _plugin_errors[entry_point.name] = f"{type(exc).__name__}: {exc}"
        logger.warning("Could not load peftkit plugin %r (%s): %s", entry_point.name, entry_point.value, exc)


def _credit_distribution(names: set[str], entry_point: importlib.metadata.EntryPoint) -> None:
    """Record the distribution (pip package) that provides newly registered plugin methods."""
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return
    for name in names:
        _REGISTRY[name] = dataclasses.replace(_REGISTRY[name], source=dist.name)


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


def method_for_peft_config(peft_config: Mapping[str, Any]) -> MethodSpec | None:
    """The method of an ``adapter_config.json`` written without peftkit's metadata (by peft itself)."""
    return next((spec for spec in method_specs() if spec.claims(peft_config)), None)
